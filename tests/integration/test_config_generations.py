"""C1/C2 on the running relay: `config apply` installs a config that the relay takes up by itself,
a config that breaks delivery is rolled back with `config rollback`, and a broken file never
replaces the running configuration.

Peer: Postfix 3.7 as ISP-like smarthost (tests/support/peers.py: PostfixSmarthost, STARTTLS + SASL);
its Maildir shows what was delivered. The relay is the real `mta-lite serve` (tests/support/relay.py).
"""

import smtplib
from email.utils import make_msgid

import pytest
import tomli_w

from mta_lite.status import read_status
from tests.integration.test_relay_health import isp_config
from tests.support.peers import free_port, smtp_probe
from tests.support.relay import PASSWORD
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ACCOUNT = "isp:office@example.test"


def send(port: int) -> str:
    message_id = make_msgid(domain="lan.test")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("printer@lan.test", ["someone@remote.example"],
                        f"Message-ID: {message_id}\r\nSubject: generations\r\n\r\nhello\r\n")
    return message_id


def apply(relay, config: dict):
    result = relay.cli("config", "apply", "-", stdin=tomli_w.dumps(config).encode())
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def running_digest(relay) -> str:
    """From the status file itself: `mta-lite status` needs a config that loads."""
    return read_status(relay.spool).config


def delivered(smarthost, message_id: str) -> bool:
    return any(item.message_id == message_id for item in smarthost.delivered())


def test_config_apply_on_running_relay_takes_effect_without_restart(smarthost, relay_factory):
    relay = relay_factory(isp_config(smarthost))
    master, old_port, log_end = relay.master_pid(), relay.port, relay.log_size()
    new_port = free_port()      # a port named in the new config: the relay moves to it
    config = {**relay.config, "listen": [{"address": f"127.0.0.1:{new_port}"}]}
    status, out = apply(relay, config)
    assert status == 0, out
    digest = out.rsplit("config ", 1)[1].strip(")\n")
    assert relay.listening_since(log_end, 20) == [new_port]        # the new smtpd serves there
    wait_until(lambda: running_digest(relay) == digest, 20, what="the queue manager on the new config")
    assert smtp_probe(old_port) is None, "the old port must be closed after the reload"
    message_id = send(relay.port)
    wait_until(lambda: delivered(smarthost, message_id), 60, what="delivery after the reload")
    assert relay.master_pid() == master and relay.proc.poll() is None


def test_config_rollback_after_wrong_password_resumes_delivery(smarthost, relay_factory):
    """C2: the new config is valid but breaks delivery (wrong smarthost password); rolling
    back to the previous generation brings the deferred mail out."""
    relay = relay_factory(isp_config(smarthost))
    good = running_digest(relay) or wait_until(lambda: running_digest(relay), 20, what="status")
    broken = isp_config(smarthost, password=PASSWORD + "-typo")
    status, out = apply(relay, {**relay.config, **broken})
    assert status == 0, out
    wait_until(lambda: running_digest(relay) not in ("", good), 20, what="the broken config in use")
    message_id = send(relay.port)
    wait_until(lambda: relay.status()["relays"].get(ACCOUNT, {}).get("state") == "auth_failed", 60,
               what="the account paused after 535")
    assert not delivered(smarthost, message_id)
    result = relay.cli("config", "rollback")
    assert result.returncode == 0, result.stderr.decode()
    # The first generation is the hand-written file with its inline password: installed
    # again, the password moves to secrets/, so the bytes (and the digest) differ.
    assert "generation 3 installed" in result.stdout.decode()
    rolled_back = result.stdout.decode().rsplit("config ", 1)[1].strip(")\n")
    wait_until(lambda: delivered(smarthost, message_id), 60, what="delivery after the rollback")
    wait_until(lambda: running_digest(relay) == rolled_back, 20, what="status showing the rolled-back config")
    with open(relay.config_path, "rb") as handle:
        assert PASSWORD.encode() not in handle.read()


def test_config_broken_hand_edit_keeps_running_config(smarthost, relay_factory):
    """C1: a file that does not validate is never used; mail keeps flowing on the old one."""
    relay = relay_factory(isp_config(smarthost))
    digest = wait_until(lambda: running_digest(relay), 20, what="status")
    with open(relay.config_path, "ab") as handle:
        handle.write(b'\n[relays.second]\nhost = "smtp.example.test"\nport = "587"\n')
    wait_until(lambda: "reload (config file changed) failed, keeping the running configuration" in relay.log(),
               20, what="the rejected reload")
    assert "relays.second.port" in relay.log()
    message_id = send(relay.port)
    wait_until(lambda: delivered(smarthost, message_id), 60, what="delivery on the running config")
    assert running_digest(relay) == digest
    assert relay.proc.poll() is None
