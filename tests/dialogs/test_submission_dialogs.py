"""Submission and sender-binding dialog tests: transcripts (tests/dialogs/submission/*.txt)
against a real Listener on 127.0.0.1:0 with users, sender bindings and rewrites; plus the
listener-level cases one transcript cannot express (several connections, smtplib clients).

Transcript syntax: as tests/dialogs/test_dialogs.py, plus these settings:
  @set listener submission    auth = "required" (STARTTLS; users alice/alice-pw with senders
                              alice@example.com, @family.example, and bob/bob-pw: bob@example.com)
  @set tls_first on           tls = "implicit": TLS from the first byte (port 465)
  @set mynetworks NETS        [127.0.0.0/8]
  @set bind ADDR=NET          a [[senders]] entry for ADDR with clients = [NET]
  @set rewrite SENDER=ADDR    a [rewrite.senders] entry
and the checks `@sender ADDR` (envelope sender of the last queued message) and `@nolog TEXT`
(no log line so far contains TEXT: AUTH payloads and passwords, S3).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from mta_lite.config.schema import Listen, RewriteConfig, SenderRule, User
from mta_lite.config.senders import networks
from mta_lite.identity import parse_identity
from mta_lite.passhash import hash_password
from mta_lite.smtpd.listener import Listener

from tests.support.dialogs import ADMIN, HOSTNAME, FakeSpool, make_config
from .test_dialogs import READ_TIMEOUT_S, Dialog, LogCapture, read_line, tls_setup  # noqa: F401

DIALOGS = sorted((Path(__file__).parent / "submission").glob("*.txt"))
NOW = 1_700_000_000.0
ALICE_PLAIN = b"AGFsaWNlAGFsaWNlLXB3"          # base64("\0alice\0alice-pw")


@pytest.fixture(scope="session")
def users() -> dict[str, User]:
    return {"alice": User("alice", hash_password(b"alice-pw"), frozenset({"alice@example.com", "@family.example"})),
            "bob": User("bob", hash_password(b"bob-pw"), frozenset({"bob@example.com"}))}


class _Table:
    """Just enough of config_load._Table for config_senders.networks()."""

    def __init__(self, data: dict) -> None:
        self.data, self.path, self.used = data, "test.toml", set()

    def key(self, name: str) -> str:
        return name

    def get(self, name: str, kind: type, default=None):
        return self.data.get(name, default)


def build(tmp_path: Path, settings: dict[str, str], tls_setup, users) -> tuple[Listener, FakeSpool]:
    spool = FakeSpool(tmp_path / "spool")
    auth = "required" if settings.get("listener") == "submission" else "none"
    tls = "implicit" if settings.get("tls_first") == "on" else "starttls"
    listen = Listen("127.0.0.1", 0, tls_cert=tls_setup[0], tls_key=tls_setup[1], tls=tls, auth=auth)
    cfg = make_config(tmp_path, mynetworks=tuple(settings.get("mynetworks", "127.0.0.0/8").split(",")), listen=listen)
    senders, rewrite = [], {}
    for key, value in settings.items():
        address, _, target = value.partition("=")
        if key == "bind":
            senders.append(SenderRule(address, "isp", clients=networks(_Table({"c": [target]}), "c")))
        elif key == "rewrite":
            rewrite[address] = parse_identity(target)
    cfg = replace(cfg, users=users, senders=tuple(senders), rewrite=RewriteConfig(senders=rewrite))
    return Listener(cfg, listen, spool, lambda: None, clock=lambda: NOW), spool


async def connect(listener: Listener, client_tls: ssl.SSLContext | None):
    if listener.listen.tls == "implicit":
        return await asyncio.open_connection(*listener.address, ssl=client_tls, server_hostname=HOSTNAME)
    return await asyncio.open_connection(*listener.address)


class SubmissionDialog(Dialog):
    def __init__(self, path: Path, tmp_path: Path, tls_setup, users) -> None:
        super().__init__(path, tmp_path, tls_setup)
        self.users = users

    def build_listener(self):
        return build(self.tmp_path, self.settings, self.tls_setup, self.users)

    async def connect(self, listener):
        return await connect(listener, self.tls_setup[2])

    async def still_up(self, listener) -> None:
        reader, writer = await connect(listener, self.tls_setup[2])
        assert (await read_line(reader)).startswith(f"220 {HOSTNAME} ESMTP")
        writer.close()

    async def check(self, op: str, arg: str) -> None:
        if op == "@sender":
            assert self.spool.stored[-1].envelope.sender == arg, self.spool.stored[-1].envelope
        elif op == "@nolog":
            found = [line for line in self.log.lines if arg in line]
            assert not found, f"logged: {found}"
        else:
            await super().check(op, arg)


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_submission_transcript_replies_as_written(path: Path, tmp_path: Path, tls_setup, users) -> None:
    with LogCapture() as log:
        asyncio.run(SubmissionDialog(path, tmp_path, tls_setup, users).run(log))


def test_submission_dialog_directory_has_transcripts() -> None:
    assert len(DIALOGS) >= 10


# ---------------------------------------------------------------- listener behaviour

def test_auth_failures_from_one_client_span_sessions_then_421(tmp_path, tls_setup, users):
    async def login(listener, payload: bytes) -> str:
        reader, writer = await connect(listener, tls_setup[2])
        await read_line(reader)
        writer.write(b"EHLO laptop\r\n")
        while (await read_line(reader))[3:4] == "-":
            pass
        writer.write(b"AUTH PLAIN " + payload + b"\r\n")
        reply = await read_line(reader)
        writer.close()
        return reply[:9]

    async def main() -> list[str]:
        listener, _ = build(tmp_path, {"listener": "submission", "tls_first": "on"}, tls_setup, users)
        await listener.start()
        try:
            return [await login(listener, p) for p in (b"AGFsaWNlAHdyb25nLTE=", b"AGFsaWNlAHdyb25nLTI=",
                                                       b"AGFsaWNlAHdyb25nLTM=", ALICE_PLAIN)]
        finally:
            await listener.close(grace_s=1)
    assert asyncio.run(main()) == ["535 5.7.8", "535 5.7.8", "535 5.7.8", "421 4.7.0"]


@pytest.mark.parametrize("implicit", [True, False])
def test_smtplib_client_logs_in_and_relays_from_outside_mynetworks(tmp_path, tls_setup, users, implicit):
    """A real client (stdlib smtplib): SMTP_SSL on an implicit-TLS port, STARTTLS on the other."""
    def client(port: int) -> None:
        if implicit:
            smtp = smtplib.SMTP_SSL("127.0.0.1", port, context=tls_setup[2], timeout=READ_TIMEOUT_S)
        else:
            smtp = smtplib.SMTP("127.0.0.1", port, timeout=READ_TIMEOUT_S)
            smtp.starttls(context=tls_setup[2])
        with smtp:
            smtp.login("bob", "bob-pw")
            smtp.sendmail("bob@example.com", ["friend@remote.example", "root"], b"Subject: t\r\n\r\nhi\r\n")
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                smtp.sendmail("alice@example.com", ["friend@remote.example"], b"Subject: t\r\n\r\nhi\r\n")
            assert info.value.smtp_code == 553

    async def main():
        settings = {"listener": "submission", "mynetworks": "10.0.0.0/8", **({"tls_first": "on"} if implicit else {})}
        listener, spool = build(tmp_path, settings, tls_setup, users)
        await listener.start()
        try:
            await asyncio.to_thread(client, listener.address[1])
        finally:
            await listener.close(grace_s=1)
        return spool
    with LogCapture() as log:
        spool = asyncio.run(main())
    stored = spool.stored[0]
    assert (stored.envelope.sender, stored.envelope.recipients) == ("bob@example.com", ["friend@remote.example", ADMIN])
    assert b"with ESMTPSA id " in stored.content
    assert not [line for line in log.lines if "bob-pw" in line or "Ym9iLXB3" in line or "AGJvYgBib2ItcHc" in line]
