"""G3/S3/S5 through the whole daemon: smarthosts that fail in every way the client must survive.

Peers: the real daemon (tests/support/relay.py), Postfix's smtp-sink (`-w`: slow DATA reply), a raw
recording smarthost (silent, reset mid-DATA, 550 for one recipient; tests/support/faults.py
RawSmarthost), aiosmtpd with STARTTLS and AUTH (TlsSmarthost) serving certificates made with
`cryptography` (wrong host, expired, not yet valid, self-signed), the daemon itself under
`faketime '1970-01-01 00:00:00'`, and the system resolver for a name that does not resolve.
Clients: stdlib smtplib.
Each behaviour is tested once: here what the whole daemon makes of a failing smarthost (the
queue's last_error, the log line, a bounce); the smarthost client's own handling, tested
in-process, is in tests/integration/test_smarthost_client.py (no STARTTLS offered, STARTTLS
refused, a 452 at RCPT, replies at each step, the pool).
"""

from __future__ import annotations

import shutil
import smtplib
import time

import pytest

from tests.faults.conftest import fault_config, tls_relay_config
from tests.support.faults import RawSmarthost, TlsSmarthost, message_id
from tests.support.peers import free_port
from tests.support.waiting import wait_until


pytestmark = pytest.mark.integration


def send(port: int, tag: str, rcpts=("ops@remote.example",)) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("scanner@lan.test", list(rcpts),
                        f"Message-ID: <{tag}@lan.test>\r\nSubject: {tag}\r\n\r\nbody of {tag}\r\n")


def deferred(relay, n: int = 1, timeout: float = 60) -> list[dict]:
    """The queue once it holds n messages, each deferred after at least one attempt."""
    def check():
        items = relay.queue()
        return items if len(items) == n and all(i["state"] == "deferred" and i["attempts"] for i in items) else None
    return wait_until(check, timeout, what=f"{n} deferred messages")


def never_bounced(relay) -> None:
    log = relay.log()
    assert "status=bounced" not in log and "non-delivery notification" not in log


# ------------------------------------------------------------------ no usable connection

def test_smarthost_refusing_connections_defers_with_4_4_1(relay_factory):
    port = free_port()                          # nothing listens here
    relay = relay_factory(fault_config(port))
    send(relay.port, "refused")
    item, = deferred(relay)
    assert item["last_error"] == f"451 4.4.1 connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
    assert "relay=none, " in relay.log()            # no smarthost was reached
    never_bounced(relay)


def test_smarthost_silent_after_accepting_tcp_defers_on_greeting_timeout(relay_factory, peers_loop):
    with RawSmarthost(peers_loop, greet=False) as smarthost:
        relay = relay_factory(fault_config(smarthost.port, timeout="2s"))
        send(relay.port, "silent")
        item, = deferred(relay)
        assert item["last_error"].startswith("451 4.4.2 conversation with 127.0.0.1[127.0.0.1]")
        assert "timed out while receiving the initial server greeting" in item["last_error"]
        assert smarthost.connections >= 1 and smarthost.messages() == []
    never_bounced(relay)


def test_smarthost_dns_name_not_resolving_defers_with_4_4_3(relay_factory):
    config = fault_config(9)
    config["relays"]["sink"]["host"] = "smarthost.invalid"      # RFC 2606: never resolves
    relay = relay_factory(config)
    send(relay.port, "no-dns")
    item, = deferred(relay)
    assert item["last_error"].startswith(
        "451 4.4.3 Host or domain name not found. Name service error for name=smarthost.invalid: ")
    never_bounced(relay)


# ------------------------------------------------------------------ failures during the transaction

def test_smarthost_slow_to_answer_data_times_out_and_defers_never_bounces(relay_factory, sink_factory):
    sink = sink_factory("-w", "30")                 # smtp-sink waits 30 s before answering DATA
    relay = relay_factory(fault_config(sink.port, timeout="2s"))
    send(relay.port, "slow")
    item, = deferred(relay)
    assert item["last_error"].startswith("451 4.4.2 conversation with 127.0.0.1[127.0.0.1]")
    assert "timed out while sending message content -- message may be sent more than once" in item["last_error"]
    never_bounced(relay)


