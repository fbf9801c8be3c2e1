"""Smarthost faults, relay policy and the queue commands, with Postfix's smtp-sink as the peer.

Peer: /usr/sbin/smtp-sink (tests/support/peers.py: SmtpSink) with its fault flags: -r (4xx), -f (5xx),
-Q (421 and close), -q (hang up without a reply).
"""

import smtplib

import pytest

from tests.support.relay import relay_config
from tests.support.waiting import wait_until


pytestmark = pytest.mark.integration


def send(port: int, sender="scanner@lan.test", rcpts=("bob@remote.example",), body="hello") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, list(rcpts), f"Subject: fault test\r\n\r\n{body}\r\n")
        code, text = client.noop()
    return text.decode()


def wait_state(relay, state: str, timeout: float = 60):
    def check():
        items = relay.queue()
        return items if items and all(i["state"] == state and i["attempts"] for i in items) else None
    return wait_until(check, timeout, what=f"queue state {state}")


def test_delivery_to_sink_empties_the_queue(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port))
    for i in range(5):
        send(relay.port, body=f"message {i}")
    sink.wait_count(5, timeout=60)
    wait_until(lambda: relay.queue() == [], 30, what="empty queue")
    assert relay.log().count("status=sent") == 5 and relay.log().count(": removed") == 5


@pytest.mark.parametrize("flags, reply", [
    (("-r", "RCPT", "-b", "451 4.3.0 Try again later"), "451 4.3.0"),
    (("-Q", "MAIL"), "421"),
    (("-q", "."), ""),              # hang-up after the final dot: outcome unknown, retry
    (("-r", ".", "-b", "452 4.3.1 Insufficient system storage"), "452 4.3.1"),
])
def test_transient_failures_defer_and_never_bounce(sink_factory, relay_factory, flags, reply):
    sink = sink_factory(*flags)
    relay = relay_factory(relay_config(sink.port))
    send(relay.port)
    items = wait_state(relay, "deferred")
    assert items[0]["last_error"].startswith(reply)
    assert "status=deferred" in relay.log() and "status=bounced" not in relay.log()


@pytest.mark.parametrize("flags", [("-f", "RCPT", "-B", "550 5.1.1 No such user"),
                                   ("-f", ".", "-B", "552 5.3.4 Message too big"),
                                   ("-f", "MAIL", "-B", "554 5.7.1 Rejected by policy")])
def test_permanent_failure_bounces_without_looping(sink_factory, relay_factory, flags):
    sink = sink_factory(*flags)
    relay = relay_factory(relay_config(sink.port))
    send(relay.port)
    wait_until(lambda: relay.queue() == [] and relay.log().count(": removed") >= 2, 60, what="bounce cycle")
    log = relay.log()
    assert "status=bounced" in log and "sender non-delivery notification" in log
    # The DSN bounces too (the sink refuses everything); its failure goes to the admin once,
    # and that notice, failing as well, is dropped: no loop, empty queue.
    assert log.count("sender non-delivery notification") <= 2


def test_client_outside_mynetworks_gets_relay_access_denied(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory({**relay_config(sink.port), "mynetworks": ["10.0.0.0/8"]})
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        client.ehlo("outsider.example")
        client.mail("spammer@outsider.example")
        code, text = client.rcpt("victim@remote.example")
    assert (code, text.decode()) == (554, "5.7.1 <victim@remote.example>: Relay access denied")
    assert relay.queue() == []


def test_queue_hold_release_delete_flush_while_running(sink_factory, relay_factory):
    sink = sink_factory("-r", "RCPT", "-b", "451 4.3.0 Try again later")
    relay = relay_factory(relay_config(sink.port, queue={"min_backoff": "1h", "max_backoff": "2h"}))
    send(relay.port)
    send(relay.port)
    first, second = (i["id"] for i in wait_state(relay, "deferred"))
    assert relay.cli("queue", "hold", first).returncode == 0
    assert {i["id"]: i["state"] for i in relay.queue()}[first] == "hold"
    attempts = {i["id"]: i["attempts"] for i in relay.queue()}
    assert relay.cli("queue", "flush").returncode == 0
    wait_until(lambda: {i["id"]: i["attempts"] for i in relay.queue()}[second] > attempts[second], 30,
               what="flush to retry the deferred message")
    assert {i["id"]: i["attempts"] for i in relay.queue()}[first] == attempts[first]   # held: untouched
    assert relay.cli("queue", "release", first).returncode == 0
    assert relay.cli("queue", "delete", second).returncode == 0
    assert [i["id"] for i in relay.queue()] == [first]
    unknown = relay.cli("queue", "delete", "0123456789ABCDEF")
    assert unknown.returncode == 64 and b"0123456789ABCDEF" in unknown.stderr
    shown = relay.cli("queue", "show", first).stdout
    assert b"Subject: fault test" in shown and b"sender: scanner@lan.test" in shown
