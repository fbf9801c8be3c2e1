"""Output rate control end to end: rate_delay, max_per_hour across a restart, two accounts,
fair order, SIGHUP with a broken config.

Peers: an aiosmtpd recorder in its own process (tests/support/recorder.py) that notes the time each
message's DATA ended, for gaps and order; Postfix's smtp-sink (tests/support/peers.py) for counts.
"""

import os
import signal
import smtplib

import pytest
import tomli_w

from tests.support.relay import relay_config
from tests.support.recorder import DeliveryRecorder
from tests.support.waiting import wait_until


pytestmark = pytest.mark.integration


def send_many(port: int, sender: str, n: int, tag: str = "m") -> None:
    """n messages in one SMTP session (what a scanner's burst looks like)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for i in range(n):
            client.sendmail(sender, ["office@remote.example"], f"Subject: {tag} {i}\r\n\r\nbody {i}\r\n")


@pytest.fixture
def recorder(tmp_path):
    with DeliveryRecorder(tmp_path / "recorder") as peer:
        yield peer


def deferred_with(relay, n: int, text: str):
    def check():
        items = [i for i in relay.queue() if i["state"] == "deferred" and text in i["last_error"]]
        return items if len(items) == n else None
    return wait_until(check, 60, what=f"{n} messages deferred with {text!r}")


def test_rate_delay_spaces_deliveries_by_at_least_the_delay(recorder, relay_factory):
    config = relay_config(recorder.port)
    config["relays"]["sink"].update(rate_delay="1s", concurrency=2)
    relay = relay_factory(config)
    send_many(relay.port, "scanner@lan.test", 3)
    times = [r["t"] for r in recorder.wait_for(3)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"rate_delay 1s: gaps between deliveries {[round(g, 3) for g in gaps]} s")
    assert len(times) == 3 and min(gaps) >= 1.0, gaps


def test_max_per_hour_delivers_five_and_holds_the_rest_across_a_restart(sink_factory, relay_factory):
    sink = sink_factory()
    config = relay_config(sink.port)
    config["relays"]["sink"]["max_per_hour"] = 5
    relay = relay_factory(config)
    send_many(relay.port, "scanner@lan.test", 8)
    sink.wait_count(5, timeout=60)
    held = deferred_with(relay, 3, "over max_per_hour=5")
    assert all(i["last_error"].startswith("451 4.7.0 deferred: account sink over max_per_hour=5 "
                                          "(5 sent in the last hour), next slot at ") for i in held)
    why = relay.cli("queue", "why", held[0]["id"]).stdout.decode()
    assert why.startswith(f"{held[0]['id']}: deferred: account sink over max_per_hour=5") and "next try " in why
    status = wait_until(lambda: (s := relay.status()["relays"]["sink"])["state"] == "throttled" and s, 10,
                        what="status throttled")
    assert status["throttled_until"] > status["sent_last_hour"] == 5
    assert "throttled until " in relay.cli("status").stdout.decode()
    relay.stop()
    relay.start()
    assert relay.cli("queue", "flush").returncode == 0          # due now, still over budget
    wait_until(lambda: all(i["next_attempt"] for i in relay.queue()), 60, what="the flushed mail held again")
    assert sink.count() == 5 and len(relay.queue()) == 3
    assert "status=bounced" not in relay.log()


def test_two_accounts_do_not_throttle_each_other(sink_factory, relay_factory):
    small, big = sink_factory(), sink_factory()
    config = relay_config(big.port)
    config["relays"]["small"] = {"host": "127.0.0.1", "port": small.port, "tls": "none", "max_per_hour": 1}
    config["senders"] = [{"address": "@small.lan", "relay": "small"}]
    relay = relay_factory(config)
    send_many(relay.port, "nas@small.lan", 3)
    send_many(relay.port, "scanner@lan.test", 3)
    big.wait_count(3, timeout=60)
    deferred_with(relay, 2, "over max_per_hour=1")
    assert small.count() == 1 and big.count() == 3


def test_single_message_goes_within_a_few_slots_of_a_200_message_backlog(recorder, relay_factory):
    config = relay_config(recorder.port)
    config["relays"]["sink"].update(rate_delay="50ms", concurrency=1)
    relay = relay_factory(config)
    send_many(relay.port, "scanner@lan.test", 200, tag="scan")
    delivered_before = len(recorder.records())
    send_many(relay.port, "printer@lan.test", 1, tag="printer")
    records = wait_until(lambda: (r := recorder.records()) and any(i["subject"] == "printer 0" for i in r) and r,
                         60, what="the printer's message at the recorder")
    position = next(i for i, r in enumerate(records) if r["subject"] == "printer 0")
    backlog = 200 - delivered_before
    print(f"fairness: printer message delivered as #{position + 1}; {delivered_before} scans "
          f"delivered before it was queued, {backlog} still waiting")
    assert backlog > 100                                        # a real backlog was waiting
    assert position <= delivered_before + 3                     # within the next few slots


def test_sighup_with_a_broken_config_keeps_running_and_logs_the_error(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port))
    wait_until(lambda: "daemon started" in relay.log(), 30, what="the queue manager")
    broken = dict(relay.config, relays={"sink": {**relay.config["relays"]["sink"], "max_per_hour": "lots"}})
    with open(relay.config_path, "wb") as handle:
        tomli_w.dump(broken, handle)
    relay.proc.send_signal(signal.SIGHUP)
    line = (f"failed, keeping the running configuration: {relay.config_path}: "
            "relays.sink.max_per_hour: expected int, got 'lots'")
    wait_until(lambda: line in relay.log(), 30, what="the reload error in the log")
    send_many(relay.port, "scanner@lan.test", 1)                # smtpd and qmgr both still work
    sink.wait_count(1, timeout=60)
    log = relay.log()
    assert "replacing smtpd" not in log and "restarting" not in log
    assert relay.proc.poll() is None and os.path.exists(relay.config_path)