def test_smarthost_reset_mid_data_defers_then_delivers_once_whole(relay_factory, peers_loop):
    with RawSmarthost(peers_loop) as smarthost:
        smarthost.data_reset_after = 40             # RST after the first DATA line or so
        relay = relay_factory(fault_config(smarthost.port))
        send(relay.port, "reset")
        item, = deferred(relay)
        assert item["last_error"].startswith("451 4.4.2 lost connection with 127.0.0.1[127.0.0.1]")
        assert "while sending message content -- message may be sent more than once" in item["last_error"]
        smarthost.data_reset_after = None
        got = smarthost.wait_messages(1)
        wait_until(lambda: relay.queue() == [], 30, what="the queue to empty")
        assert [message_id(t.content) for t in smarthost.messages()] == ["<reset@lan.test>"]
        assert got[0].content.endswith(b"body of reset\r\n")
    never_bounced(relay)


def test_smarthost_550_for_one_of_two_recipients_bounces_that_one_and_delivers_the_other_once(
        relay_factory, peers_loop):
    with RawSmarthost(peers_loop) as smarthost:
        smarthost.rcpt_replies[b"gone@remote.example"] = b"550 5.1.1 <gone@remote.example>: User unknown\r\n"
        relay = relay_factory(fault_config(smarthost.port))
        send(relay.port, "half", rcpts=("ops@remote.example", "gone@remote.example"))
        got = smarthost.wait_messages(2)            # the message, then the bounce to its sender
        wait_until(lambda: relay.queue() == [], 30, what="the queue to empty")
        message, dsn = got
        assert message.rcpts == [b"ops@remote.example"] and message_id(message.content) == "<half@lan.test>"
        assert dsn.mail_from.startswith(b"<>") and dsn.rcpts == [b"scanner@lan.test"]
        assert b"gone@remote.example" in dsn.content and b"550 5.1.1" in dsn.content
        assert len(smarthost.messages()) == 2           # the accepted recipient got it once
    log = relay.log()
    relay_field = f"relay=127.0.0.1[127.0.0.1]:{smarthost.port}"
    assert (f"to=<gone@remote.example>, {relay_field}" in log and "dsn=5.1.1, status=bounced "
            "(550 5.1.1 <gone@remote.example>: User unknown (in reply to RCPT TO command))" in log)
    assert log.count("to=<ops@remote.example>") == 1


# ------------------------------------------------------------------ TLS and AUTH (S3, S5)

def test_tls_smarthost_with_valid_certificate_gets_auth_inside_tls_and_the_mail(relay_factory, peers_loop, pki):
    """The control for the certificate faults below: the same set-up, a good certificate."""
    with TlsSmarthost(peers_loop, tls=pki.server_context("good")) as smarthost:
        relay = relay_factory(tls_relay_config(smarthost.port, pki.ca_file))
        send(relay.port, "tls-ok")
        wait_until(lambda: smarthost.messages, 30, what="the message at the TLS smarthost")
        assert smarthost.auth_attempts == [("PLAIN", "office@example.test", True)]
        assert message_id(smarthost.messages[0][2]) == "<tls-ok@lan.test>"


CERTIFICATE_FAULTS = {
    "wrong_host": ({"hosts": ("other.example",)}, "mismatch, certificate is not valid for '127.0.0.1'"),
    "expired": ({"not_before_days": -30, "not_after_days": -1}, "certificate has expired"),
    "not_yet_valid": ({"not_before_days": 1, "not_after_days": 365}, "certificate is not yet valid"),
    "self_signed": ({"self_signed": True}, "self-signed certificate"),
}


