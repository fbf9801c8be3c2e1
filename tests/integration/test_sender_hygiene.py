"""Sender hygiene end to end: [rewrite] at delivery, sender binding (S4), the submission port.

Peers: Postfix's smtp-sink (records the envelope and the message: what a smarthost received)
and Postfix 3.7 as ISP-like smarthost (its Received header names the SASL account that
sent each message); smtplib and swaks as clients. LAN devices are clients that connect from
other loopback addresses (127.0.0.2, 127.0.0.3).
"""

from __future__ import annotations

import smtplib
from email.utils import make_msgid

import pytest
import trustme

from mta_lite.passhash import hash_password
from tests.support.peers import dump_envelope, dump_message, swaks
from tests.support.relay import postfix_config, relay_config, secret_needles
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SUBMIT_PASSWORD = "sUbm1t-kangaroo-42"       # alice's login at the relay (not the smarthost's)
SCAN = (b"From: Printer 3000\r\n <root@printer.lan>\r\n"                     # folded
        b"To: office@remote.example\r\nSubject: Scan =?utf-8?q?B=C3=BCro?=\r\n"
        b"Message-ID: <scan-1@printer.lan>\r\nX-Odd:   spacing\t kept  \r\n"
        b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n"     # complete: smtpd adds nothing
        b"From: not a header, in the body\r\n.leading dot\r\n\r\nlast line\r\n")


def send(port: int, sender: str, message: bytes, source: str = "127.0.0.1",
         rcpts: tuple[str, ...] = ("office@remote.example",)) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.sendmail(sender, list(rcpts), message)


def without_our_received(message: bytes) -> bytes:
    """The message as the client sent it: our Received: (first field, folded) taken off."""
    assert message.startswith(b"Received: from ")
    lines = message.split(b"\n")
    end = 1
    while lines[end][:1] in (b" ", b"\t"):
        end += 1
    return b"\n".join(lines[end:])


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")          # smtp-sink dumps have every CR removed


def by_message_id(sink, message_id: bytes, timeout: float = 60) -> bytes:
    return wait_until(lambda: next((d for d in sink.messages() if message_id in d), None), timeout,
                      what=f"{message_id!r} at the smtp-sink")


