"""Old office devices through the whole daemon: what they send, and what the smarthost gets.

Peers: the real daemon (tests/support/relay.py); a raw recording smarthost that keeps the exact
DATA bytes (tests/support/faults.py RawSmarthost), with and without 8BITMIME; a real Postfix
smarthost with `smtpd_discard_ehlo_keywords = 8bitmime` (tests/support/peers.py); raw socket
clients (RawClient) from 127.0.0.2 (inside: the config's mynetworks is 127.0.0.2/32).
"""

from __future__ import annotations

import email
import email.policy
import re

import pytest

from tests.integration.conftest import SMARTHOST_USERS
from tests.support.faults import LoopThread, RawClient, RawSmarthost, message_id
from tests.support.peers import PostfixSmarthost
from tests.support.relay import postfix_config, relay_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

INSIDE = "127.0.0.2"


@pytest.fixture
def smarthost():
    loop = LoopThread()
    try:
        with RawSmarthost(loop) as peer:
            yield peer
    finally:
        loop.close()


def start(relay_factory, smarthost, **top):
    return relay_factory(relay_config(smarthost.port, mynetworks=[f"{INSIDE}/32"], **top))


def send_raw(port: int, data: bytes, sender: bytes = b"scanner@lan.test", source: str = INSIDE) -> bytes:
    with RawClient(port, source=source) as client:
        client.reply()
        client.command(b"EHLO scanner\r\n")
        assert client.command(b"MAIL FROM:<" + sender + b">\r\n").startswith(b"250")
        assert client.command(b"RCPT TO:<ops@remote.example>\r\n").startswith(b"250")
        assert client.command(b"DATA\r\n").startswith(b"354")
        reply = client.command(data + b".\r\n")
        client.command(b"QUIT\r\n")
    assert reply.startswith(b"250 2.0.0 Ok: queued as"), reply
    return reply.split()[-1]


@pytest.mark.deployed
def test_missing_date_message_id_and_from_are_added_once_and_nothing_else_changes(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    bare_id = send_raw(relay.port, b"Subject: scan 1\r\n\r\nscanned page\r\n").decode()
    complete = b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <c@lan.test>\r\nFrom: s@lan.test\r\n" \
               b"Subject: scan 2\r\n\r\nscanned page\r\n"
    send_raw(relay.port, complete)
    got = smarthost.wait_messages(2)
    wait_until(lambda: relay.queue() == [], 30, what="an empty queue")
    by_subject = {re.search(rb"Subject: (scan \d)", t.content).group(1): t.content for t in got}
    added = by_subject[b"scan 1"]
    assert message_id(added) == f"<{message_id(added)[1:15]}.{bare_id}@relay.lan.test>"
    assert re.search(rb"\r\nSubject: scan 1\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} [\d:]{8} \+0000\r\n"
                     rb"Message-ID: <\d{14}\.\w+@relay\.lan\.test>\r\nFrom: scanner@lan\.test\r\n\r\n"
                     rb"scanned page\r\n$", added), added
    assert by_subject[b"scan 2"].endswith(b"\r\n" + complete)     # after our Received: line, as sent
    log = relay.log()
    for name in ("Date", "Message-ID", "From"):
        assert log.count(f"{bare_id}: missing {name} header added") == 1
    assert log.count("header added") == 3


@pytest.fixture
def seven_bit_smarthost():
    """A smarthost that does not announce 8BITMIME (nor SMTPUTF8)."""
    loop = LoopThread()
    try:
        with RawSmarthost(loop, ehlo=("PIPELINING", "SIZE 50000000")) as peer:
            yield peer
    finally:
        loop.close()


def test_8bit_text_to_a_smarthost_without_8bitmime_arrives_as_quoted_printable(relay_factory, seven_bit_smarthost):
    relay = start(relay_factory, seven_bit_smarthost)
    body = "Scan vom Drucker: Grüße, 5 Seiten\r\n".encode()
    send_raw(relay.port, b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                         b"Content-Transfer-Encoding: 8bit\r\nSubject: scan\r\n\r\n" + body)
    got, = seven_bit_smarthost.wait_messages(1)
    wait_until(lambda: relay.queue() == [], 30, what="an empty queue")
    assert got.wire.isascii() and b"BODY=8BITMIME" not in got.mail_from
    assert b"\r\nContent-Transfer-Encoding: quoted-printable\r\nSubject: scan\r\n" in got.wire
    assert got.wire.endswith(b"\r\n\r\nScan vom Drucker: Gr=C3=BC=C3=9Fe, 5 Seiten\r\n")
    assert "status=sent" in relay.log()


class SevenBitPostfix(PostfixSmarthost):
    """The Postfix smarthost peer, told to hide 8BITMIME (smtpd_discard_ehlo_keywords)."""

    def main_cf(self) -> dict[str, str]:
        return super().main_cf() | {"smtpd_discard_ehlo_keywords": "8bitmime"}


@pytest.mark.deployed
def test_8bit_mail_through_a_postfix_without_8bitmime_arrives_readable(tmp_path_factory, relay_factory):
    with SevenBitPostfix(tmp_path_factory.mktemp("seven-bit"), users=SMARTHOST_USERS) as postfix:
        relay = relay_factory(postfix_config(postfix))
        body = "Grüße vom Scanner\r\n".encode()
        send_raw(relay.port, b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Transfer-Encoding: 8bit\r\nMessage-ID: <qp@lan.test>\r\nSubject: qp\r\n\r\n"
                             + body, source="127.0.0.1")
        delivered = wait_until(lambda: [d for d in postfix.delivered() if d.message_id == "<qp@lan.test>"], 60,
                               what="the message at the Postfix smarthost")
    raw = delivered[0].raw
    assert b"Content-Transfer-Encoding: quoted-printable\n" in raw and raw.isascii()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content() == "Grüße vom Scanner\n"
