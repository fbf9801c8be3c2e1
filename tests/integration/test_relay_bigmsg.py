"""A multi-megabyte message through the real daemon: sent from its queue file in chunks, it
arrives intact (lines that start with ".", 8-bit text), with SIZE= and BODY=8BITMIME right.

Peers: Postfix's smtp-sink (tests/support/peers.py: SmtpSink; its dumps lose every CR), the
raw recording smarthost (tests/support/faults.py: RawSmarthost), which keeps the exact
octets of DATA, and Postfix as the smarthost over STARTTLS with AUTH (PostfixSmarthost: the
TLS transport's flow control). All in the deployed mode too.
"""

import smtplib

import pytest

from mta_lite.smarthost.esmtp import data_bytes
from tests.support.bigmsg import big_message
from tests.support.faults import LoopThread, RawSmarthost
from tests.support.relay import postfix_config, relay_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SIZE = 4 * 1024 * 1024


def send(port: int, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.sendmail("scanner@lan.test", ["bob@remote.example"], content, mail_options=["BODY=8BITMIME"])


@pytest.fixture
def peers_loop():
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.mark.deployed
def test_big_message_reaches_smtp_sink_intact(sink_factory, relay_factory):
    content = big_message(SIZE)
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port))
    send(relay.port, content)
    dump = sink.wait_for(1, timeout=180)[0]
    # smtp-sink drops every CR, undoes the dot-stuffing and ends its dump with an empty line.
    start = dump.find(content[:content.index(b"\r\n")])
    assert start > 0 and dump[start:] == content.replace(b"\r", b"") + b"\n"
    wait_until(lambda: relay.queue() == [], 60, what="the queue to empty")
    assert "status=sent" in relay.log()


@pytest.mark.deployed
def test_big_message_leaves_with_the_exact_octets(peers_loop, relay_factory):
    content = big_message(SIZE, seed=11)
    with RawSmarthost(peers_loop) as peer:
        relay = relay_factory(relay_config(peer.port))
        send(relay.port, content)
        got = peer.wait_messages(1, timeout=180)[0]
    # The relay adds its Received: line in front; the rest is the message as queued.
    assert got.wire.endswith(data_bytes(content)[:-len(b".\r\n")])
    assert got.content.endswith(content)
    assert f"SIZE={len(got.content)}".encode() in got.mail_from and b"BODY=8BITMIME" in got.mail_from
    wait_until(lambda: relay.queue() == [], 60, what="the queue to empty")


@pytest.mark.deployed
def test_big_message_over_starttls_reaches_postfix_intact(smarthost, relay_factory):
    content = big_message(SIZE, seed=13)
    relay = relay_factory(postfix_config(smarthost))
    send(relay.port, content)
    message_id = b"<scan-13@lan.test>"
    got = wait_until(lambda: [d for d in smarthost.delivered() if message_id in d.raw], 180,
                     what="the big message in the smarthost's Maildir")
    assert got[0].raw.endswith(content.replace(b"\r\n", b"\n"))     # Maildir: LF line ends
    assert got[0].sasl_username == "office@example.test"
