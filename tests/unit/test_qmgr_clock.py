"""The clock rules (qmgr/clock.py) and the queue manager while the clock is not set: mail for
TLS relays waits with `clock not set`, no connection, no pause, no bounce, and goes out when
the clock is set; the lifetime counts from the effective arrival. Fake clock, no sleeps."""

import json
import logging
import os
import random

from mta_lite.qmgr.clock import (CHECK_INTERVAL_S, NOT_SET, OK, SAVE_INTERVAL_S, STEP_SLACK_S, ClockRecord, ClockWatch,
                                 effective_arrival, observe, read_record)
from mta_lite.qmgr import QueueManager
from mta_lite.queue import WAIT_CLOCK

from tests.support.qmgr import T0, FakeClock, async_test, defer_all, result_for, running
from tests.support.waiting import wait_until_async

BUILD = 1_000_000.0
DAY = 86400.0


# ---------------------------------------------------------------- the pure rules
def test_clock_below_the_build_time_is_not_set():
    record = observe(ClockRecord(), 10.0, BUILD)
    assert record.state == NOT_SET and record.since == 10.0 and record.last_seen == 0.0


def test_clock_below_the_last_time_seen_is_not_set_even_after_the_build_time():
    seen = observe(ClockRecord(), BUILD + 5 * DAY, BUILD)
    assert seen.state == OK
    assert observe(seen, BUILD + DAY, BUILD).state == NOT_SET


def test_first_good_reading_marks_stamps_before_the_build_time_as_suspect():
    record = observe(ClockRecord(), BUILD + 100, BUILD)
    assert (record.state, record.last_seen, record.good_since, record.suspect_before) == (
        OK, BUILD + 100, BUILD + 100, BUILD)


def test_clock_found_good_again_counts_suspect_arrivals_from_that_moment():
    seen = observe(ClockRecord(), BUILD + 5 * DAY, BUILD)
    lost = observe(seen, 60.0, BUILD)                          # a power cut: back at 1970
    back = observe(lost, BUILD + 6 * DAY, BUILD)               # NTP answered
    assert back.state == OK and back.good_since == BUILD + 6 * DAY
    assert back.suspect_before == BUILD + 5 * DAY - STEP_SLACK_S   # the floor at that moment
    assert effective_arrival(70.0, back) == BUILD + 6 * DAY    # accepted while not set
    assert effective_arrival(BUILD + 6 * DAY + 9, back) == BUILD + 6 * DAY + 9


def test_clock_stepped_back_a_little_by_ntp_stays_set():
    seen = observe(ClockRecord(), BUILD + DAY, BUILD)
    assert observe(seen, BUILD + DAY - 2.5, BUILD).state == OK
    assert observe(seen, BUILD + DAY - STEP_SLACK_S - 1, BUILD).state == NOT_SET


def test_good_clock_only_moves_last_seen_forward():
    record = observe(observe(ClockRecord(), BUILD + 50, BUILD), BUILD + 70, BUILD)
    assert record.last_seen == BUILD + 70 and record.good_since == BUILD + 50


# ---------------------------------------------------------------- the record on disk
def test_torn_or_garbled_record_counts_as_absent(tmp_path, caplog):
    path = tmp_path / "clock.json"
    for data in (b'{"last_seen": 17', b"\x00\xff garbage", b'{"last_seen": "soon"}', b'[1, 2]',
                 b'{"last_seen": 1e400}', b'{"state": "maybe"}'):
        path.write_bytes(data)
        assert read_record(str(path)) == ClockRecord(), data
    assert "clock record" in caplog.text


def test_torn_record_still_catches_a_clock_at_1970(tmp_path):
    path = tmp_path / "clock.json"
    path.write_bytes(b'{"last_se')
    watch = ClockWatch(str(path), clock=FakeClock(60.0), build_time=BUILD)
    watch.check()
    assert not watch.is_set()


def test_record_is_written_rarely_and_at_a_change(tmp_path):
    path = str(tmp_path / "clock.json")
    clock = FakeClock(BUILD + 10)
    watch = ClockWatch(path, clock=clock, build_time=BUILD)
    watch.check()
    assert json.loads(open(path).read())["last_seen"] == BUILD + 10       # the first run
    for _ in range(100):                                                   # a check a second
        clock.advance(1.0)
        watch.check()
    assert json.loads(open(path).read())["last_seen"] == BUILD + 10       # not written again
    clock.advance(SAVE_INTERVAL_S)
    watch.check()
    assert json.loads(open(path).read())["last_seen"] == clock()
    clock.now = 60.0                                                       # power cut
    watch.check()
    assert json.loads(open(path).read())["state"] == NOT_SET              # a change: at once


