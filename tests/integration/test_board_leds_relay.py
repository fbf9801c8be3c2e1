"""S5 on the LEDs, end to end: a smarthost refuses the relay's login with 535, and the status
file the real daemon writes lights the red alert LED (MockFactory pins).

Peers: Postfix 3.7 as ISP-like smarthost (STARTTLS + SASL; tests/support/peers.py PostfixSmarthost),
the real `mta-lite serve` (tests/support/relay.py), stdlib smtplib as client. The LEDs read the spool
through mta_lite.status.read_status(), exactly as the board daemon does.
"""

import smtplib

import pytest
from gpiozero.pins.mock import MockFactory

from mta_lite_board.leds import ALERT_PIN, MAIL_PIN, POWER_PIN, StatusLeds, update_leds
from mta_lite_board.patterns import OFF, ON, SLOW_BLINK, LedState
from mta_lite.status import read_status
from tests.support.relay import PASSWORD
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

ACCOUNT = "isp:office@example.test"


def wrong_password_config(smarthost) -> dict:
    return {
        "default_relay": "isp",
        "relays": {"isp": {"host": "127.0.0.1", "port": smarthost.port, "tls": "starttls",
                           "ca_file": str(smarthost.ca_file), "username": "office@example.test",
                           "password": "wrong-" + PASSWORD, "timeout": "10s"}},
        "queue": {"min_backoff": "1s", "max_backoff": "2s"},
    }


def account_state(spool: str) -> str:
    snapshot = read_status(spool)
    return snapshot.relays.get(ACCOUNT, {}).get("state", "") if snapshot.running else ""


def test_s5_smarthost_refusing_login_lights_the_alert_led(smarthost, relay_factory):
    relay = relay_factory(wrong_password_config(smarthost))
    factory = MockFactory()
    with StatusLeds(pin_factory=factory) as leds:
        wait_until(lambda: account_state(relay.spool) == "ok", 10, what="the first status file")
        state = update_leds(leds, lambda: read_status(relay.spool))
        assert state == LedState(power=ON)       # no mail, no login tried yet: all is well
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.sendmail("scanner@lan.test", ["ops@remote.example"], "Subject: s5 leds\r\n\r\nhello\r\n")
        wait_until(lambda: account_state(relay.spool) == "auth_failed", 12, what="status auth_failed")
        state = update_leds(leds, lambda: read_status(relay.spool))
        assert state == LedState(power=ON, mail=ON, alert=ON)    # the message waits, deferred
        assert factory.pin(ALERT_PIN).state is True
        assert factory.pin(POWER_PIN).state is True and factory.pin(MAIL_PIN).state is True
        relay.stop()
        state = update_leds(leds, lambda: read_status(relay.spool))
        # Stopped: power blinks, the accounts' state is unknown, the queued message still counts.
        assert state == LedState(power=SLOW_BLINK, mail=ON, alert=OFF)
    assert "status=bounced" not in relay.log()
