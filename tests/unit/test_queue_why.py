"""`queue why`: the reason a deferred message waits comes from its state file's `wait`, the
account's entry in the status file and the budget history, never from the text of a reply."""

from mta_lite.commands.why import explain
from mta_lite.envelope import Envelope
from mta_lite.queue import WAIT_BUDGET, WAIT_CLOCK, MessageState, Spool
from mta_lite.status import StatusSnapshot

from tests.support.qmgr import T0, make_config

BUDGET_REPLY = "451 4.7.0 deferred: account isp over max_per_hour=1 (1 sent in the last hour), next slot at 14:05:00 UTC"


def _deferred(tmp_path, **state) -> tuple:
    spool = Spool(str(tmp_path / "spool")).ensure()
    writer = spool.begin(Envelope("alice@example.com", ["bob@example.org"], "192.0.2.7", "scanner"))
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    queue_id = writer.commit()
    spool.move(queue_id, "incoming", "deferred")
    spool.save_state(MessageState(queue_id, **state))
    return make_config(spool.root), spool, queue_id


def test_why_message_whose_budget_slot_has_come_says_so_without_our_own_reply(tmp_path):
    cfg, spool, queue_id = _deferred(tmp_path, last_error=BUDGET_REPLY, wait=WAIT_BUDGET)
    line = explain(cfg, spool, queue_id, T0, StatusSnapshot(running=True))
    assert line == f"{queue_id}: deferred: account isp was over its budget; its slot has come; next try now"


def test_why_reply_that_merely_reads_like_ours_is_shown_as_the_last_reply(tmp_path):
    cfg, spool, queue_id = _deferred(tmp_path, attempts=1, last_error=BUDGET_REPLY)
    line = explain(cfg, spool, queue_id, T0, StatusSnapshot(running=True))
    assert line == (f"{queue_id}: deferred: retry backoff after 1 failed attempt; "
                    f"last reply: {BUDGET_REPLY}; next try now")


def test_why_paused_account_comes_from_the_status_file(tmp_path):
    cfg, spool, queue_id = _deferred(tmp_path, attempts=2, next_attempt=T0 + 60, last_error="451 4.3.0 later")
    account = {"state": "auth_failed", "paused_until": T0 + 7200}
    line = explain(cfg, spool, queue_id, T0, StatusSnapshot(running=False, relays={"isp": account}))
    assert line.startswith(f"{queue_id}: deferred: account isp paused until ")
    assert "; last reply: 451 4.3.0 later; next try " in line
    assert "refused its login" in line and line.endswith("; the daemon is not running, nothing is tried")


def test_why_message_waiting_for_the_clock_says_the_clock_is_not_set(tmp_path):
    cfg, spool, queue_id = _deferred(tmp_path, last_error="clock not set: it reads ...", wait=WAIT_CLOCK,
                                     next_attempt=T0 + 3600)
    line = explain(cfg, spool, queue_id, 60.0, StatusSnapshot(running=True), build_time=T0)
    assert line.startswith(f"{queue_id}: deferred: the system clock is not set (it reads "
                           "1970-01-01 00:01:00 UTC, earlier than ")
    assert "(this software's release)" in line and "account isp" in line
    assert line.endswith("no connection is made until the clock is set (NTP); next try as soon as it is set")
    assert "last reply" not in line


def test_why_message_waiting_for_a_clock_that_is_set_now_goes_at_once(tmp_path):
    cfg, spool, queue_id = _deferred(tmp_path, last_error="clock not set: it reads ...", wait=WAIT_CLOCK)
    line = explain(cfg, spool, queue_id, T0 + 10, StatusSnapshot(running=False), build_time=T0)
    assert line == (f"{queue_id}: deferred: it waited for the system clock to be set; the clock is set now; "
                    "next try now; the daemon is not running, nothing is tried")


def test_why_clock_record_with_a_later_last_time_seen_names_it(tmp_path):
    cfg, spool, queue_id = _deferred(tmp_path, wait=WAIT_CLOCK)
    with open(tmp_path / "spool" / "state" / "clock.json", "w") as handle:
        handle.write('{"last_seen": %r, "state": "ok", "since": %r, "good_since": %r, "suspect_before": 0}'
                     % (T0 + 500, T0, T0))
    line = explain(cfg, spool, queue_id, T0 + 100, StatusSnapshot(running=True), build_time=T0)
    assert "earlier than 2023-11-14 22:20:40 UTC (the last time this relay saw)" in line   # less the slack
