"""Postscreen dialog tests: transcripts (tests/dialogs/postscreen/*.txt) against a real Listener
with a Postscreen hook on 127.0.0.1:0, a fake DNS and a fixed clock; plus the listener-level
cases a single transcript cannot express (several connections, a client that dribbles).

Transcript syntax: as tests/dialogs/test_dialogs.py, plus these settings (defaults in brackets):
  @set mynetworks NETS           [10.0.0.0/8: the test client is screened]
  @set greet_wait_s S            [0.3]     @set greet_action A       [enforce]
  @set greet_banner TEXT         [$hostname ESMTP; "none" for ""]
  @set access E1,E2              [permit_mynetworks]   @set denylist_action A [drop]
  @set dnsbl_sites S1,S2         []        @set dnsbl_threshold N    [1]
  @set dnsbl_allowlist_threshold N [0]     @set dnsbl_action A       [enforce]
  @set dns:ZONE ANSWER           the fake DNS for ZONE: addresses "127.0.0.2,127.0.0.3",
                                 "nxdomain", "error" or "hang" (never answers)
  @set cached T1,T2              the client already passed these tests
  @set ps_max_connections N      [100]  (1: every connection arrives under stress)
  @set stress_timeout_s S        [10]   @set stress_greet_wait_s S [2]
the check `@counter NAME N` (postscreen counter NAME is N), and `@hangup` (the client closes).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mta_lite.config.schema import Listen, PostscreenConfig
from mta_lite.postscreen.dnsbl import ERROR, NXDOMAIN, OK, Answer
from mta_lite.smtpd.listener import Listener
from mta_lite.postscreen.cache import DNSBL, PREGREET
from mta_lite.postscreen.service import PostscreenService
from mta_lite.postscreen.policy import StressLimits

from tests.support.dialogs import FakeSpool, make_config
from tests.support.waiting import wait_until_async
from .test_dialogs import READ_TIMEOUT_S, SMTPD_SETTINGS, Dialog, LogCapture, read_line

DIALOGS = sorted((Path(__file__).parent / "postscreen").glob("*.txt"))
NOW = 1_700_000_000.0
CLIENT = "127.0.0.1"


class FakeDns:
    """Answers by zone for the query name of 127.0.0.1; records every query."""

    def __init__(self, zones: dict[str, str]) -> None:
        self.zones, self.queries = zones, []

    async def __call__(self, qname: str) -> Answer:
        self.queries.append(qname)
        zone = qname.removeprefix("1.0.0.127.")
        spec = self.zones.get(zone, "nxdomain")
        if spec == "hang":
            await asyncio.Event().wait()
        if spec in ("nxdomain", "error"):
            return Answer(NXDOMAIN if spec == "nxdomain" else ERROR, ttl_s=300.0)
        return Answer(OK, tuple(spec.split(",")), 300.0)


def postscreen_config(settings: dict[str, str]) -> PostscreenConfig:
    def items(key: str, default: str = "") -> tuple[str, ...]:
        value = settings.get(key, default)
        return tuple(part for part in value.split(",") if part)
    banner = settings.get("greet_banner", "$hostname ESMTP")
    return PostscreenConfig(
        access=items("access", "permit_mynetworks"), denylist_action=settings.get("denylist_action", "drop"),
        greet_wait_s=float(settings.get("greet_wait_s", 0.3)), greet_banner="" if banner == "none" else banner,
        greet_action=settings.get("greet_action", "enforce"), dnsbl_sites=items("dnsbl_sites"),
        dnsbl_threshold=int(settings.get("dnsbl_threshold", 1)),
        dnsbl_allowlist_threshold=int(settings.get("dnsbl_allowlist_threshold", 0)),
        dnsbl_action=settings.get("dnsbl_action", "enforce"), cache_file="",
        max_connections=int(settings.get("ps_max_connections", 100)),
        max_connections_per_client=int(settings.get("ps_max_connections_per_client", 10)))


def build_screened(tmp_path: Path, settings: dict[str, str]) -> tuple[Listener, FakeSpool, PostscreenService]:
    spool = FakeSpool(tmp_path / "spool")
    listen = Listen("127.0.0.1", 0, postscreen=True)
    smtpd = {k: (float(v) if k.endswith("_s") else int(v)) for k, v in settings.items() if k in SMTPD_SETTINGS}
    cfg = make_config(tmp_path, mynetworks=tuple(settings.get("mynetworks", "10.0.0.0/8").split(",")),
                      listen=listen, **smtpd)
    cfg = replace(cfg, postscreen=postscreen_config(settings))
    stress = StressLimits(greet_wait_s=float(settings.get("stress_greet_wait_s", 2.0)),
                          timeout_s=float(settings.get("stress_timeout_s", 10.0)))
    dns = FakeDns({k[4:]: v for k, v in settings.items() if k.startswith("dns:")})
    service = PostscreenService(cfg, clock=lambda: NOW, lookup=dns, stress=stress)
    for test in (t for t in settings.get("cached", "").split(",") if t):
        service.cache.record(CLIENT, {"pregreet": PREGREET, "dnsbl": DNSBL}[test], 3600.0)
    listener = Listener(service.listener_config(), listen, spool, lambda: None, clock=lambda: NOW)
    listener.pre_greet = service.screen(lambda: listener.active)
    return listener, spool, service


async def wait_idle(listener: Listener) -> None:
    await wait_until_async(lambda: not listener.active, READ_TIMEOUT_S, what="the listener's sessions to end")


async def still_serves(listener: Listener) -> None:
    """After a transcript: the listener is alive; a new client gets the same first line."""
    await wait_idle(listener)
    reader, writer = await asyncio.open_connection(*listener.address)
    writer.write(b"QUIT\r\n")       # at once: without a teaser, only a pregreet gets a reply
    try:
        line = await read_line(reader)
        assert line[:4] in ("220-", "220 ", "521 "), line
    finally:
        writer.close()


class ScreenedDialog(Dialog):
    def build_listener(self):
        listener, spool, self.service = build_screened(self.tmp_path, self.settings)
        return listener, spool

    async def still_up(self, listener) -> None:
        await still_serves(listener)

    async def check(self, op: str, arg: str) -> None:
        if op == "@counter":
            name, value = arg.split()
            got = getattr(self.service.counters, name)
            assert got == int(value), f"postscreen counter {name} is {got}"
        elif op == "@hangup":
            self.writer.close()
        else:
            await super().check(op, arg)


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_postscreen_transcript_replies_as_written(path: Path, tmp_path: Path) -> None:
    with LogCapture() as log:
        asyncio.run(ScreenedDialog(path, tmp_path, None).run(log))


def test_postscreen_dialog_directory_has_transcripts() -> None:
    assert len(DIALOGS) >= 15


# ---------------------------------------------------------------- several connections, slow clients

async def connect(listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection(*listener.address)
    return reader, writer, await read_line(reader)


def run_screened(tmp_path: Path, settings: dict[str, str], scenario) -> tuple[PostscreenService, list[str]]:
    async def main():
        listener, _, service = build_screened(tmp_path, settings)
        await listener.start()
        try:
            await scenario(listener)
        finally:
            await listener.close(grace_s=1)
        return service
    with LogCapture() as log:
        service = asyncio.run(main())
    return service, log.lines


def test_postscreen_per_client_limit_reached_replies_421_too_many_connections(tmp_path):
    async def scenario(listener):
        clients = [await connect(listener) for _ in range(3)]       # all three held open
        assert [greeting[:4] for _, _, greeting in clients] == ["220 ", "220 ", "421 "]
        assert clients[2][2].startswith("421 4.7.0 Error: too many connections")
    settings = {"ps_max_connections_per_client": "2", "access": "permit 127.0.0.1/32"}
    _, lines = run_screened(tmp_path, settings, scenario)
    assert any("too many connections from [127.0.0.1]" in line for line in lines)


def test_postscreen_max_connections_reached_replies_421_ports_busy(tmp_path):
    async def scenario(listener):
        clients = [await connect(listener) for _ in range(3)]
        assert [greeting[:4] for _, _, greeting in clients] == ["220-", "220-", "421 "]
        assert clients[2][2].startswith("421 4.3.2 All server ports are busy")
        assert listener.snapshot()["refused"] == 1
    _, lines = run_screened(tmp_path, {"ps_max_connections": "2", "greet_wait_s": "30"}, scenario)
    assert any("all server ports busy" in line for line in lines)


def test_postscreen_stress_starts_at_80_percent_of_max_connections(tmp_path):
    async def scenario(listener):
        held = [await connect(listener) for _ in range(3)]          # 1..3 of 5: normal
        assert all(greeting.startswith("220 ") for _, _, greeting in held)
        assert listener.pre_greet.counters.stress == 0
        reader, writer, greeting = await connect(listener)          # 4 of 5 = 80%: stress
        assert greeting.startswith("220 ")
        assert listener.pre_greet.counters.stress == 1
        writer.write(b"BOGUS\r\n")                                   # hard error limit 1 now
        assert (await read_line(reader)).startswith("500 ")
        assert (await read_line(reader)).startswith("421 4.7.0 mta-lite.test Error: too many errors")
    run_screened(tmp_path, {"ps_max_connections": "5", "access": "permit 127.0.0.1/32"}, scenario)


async def dribble(writer: asyncio.StreamWriter, data: bytes, gap_s: float) -> None:
    """A slow client: one byte every gap_s (pacing the peer, not waiting for a condition)."""
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(gap_s)


def test_postscreen_slow_client_in_mini_engine_cut_off_by_command_deadline(tmp_path):
    """One byte every 0.1 s never trips the 0.5 s read timeout; the per-command deadline does."""
    async def scenario(listener):
        reader, writer, greeting = await connect(listener)
        writer.write(b"EHLO bot\r\n")                                # pregreet: enforce
        assert (await read_line(reader)).startswith("220 ")
        slow = asyncio.create_task(dribble(writer, b"MAIL FROM:<spammer@bot.example>\r\n", 0.1))
        assert (await read_line(reader)).startswith("421 4.4.2 mta-lite.test Error: timeout exceeded")
        assert not slow.done()                  # cut off mid-command, not at its end (3.4 s of bytes)
        slow.cancel()
    _, lines = run_screened(tmp_path, {"timeout_s": "0.5"}, scenario)
    assert any("timeout after CONNECT from [127.0.0.1]" in line for line in lines)


def test_postscreen_slow_client_under_stress_cut_off_in_smtp_engine(tmp_path):
    async def scenario(listener):
        reader, writer, greeting = await connect(listener)
        assert greeting.startswith("220 ")
        slow = asyncio.create_task(dribble(writer, b"EHLO slow.example\r\n", 0.1))
        assert (await read_line(reader)).startswith("421 4.4.2 mta-lite.test Error: timeout exceeded")
        assert not slow.done()
        slow.cancel()
    settings = {"ps_max_connections": "1", "access": "permit 127.0.0.1/32", "stress_timeout_s": "0.5"}
    run_screened(tmp_path, settings, scenario)


def test_postscreen_mini_engine_session_deadline_replies_421(tmp_path, monkeypatch):
    from mta_lite.postscreen import service as postscreen
    monkeypatch.setattr(postscreen, "ENFORCE_SESSION_LIMIT_S", 0.5)

    async def scenario(listener):
        reader, writer, _ = await connect(listener)
        writer.write(b"EHLO bot\r\n")
        assert (await read_line(reader)).startswith("220 ")
        started = time.monotonic()
        # Busy, but never done. At most 20 NOOPs a second (the pause is the client's pace), so
        # the 0.5 s limit ends the session long before the last of these (no wall-clock bound).
        for _ in range(200):
            writer.write(b"NOOP\r\n")
            line = await read_line(reader)
            if not line.startswith("250"):
                break
            await asyncio.sleep(0.05)
        assert line.startswith("421 4.4.2")
        assert time.monotonic() - started >= 0.5        # the session limit, not a command's
    run_screened(tmp_path, {}, scenario)


def test_postscreen_pass_is_cached_for_the_next_connection(tmp_path):
    async def scenario(listener):
        _, writer, greeting = await connect(listener)
        assert greeting.startswith("220-")
        writer.close()                                 # left during the tests: no pass
        reader, writer, greeting = await connect(listener)
        assert greeting.startswith("220-")
        assert (await read_line(reader)).startswith("220 ")   # waited its turn: PASS NEW
        writer.close()
        reader, writer = await asyncio.open_connection(*listener.address)
        # The banner at once: no "220-" teaser, which starts every greet wait.
        assert (await read_line(reader)).startswith("220 mta-lite.test ESMTP")
    service, lines = run_screened(tmp_path, {"greet_wait_s": "1"}, scenario)
    assert service.counters.cache_hits == 1 and service.counters.passed == 1
    assert any(line.startswith("HANGUP after") for line in lines)


# ---------------------------------------------------------------- clients held before their task

def test_postscreen_close_while_clients_held_replies_421_shutting_down(tmp_path):
    """Idle clients in the greet wait have no session task yet: close() still answers them."""
    async def scenario(listener):
        clients = [await connect(listener) for _ in range(3)]
        assert all(greeting.startswith("220-") for _, _, greeting in clients)
        await listener.close(grace_s=1)
        for reader, _, _ in clients:
            assert (await read_line(reader)).startswith("421 4.3.0 mta-lite.test Service shutting down")
        assert listener.active == 0
    _, lines = run_screened(tmp_path, {"greet_wait_s": "30"}, scenario)
    assert sum("disconnect from [127.0.0.1] commands=0" in line for line in lines) == 3


def test_postscreen_held_clients_each_released_after_their_own_wait(tmp_path):
    """Two wait lengths at once (stress: 0.2 s, normal: 1 s): each client gets its final 220
    after its own wait, whatever the order they came in; a pregreeter among them is caught."""
    async def scenario(listener):
        first = await connect(listener)                     # 1 of 3: normal, 1 s
        talker = await connect(listener)                    # 2 of 3: normal, talks
        talker[1].write(b"EHLO early\r\n")
        stressed = await connect(listener)                  # 3 of 3 = 80 %+: stress, 0.2 s
        assert all(c[2].startswith("220-") for c in (first, talker, stressed))
        assert (await read_line(stressed[0])).startswith("220 ")
        assert (await read_line(first[0])).startswith("220 ")
        assert (await read_line(talker[0])).startswith("220 ")        # enforce: 550 at RCPT later
        assert listener.pre_greet.counters.passed == 2
        assert listener.pre_greet.counters.pregreet == 1
    settings = {"greet_wait_s": "1", "stress_greet_wait_s": "0.2", "ps_max_connections": "3"}
    run_screened(tmp_path, settings, scenario)