def test_unwritable_record_is_logged_and_the_watch_goes_on(tmp_path, caplog):
    path = str(tmp_path / "missing-dir" / "clock.json")
    watch = ClockWatch(path, clock=FakeClock(BUILD + 1), build_time=BUILD)
    watch.check()
    assert watch.is_set() and "cannot write the clock record" in caplog.text


# ---------------------------------------------------------------- the queue manager
@async_test
async def test_tls_mail_waits_for_the_clock_without_a_connection_then_goes_out(caplog):
    caplog.set_level(logging.INFO)
    async with running(build_time=T0 + DAY) as h:           # the clock reads a day too early
        queue_id = h.queue()
        await h.start()
        await h.settle()
        assert h.pool.calls == [] and h.where(queue_id) == "deferred"
        state = h.spool.load_state(queue_id)
        assert state.wait == WAIT_CLOCK and state.attempts == 0
        assert state.last_error.startswith("clock not set: it reads ")
        assert f"{queue_id}: to=<bob@example.org>, relay=none" in caplog.text
        assert "dsn=4.3.0, status=deferred (clock not set: it reads " in caplog.text
        snap = h.mgr.snapshot()
        assert snap["clock"] == {"state": NOT_SET, "trusted_floor": T0 + DAY, "since": T0}
        assert snap["accounts"]["isp"]["state"] == "ok"                 # no pause (S5 untouched)
        assert h.sleep.delays[-1] <= CHECK_INTERVAL_S                   # it looks again soon
        h.clock.now = T0 + DAY + 60                                     # NTP set the clock
        h.sleep.ring()                                                  # the short timer fires
        await wait_until_async(lambda: h.pool.calls)
        await h.settle()
        assert [c.recipients for c in h.pool.calls] == [["bob@example.org"]]
        assert h.where(queue_id) is None
        assert h.mgr.snapshot()["clock"]["state"] == OK
        assert "clock is set: 1 message waiting for it go out now" in caplog.text


@async_test
async def test_mail_for_a_relay_without_tls_goes_out_while_the_clock_is_not_set():
    async with running(build_time=T0 + DAY, relays={"isp": {"host": "smtp.isp.example", "tls": "none"}},
                       senders=[]) as h:
        queue_id = h.queue()
        await h.start()
        await h.settle()
        assert len(h.pool.calls) == 1 and h.where(queue_id) is None


@async_test
async def test_mail_accepted_at_1970_does_not_bounce_as_old_once_the_clock_is_set():
    async with running(build_time=T0 - DAY) as h:
        h.clock.now = 3600.0                                 # booted at 1970
        queue_id = h.queue()
        h.pool.respond = lambda call: defer_all(call) if call.sender else result_for(call.recipients, {})
        await h.start()
        await h.settle()
        assert h.pool.calls == []
        h.clock.now = T0                                     # set: the stamp is 53 years old
        h.sleep.ring()
        await wait_until_async(lambda: h.pool.calls)
        await h.settle()
        assert len(h.pool.calls) == 1 and h.where(queue_id) == "deferred"
        h.clock.now = T0 + h.cfg.queue.lifetime_s - 60       # not yet five days since it was set
        h.mgr.flush()
        await h.settle()
        assert len(h.pool.calls) == 2 and h.where(queue_id) == "deferred"
        h.clock.now = T0 + h.cfg.queue.lifetime_s + 1        # five days after the clock was set
        h.mgr.flush()
        await h.settle()
        assert h.where(queue_id) is None                     # the rule still ends in an expiry
        [dsn] = [c for c in h.pool.calls if c.sender == ""]
        assert b"Status: 4.4.7" in dsn.content


@async_test
async def test_clock_set_while_the_manager_was_down_releases_the_waiting_mail_at_start():
    async with running(build_time=T0 + DAY) as h:
        queue_id = h.queue()
        await h.start()
        await h.settle()
        await h.stop()
        assert h.spool.load_state(queue_id).wait == WAIT_CLOCK and h.pool.calls == []
        with open(os.path.join(h.spool.root, "state", "clock.json")) as handle:
            assert json.load(handle)["state"] == NOT_SET
        h.clock.now = T0 + 2 * DAY                           # restarted after NTP set the clock
        h.mgr = QueueManager(h.cfg, h.spool, h.pool, clock=h.clock, rng=random.Random(7),
                             sleep=h.sleep, build_time=T0 + DAY)
        await h.start()
        await h.settle()
        assert [c.recipients for c in h.pool.calls] == [["bob@example.org"]]
        assert h.where(queue_id) is None
