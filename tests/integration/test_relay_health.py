"""Account health against a real Postfix smarthost (STARTTLS + SASL): `relay test`, one login
per pause after a 535, and SIGHUP with fixed credentials resuming a paused account.

Peer: Postfix 3.7 as ISP-like smarthost (tests/support/peers.py: PostfixSmarthost); its maillog
counts the SASL logins (auth_attempts()), its Maildir shows what was delivered.
"""

import signal
import smtplib
import time
from email.utils import make_msgid

import pytest
import trustme

from tests.support.peers import free_port
from tests.support.relay import PASSWORD
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ACCOUNT = "isp:office@example.test"


def isp_config(smarthost, **relay) -> dict:
    return {
        "default_relay": "isp",
        "relays": {"isp": {"host": "127.0.0.1", "port": smarthost.port, "tls": "starttls",
                           "ca_file": str(smarthost.ca_file), "username": "office@example.test",
                           "password": PASSWORD, "timeout": "10s", **relay}},
        "queue": {"min_backoff": "1s", "max_backoff": "2s"},
    }


def send(port: int, sender: str = "printer@lan.test") -> str:
    message_id = make_msgid(domain="lan.test")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, ["someone@remote.example"],
                        f"Message-ID: {message_id}\r\nSubject: health\r\n\r\nhello\r\n")
    return message_id


def all_deferred(relay, n: int, suspended: int = 0):
    """n messages deferred, `suspended` of them without an attempt (account paused)."""
    def check():
        items = relay.queue()
        ok = len(items) == n and all(i["state"] == "deferred" for i in items) and sum(
            "delivery temporarily suspended" in i["last_error"] for i in items) == suspended
        return items if ok else None
    return wait_until(check, 60, what=f"{n} deferred messages")


def test_relay_test_against_a_working_account_passes_every_step(smarthost, relay_factory):
    relay = relay_factory(isp_config(smarthost), start=False)
    queued_before = sum("/cleanup[" in line for line in smarthost.log_lines())
    result = relay.cli("relay", "test", "isp")
    out = result.stdout.decode()
    assert result.returncode == 0, out
    for step in ("DNS: ok", "TCP: ok", "greeting: ok", "TLS: ok, certificate verified for 127.0.0.1",
                 "EHLO: ok", "AUTH: ok, logged in as office@example.test",
                 "relay isp: ok, 127.0.0.1:"):
        assert step in out, out
    assert PASSWORD not in out
    assert sum("/cleanup[" in line for line in smarthost.log_lines()) == queued_before   # no mail sent


def _other_ca(tmp_path) -> str:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("wrong CA", "TLS: certificate verify failed: unable to get local issuer certificate"
                 " — set ca_file or fix the server"),
    ("wrong password", "AUTH: login refused for office@example.test: SASL authentication failed;"),
    ("closed port", "TCP: connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
                    " — check host, port and any firewall in between"),
])
def test_relay_test_names_what_is_wrong_and_exits_69(smarthost, relay_factory, tmp_path, case, expected):
    port = free_port() if case == "closed port" else smarthost.port
    relay_keys = {"wrong CA": {"ca_file": _other_ca(tmp_path)},
                  "wrong password": {"password": "wrong-" + PASSWORD},
                  "closed port": {"port": port}}[case]
    relay = relay_factory(isp_config(smarthost, **relay_keys), start=False)
    result = relay.cli("relay", "test", "isp")
    out = result.stdout.decode()
    assert result.returncode == 69, out
    assert expected.format(port=port) in out, out
    if case == "wrong password":
        [line] = [line for line in out.splitlines() if line.startswith("AUTH: ")]
        assert line.endswith(" — check username and password"), line
    assert "relay isp: FAILED at " in out and PASSWORD not in out


def test_535_costs_one_login_per_pause_not_one_per_message(smarthost, relay_factory):
    before = smarthost.auth_attempts()
    relay = relay_factory(isp_config(smarthost, password="wrong-" + PASSWORD, concurrency=1))
    for _ in range(3):
        send(relay.port)
    all_deferred(relay, 3, suspended=2)
    wait_until(lambda: smarthost.auth_attempts() == before + 1, 30, what="the refused login in the maillog")
    for _ in range(2):                                          # later mail: no login at all
        send(relay.port)
    all_deferred(relay, 5, suspended=4)
    assert smarthost.auth_attempts() == before + 1
    status = wait_until(lambda: (s := relay.status()["relays"][ACCOUNT])["state"] == "auth_failed" and s,
                        10, what="status auth_failed")
    assert 3500 < status["paused_until"] - time.time() <= 3600     # the first pause: an hour
    # flush ends the pause early, as a pause's expiry would: exactly one login again, and a
    # second refusal doubles the pause.
    assert relay.cli("queue", "flush").returncode == 0
    wait_until(lambda: (s := relay.status()["relays"][ACCOUNT])["paused_until"] - time.time() > 7000 and s,
               30, what="the doubled pause")
    wait_until(lambda: all(i["next_attempt"] for i in relay.queue()), 30, what="all re-deferred")
    wait_until(lambda: smarthost.auth_attempts() >= before + 2, 30, what="the probe in the maillog")
    assert smarthost.auth_attempts() == before + 2
    assert "status=bounced" not in relay.log()
    why = relay.cli("queue", "why", relay.queue()[0]["id"]).stdout.decode()
    assert f"account {ACCOUNT} paused until " in why and "SASL authentication failed" in why


@pytest.mark.deployed
def test_sighup_with_fixed_credentials_resumes_a_paused_account(smarthost, relay_factory, deployed):
    relay = relay_factory(isp_config(smarthost, password="wrong-" + PASSWORD))
    wait_until(lambda: "daemon started" in relay.log(), 30, what="the queue manager")
    message_id = send(relay.port)
    all_deferred(relay, 1)
    wait_until(lambda: relay.status()["relays"][ACCOUNT]["state"] == "auth_failed", 10, what="auth_failed")
    relay.config["relays"]["isp"]["password"] = PASSWORD
    relay.write_config()
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(d.message_id == message_id for d in smarthost.delivered()), 60,
               what="delivery after the reload")
    # One user: the queue manager reloads in place. Deployed: the master starts a new one
    # as root (it may no longer read the password file), which retries the held mail.
    assert ("reload: 1 message held by a refused login tried again" if deployed else
            f"account {ACCOUNT}: credentials changed, login pause ended") in relay.log()
    wait_until(lambda: relay.status()["relays"][ACCOUNT]["state"] == "ok", 10, what="status ok")