@pytest.mark.parametrize("fault", sorted(CERTIFICATE_FAULTS))
def test_smarthost_certificate_fault_defers_without_auth(relay_factory, peers_loop, pki, fault):
    kwargs, reason = CERTIFICATE_FAULTS[fault]
    with TlsSmarthost(peers_loop, tls=pki.server_context(fault, **kwargs)) as smarthost:
        relay = relay_factory(tls_relay_config(smarthost.port, pki.ca_file))
        send(relay.port, fault)
        item, = deferred(relay)
        assert item["last_error"].startswith(
            f"451 4.7.5 Server certificate not verified: 127.0.0.1[127.0.0.1]:{smarthost.port}: ")
        assert reason in item["last_error"]
        assert smarthost.auth_attempts == [] and smarthost.messages == []
    never_bounced(relay)


def test_box_clock_at_1970_defers_with_clock_not_set_without_connecting_never_bounces(relay_factory, peers_loop, pki):
    """C4: a clock before the release time is not set; the certificate is never checked
    against it (which would fail as "not yet valid"): no connection at all."""
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (tools/install-test-deps.sh installs it)")
    with TlsSmarthost(peers_loop, tls=pki.server_context("good-1970")) as smarthost:
        relay = relay_factory(tls_relay_config(smarthost.port, pki.ca_file), start=False)
        relay.prefix = ("faketime", "1970-01-01 00:00:00")
        relay.start()
        send(relay.port, "at-1970")
        item, = wait_until(lambda: [i for i in relay.queue() if i["state"] == "deferred"], 60,
                           what="the message to be deferred")
        assert item["arrival"] < 86400                # the daemon really lives on 1 January 1970
        assert item["last_error"].startswith("clock not set: it reads 1970-01-01 ")
        assert item["attempts"] == 0                  # nothing was tried: no backoff growth
        assert "not yet valid" not in relay.log()
        assert smarthost.connections == 0 and smarthost.auth_attempts == [] and smarthost.messages == []
    never_bounced(relay)


def test_smarthost_refusing_login_defers_pauses_the_account_and_retries_no_storm(relay_factory, peers_loop, pki):
    with TlsSmarthost(peers_loop, tls=pki.server_context("good-535"), auth_ok=False) as smarthost:
        relay = relay_factory(tls_relay_config(smarthost.port, pki.ca_file))
        for n in range(4):
            send(relay.port, f"refused-login-{n}")
        wait_until(lambda: relay.status()["relays"].get("isp:office@example.test", {}).get("state") == "auth_failed",
                   30, what="the account to show auth_failed")
        # Observe for a few backoff periods (min_backoff 1 s): a paused account is not retried.
        watch_until = time.monotonic() + 3.0
        wait_until(lambda: time.monotonic() > watch_until, 10, what="the observation window")
        assert 1 <= len(smarthost.auth_attempts) <= 2          # concurrency 2: at most one per slot
        assert all(in_tls for _, _, in_tls in smarthost.auth_attempts)
        items = relay.queue()
        assert len(items) == 4 and smarthost.messages == []
        assert any(i["last_error"].startswith("435 4.7.8 SASL authentication failed") for i in items)
    never_bounced(relay)


def test_smarthost_starttls_response_injection_is_discarded_and_mail_goes_out_in_step(relay_factory, peers_loop, pki):
    """Plaintext behind the 220 to STARTTLS (a MITM's "250" for the EHLO we send inside TLS)
    must be thrown away: read as a reply, it would shift every later reply by one."""
    inject = b"250-raw.test\r\n250 AUTH PLAIN\r\n235 2.7.0 Authentication successful\r\n"
    with RawSmarthost(peers_loop, tls=pki.server_context("inject"), inject=inject) as smarthost:
        relay = relay_factory(tls_relay_config(smarthost.port, pki.ca_file))
        send(relay.port, "after-injection")
        got = smarthost.wait_messages(1)
        wait_until(lambda: relay.queue() == [], 30, what="the queue to empty")
        assert [message_id(t.content) for t in got] == ["<after-injection@lan.test>"]
        assert smarthost.auth == [("office@example.test", True)]
    assert "status=deferred" not in relay.log()