def test_rewrite_changes_envelope_and_from_and_nothing_else(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory({**relay_config(sink.port), "rewrite": {
        "senders": {"root@printer.lan": "printer@example.com"},
        "clients": {"127.0.0.2": "Office Scanner <scanner@example.com>"}}})
    send(relay.port, "root@printer.lan", SCAN)
    scanner = SCAN.replace(b"scan-1@", b"scan-2@")
    send(relay.port, "scan@scanner.local", scanner, source="127.0.0.2")
    cron = (b"From: root (Cron Daemon)\r\nSubject: cron\r\nMessage-ID: <cron-1@relay>\r\n"
            b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\noutput\r\n")
    send(relay.port, "root", cron, source="127.0.0.3")

    dump = by_message_id(sink, b"<scan-1@printer.lan>")
    assert dump_envelope(dump)["X-Mail-Args"][0].startswith("<printer@example.com>")
    assert without_our_received(dump_message(dump)) == lf(
        b"From: Printer 3000 <printer@example.com>\r\nX-Original-From: Printer 3000\r\n <root@printer.lan>\r\n"
        + SCAN.split(b"\r\n", 2)[2])
    dump = by_message_id(sink, b"<scan-2@printer.lan>")
    assert dump_envelope(dump)["X-Mail-Args"][0].startswith("<scanner@example.com>")
    assert without_our_received(dump_message(dump)) == lf(
        b"From: Office Scanner <scanner@example.com>\r\nX-Original-From: Printer 3000\r\n <root@printer.lan>\r\n"
        + scanner.split(b"\r\n", 2)[2])
    dump = by_message_id(sink, b"<cron-1@relay>")
    assert dump_envelope(dump)["X-Mail-Args"][0].startswith("<admin@lan.test>")
    assert without_our_received(dump_message(dump)) == lf(
        b'From: "Cron Daemon" <admin@lan.test>\r\nX-Original-From: root (Cron Daemon)\r\n' + cron.split(b"\r\n", 1)[1])
    log = relay.log()
    assert "sender rewritten: from=<root@printer.lan> to=<printer@example.com> (rewrite.senders root@printer.lan)" in log
    assert "to=<scanner@example.com> (rewrite.clients 127.0.0.2/32)" in log
    assert "from=<root@relay.lan.test> to=<admin@lan.test> (rewrite.local_sender)" in log


def test_bound_sender_from_foreign_client_is_refused(sink_factory, relay_factory):
    sink = sink_factory()
    config = relay_config(sink.port)
    config["senders"] = [{"address": "printer@example.com", "relay": "sink", "clients": ["127.0.0.2/32"]}]
    relay = relay_factory(config)
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        send(relay.port, "printer@example.com", b"Subject: borrowed\r\n\r\nx\r\n", source="127.0.0.3")
    assert info.value.smtp_code == 553
    assert info.value.smtp_error == b"5.7.1 <printer@example.com>: Sender address rejected: not owned by client [127.0.0.3]"
    send(relay.port, "printer@example.com", b"Subject: own\r\nMessage-ID: <own-1@lan>\r\n\r\nx\r\n", source="127.0.0.2")
    dump = by_message_id(sink, b"<own-1@lan>")
    assert dump_envelope(dump)["X-Mail-Args"][0].startswith("<printer@example.com>")
    # smtp-sink's live counter may trail its dump file by a moment; it must settle at one.
    wait_until(lambda: sink.count() == 1, 10, what="the sink's count of one message")
    assert "NOQUEUE: reject: MAIL from [127.0.0.3]: 553 5.7.1 <printer@example.com>" in relay.log()
    # Local sendmail counts as client 127.0.0.1: no way around the binding either.
    result = relay.cli("sendmail", "-f", "printer@example.com", "ops@remote.example",
                       stdin=b"Subject: local borrow\r\n\r\nx\r\n")
    assert result.returncode == 77, result.stderr.decode()
    assert b"Sender address rejected: not owned by client [127.0.0.1]" in result.stderr
    assert relay.cli("sendmail", "-f", "cron@example.com", "ops@remote.example",
                     stdin=b"Subject: local own\r\nMessage-ID: <own-2@lan>\r\n\r\nx\r\n").returncode == 0
    by_message_id(sink, b"<own-2@lan>")
    wait_until(lambda: sink.count() == 2, 10, what="the sink's count of two messages")


# ---------------------------------------------------------------- against a real Postfix smarthost

def delivered_with(smarthost, subject: str):
    return wait_until(lambda: next((d for d in smarthost.delivered() if subject.encode() in d.raw), None), 60,
                      what=f"{subject!r} at the smarthost")


def test_rewritten_printer_mail_uses_the_account_of_its_new_sender(smarthost, relay_factory):
    relay = relay_factory(postfix_config(smarthost, rewrite={"senders": {"root@printer.lan": "alice@example.com"}}))
    subject = "rewritten " + make_msgid(domain="printer.lan")
    send(relay.port, "root@printer.lan", f"From: root@printer.lan\r\nSubject: {subject}\r\n\r\nscan\r\n".encode())
    got = delivered_with(smarthost, subject)
    assert got.sasl_username == "alice@example.test" and got.sender == "alice@example.com"
    assert b"\nFrom: alice@example.com\nX-Original-From: root@printer.lan\n" in got.raw


@pytest.fixture(scope="module")
def submission_cert(tmp_path_factory):
    base = tmp_path_factory.mktemp("submission-tls")
    cert = trustme.CA().issue_cert("relay.lan.test", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    cert.private_key_pem.write_to_path(str(base / "key.pem"))
    return str(base / "cert.pem"), str(base / "key.pem")


@pytest.mark.deployed
def test_swaks_submission_with_auth_relays_with_the_users_sender_account(smarthost, relay_factory, submission_cert):
    tls = {"tls_cert": submission_cert[0], "tls_key": submission_cert[1], "auth": "required"}
    relay = relay_factory(postfix_config(
        smarthost, mynetworks=["192.0.2.0/24"],                 # 127.0.0.1 is outside: S1 holds
        listen=[{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", **tls},
                {"address": "127.0.0.1:0", "tls": "implicit", **tls}],
        users={"alice": {"password_hash": hash_password(SUBMIT_PASSWORD.encode()), "senders": ["alice@example.com"]}},
        # The laptop's address is mapped for the LAN's devices; a login is never rewritten by
        # it, or alice's mail would leave as the scanner, through the office account.
        rewrite={"clients": {"127.0.0.0/8": "Office Scanner <scanner@example.com>"}}),
        start=False)
    port, submission, implicit = relay.start().ports          # the relay's ports, from its log

    def swaks_as_alice(server: int, *args: str, sender: str = "alice@example.com"):
        subject = "submission " + make_msgid(domain="laptop.test")
        result = swaks("--server", f"127.0.0.1:{server}", "--from", sender, "--to", "friend@remote.example",
                       "--auth-user", "alice", "--auth-password", SUBMIT_PASSWORD,
                       "--header", f"Subject: {subject}", *args)
        return result, subject

    result, subject = swaks_as_alice(submission, "--tls", "--auth", "PLAIN")
    assert result.returncode == 0, result.stdout
    assert delivered_with(smarthost, subject).sasl_username == "alice@example.test"
    result, subject = swaks_as_alice(implicit, "--tls-on-connect", "--auth", "LOGIN")
    assert result.returncode == 0, result.stdout
    assert delivered_with(smarthost, subject).sasl_username == "alice@example.test"

    result, _ = swaks_as_alice(submission, "--tls", "--auth", "PLAIN", sender="bob@example.com")
    assert result.returncode == 23 and "553 5.7.1 <bob@example.com>: Sender address rejected: " \
                                      "not owned by user alice" in result.stdout
    result = swaks("--server", f"127.0.0.1:{submission}", "--tls", "--from", "alice@example.com",
                   "--to", "friend@remote.example")
    assert result.returncode == 23 and "530 5.7.0 Authentication required" in result.stdout
    result = swaks("--server", f"127.0.0.1:{port}", "--from", "alice@example.com", "--to", "friend@remote.example")
    assert result.returncode == 24 and "554 5.7.1 <friend@remote.example>: Relay access denied" in result.stdout

    log = relay.log()
    assert "sasl_method=PLAIN, sasl_username=alice" in log and "sasl_method=LOGIN, sasl_username=alice" in log
    for needle in secret_needles([SUBMIT_PASSWORD]):
        assert needle.decode() not in log, "the submission password reached the log"
