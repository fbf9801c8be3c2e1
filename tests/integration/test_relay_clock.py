"""C4 end to end: the real daemon with its clock at 1970 defers STARTTLS mail to a real Postfix
smarthost with `clock not set` (no connection, no certificate failure, never a bounce), says
so in `queue why` and the status file, and delivers it within seconds of the clock being set;
`relay test` at 1970 names the clock instead of a certificate failure and connects nowhere.

Peers: Postfix 3.7 as ISP-like smarthost (STARTTLS + SASL), the real `mta-lite serve`,
stdlib smtplib as client, libfaketime (tests/support/faketime.py) for a clock that moves
under the running daemon, and faketime(1) at 1970 for the restart case.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.test_relay_postfix import by_message_id, send
from tests.support import faketime
from tests.support.relay import postfix_config
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not faketime.available(), reason="libfaketime is not installed "
                                 "(tools/install-test-deps.sh installs faketime)")]


@pytest.fixture
def movable_clock():
    clock = faketime.MovableClock("1970-01-01 00:00:00")
    yield clock
    clock.cleanup()


def waiting_for_the_clock(relay) -> dict:
    def found():
        items = relay.queue()
        return items[0] if items and items[0]["last_error"].startswith("clock not set") else None
    return wait_until(found, 60, what="the message to be deferred with `clock not set`")


def connections_from_us(smarthost) -> int:
    return sum(1 for line in smarthost.log_lines() if "postfix/smtpd" in line and " connect from " in line)


def cli_at(relay, env: dict, *args: str) -> str:
    """The relay's command line with the clock the daemon has."""
    result = subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", relay.config_path, *args],
                            env={**os.environ, **env}, capture_output=True, timeout=60, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_clock_not_set_shown(relay, queue_id: str, env: dict) -> None:
    why = cli_at(relay, env, "queue", "why", queue_id)
    assert why.startswith(f"{queue_id}: deferred: the system clock is not set (it reads 1970-01-01 ")
    assert "next try as soon as it is set" in why
    status = wait_until(lambda: relay.status().get("clock", {}).get("state") == "not_set" and relay.status(),
                        30, what="the status file to show the clock not set")
    assert status["clock"]["trusted_floor"] > 1_700_000_000
    # `status` on the daemon's clock: read at another time, its snapshot from 1970 looks stale.
    assert "clock: not set (earlier than " in cli_at(relay, env, "status")


def assert_never_a_certificate_failure_or_bounce(relay) -> None:
    log = relay.log()
    assert "status=bounced" not in log and "expired" not in log
    for failure in ("certificate not verified", "not yet valid", "certificate has expired", "verify failed"):
        assert failure not in log.lower()


@pytest.mark.deployed
def test_relay_at_1970_defers_starttls_mail_until_the_clock_is_set_then_delivers(
        smarthost, relay_factory, movable_clock, deployed):
    relay = relay_factory(postfix_config(smarthost), start=False)
    relay.env = {**(relay.env or os.environ), **movable_clock.env()}
    relay.start()
    before = connections_from_us(smarthost)
    message_id = send(relay.port, "scanner@lan.test", "office@remote.example", "sent at 1970")
    item = waiting_for_the_clock(relay)
    assert item["arrival"] < 86400 and item["attempts"] == 0         # the daemon lives in 1970
    assert item["last_error"].startswith("clock not set: it reads 1970-01-01 ")
    assert f"status=deferred (clock not set: it reads 1970-01-01 " in relay.log()
    assert_clock_not_set_shown(relay, item["id"], movable_clock.env())
    assert connections_from_us(smarthost) == before                   # no connection was made
    set_at = time.monotonic()
    movable_clock.real()                                              # NTP answered
    got = by_message_id(smarthost, {message_id})
    print(f"clock set -> delivered at the smarthost: {time.monotonic() - set_at:.2f} s")
    assert got[message_id].sasl_username == "office@example.test"
    wait_until(lambda: relay.queue() == [], 30, what="the queue to empty")
    assert "clock is set: 1 message waiting for it go out now" in relay.log()
    assert_never_a_certificate_failure_or_bounce(relay)


def test_relay_restarted_with_a_good_clock_delivers_what_waited_for_it(smarthost, relay_factory):
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed")
    relay = relay_factory(postfix_config(smarthost), start=False)
    relay.prefix = ("faketime", "1970-01-01 00:00:00")      # runs from 1970 (a frozen clock hangs asyncio)
    relay.start()
    message_id = send(relay.port, "scanner@lan.test", "office@remote.example", "before the restart")
    item = waiting_for_the_clock(relay)
    relay.stop()
    assert relay.queue()[0]["id"] == item["id"]
    relay.prefix = ()                                       # the next boot: NTP has set the clock
    relay.start()
    by_message_id(smarthost, {message_id})
    wait_until(lambda: relay.queue() == [], 30, what="the queue to empty")
    assert_never_a_certificate_failure_or_bounce(relay)


def test_relay_test_at_1970_says_the_clock_is_not_set_and_connects_nowhere(smarthost, relay_factory):
    """`relay test` by the queue manager's rule: at 1970 it names the clock, not a certificate
    failure, exits 69 and never reaches the smarthost."""
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed")
    relay = relay_factory(postfix_config(smarthost), start=False)
    before = connections_from_us(smarthost)
    result = subprocess.run(["faketime", "1970-01-01 00:00:00", sys.executable, "-m", "mta_lite.cli",
                             "-c", relay.config_path, "relay", "test", "isp"],
                            capture_output=True, timeout=60, text=True)
    assert result.returncode == 69, result.stdout + result.stderr
    first, last = result.stdout.splitlines()
    assert first.startswith("clock: clock not set: it reads 1970-01-01 00:00:0")
    assert "UTC, earlier than 20" in first and "(this software's release)" in first
    assert "certificate cannot be checked until the clock is set (by NTP" in first
    assert last.startswith("relay isp: FAILED at clock")
    for step in ("DNS:", "TCP:", "TLS:", "AUTH:", "verify failed", "expired"):
        assert step not in result.stdout
    time.sleep(1)                        # Postfix would log a connection by now
    assert connections_from_us(smarthost) == before
