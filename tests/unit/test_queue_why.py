"""`queue why`: the reason a deferred message waits comes from its state file's `wait`, the
account's entry in the status file and the budget history, never from the text of a reply."""

from mta_lite.commands.why import explain
from mta_lite.envelope import Envelope
from mta_lite.queue import WAIT_BUDGET, MessageState, Spool
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
