"""The whole path against a real Postfix smarthost (STARTTLS + SASL), LAN clients smtplib and swaks.

Peer: Postfix 3.7 as ISP-like smarthost (tests/support/peers.py: PostfixSmarthost); its Received
headers and maillog show which SASL account sent each message.
"""

import base64
import os
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from tests.support.peers import swaks
from tests.support.relay import ALICE_PASSWORD, PASSWORD, postfix_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def send(port: int, sender: str, rcpt: str, subject: str = "test") -> str:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, rcpt, subject
    msg["Message-ID"] = make_msgid(domain="lan.test")
    msg.set_content("Hello through mta-lite.\n.leading dot line\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.send_message(msg, from_addr=sender, to_addrs=[rcpt])
    return msg["Message-ID"]


def by_message_id(smarthost, message_ids, timeout=60):
    def found():
        got = {d.message_id: d for d in smarthost.delivered() if d.message_id in message_ids}
        return got if len(got) == len(message_ids) else None
    return wait_until(found, timeout, what=f"smarthost delivery of {message_ids}")


@pytest.mark.deployed
def test_two_senders_are_relayed_with_their_own_accounts(smarthost, relay_factory):
    relay = relay_factory(postfix_config(smarthost))
    alice = send(relay.port, "alice@example.com", "friend@remote.example", "from alice")
    scanner = send(relay.port, "scanner@lan.test", "office@remote.example", "from the scanner")
    got = by_message_id(smarthost, {alice, scanner})
    assert got[alice].sasl_username == "alice@example.test"
    assert got[scanner].sasl_username == "office@example.test"
    assert b"\n.leading dot line\n" in got[alice].raw
    log = relay.log()
    assert "status=sent" in log and f"relay=127.0.0.1[127.0.0.1]:{smarthost.port}" in log


@pytest.mark.deployed
def test_messages_in_a_row_share_one_connection_without_rset(smarthost, relay_factory):
    """Postfix's client checks a cached connection with RSET before each reuse; mta-lite
    reuses one right after a completed transaction without it (a round trip less per
    message). The smarthost's own count of the session's commands shows it."""
    before = smarthost.maillog.stat().st_size if smarthost.maillog.exists() else 0
    config = postfix_config(smarthost)
    config["relays"]["isp"]["concurrency"] = 1           # one connection, the messages in turn
    relay = relay_factory(config)
    ids = {send(relay.port, "scanner@lan.test", f"office{n}@remote.example") for n in range(3)}
    by_message_id(smarthost, ids)
    relay.stop()                        # QUIT on the pooled connection: Postfix logs the session

    def sessions():
        new = smarthost.maillog.read_bytes()[before:].decode(errors="replace")
        found = [line for line in new.splitlines() if "disconnect from" in line and " mail=" in line]
        return found or None
    lines = wait_until(sessions, 30, what="the smarthost's disconnect line")
    assert len(lines) == 1, lines
    assert "mail=3 rcpt=3 data=3" in lines[0] and "rset=" not in lines[0], lines[0]


def test_swaks_client_is_relayed(smarthost, relay_factory):
    relay = relay_factory(postfix_config(smarthost))
    subject = "swaks " + make_msgid(domain="swaks.test")
    result = swaks("--server", f"127.0.0.1:{relay.port}", "--from", "nas@lan.test",
                   "--to", "someone@remote.example", "--header", f"Subject: {subject}")
    assert result.returncode == 0, result.stdout
    got = wait_until(lambda: [d for d in smarthost.delivered() if subject.encode() in d.raw], 60,
                     what="the swaks message at the smarthost")
    assert got[0].sasl_username == "office@example.test"


def test_wrong_password_defers_and_never_bounces(smarthost, relay_factory):
    relay = relay_factory(postfix_config(smarthost, password="wrong-" + PASSWORD))
    send(relay.port, "printer@lan.test", "someone@remote.example")

    def deferred():
        items = relay.queue()
        return items if items and items[0]["state"] == "deferred" else None
    items = wait_until(deferred, 60, what="the message to be deferred")
    # Postfix's smtp_sasl_auth_soft_bounce: the 535 is recorded inside a 4xx deferral.
    assert items[0]["last_error"].startswith("4") and "535" in items[0]["last_error"]
    assert "status=bounced" not in relay.log()
    assert len(items) == 1      # no bounce was queued for the auth failure
    wait_until(lambda: relay.status()["relays"].get("isp:office@example.test", {}).get("state") == "auth_failed",
               10, what="status to show the account as auth_failed")


def test_no_secret_in_logs_status_or_spool(smarthost, relay_factory):
    relay = relay_factory(postfix_config(smarthost, password="wrong-" + PASSWORD))
    send(relay.port, "alice@example.com", "friend@remote.example")
    send(relay.port, "printer@lan.test", "someone@remote.example")
    wait_until(lambda: relay.queue() and all(i["attempts"] for i in relay.queue()), 60, what="attempts")
    show = relay.cli("config", "show").stdout.decode()
    relay.stop()
    secrets = {PASSWORD, ALICE_PASSWORD}
    forms = set(secrets)
    for secret in secrets:
        for user in ("office@example.test", "alice@example.test"):
            forms.add(base64.b64encode(f"\0{user}\0{secret}".encode()).decode())
        forms.add(base64.b64encode(secret.encode()).decode())
    haystacks = {"log": relay.log(), "config show": show, "status": relay.cli("status", "--json").stdout.decode()}
    for root, _, files in os.walk(relay.spool):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                haystacks[name] = handle.read().decode("latin-1")
    for where, text in haystacks.items():
        for form in forms:
            assert form not in text, f"secret found in {where}"
