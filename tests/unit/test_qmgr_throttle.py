"""The queue manager with budgets, rate_delay, fair order, recipient_limit, reload, health.
Fake clock, manual sleep, fake smarthost pool."""

import io
import json
import logging
import os

import tomli_w

from mta_lite.config.load import parse_config
from mta_lite.process.qmgr_service import QmgrService
from mta_lite.maillog import SecretFilter, config_secrets
from mta_lite.qmgr.accounts import UNREACHABLE_AFTER_S
from mta_lite.qmgr.backoff import AUTH_PAUSE_MIN_S
from mta_lite.qmgr.budget import HOUR_S
from mta_lite.commands.why import explain
from mta_lite.queue import WAIT_BUDGET
from mta_lite.reply import Reply
from mta_lite.smarthost.result import DeliveryResult
from mta_lite.status import StatusSnapshot

from tests.support.qmgr import ADMIN, DEFER, R451, R535, T0, async_test, result_for, running
from tests.support.waiting import wait_until_async

WORK = "work:alice@work.example"


def relays(isp: dict | None = None, work: dict | None = None) -> dict:
    return {"isp": {"host": "smtp.isp.example", "concurrency": 2, **(isp or {})},
            "work": {"host": "smtp.work.example", "username": "alice@work.example",
                     "password": "pw-1", "concurrency": 1, **(work or {})}}


def _queue_spaced(h, n, sender, **kw):
    ids = []
    for _ in range(n):
        ids.append(h.queue(sender=sender, **kw))
        h.clock.advance(0.001)           # queue IDs sort by arrival
    return ids


@async_test
async def test_max_per_hour_delivers_the_budget_and_defers_the_rest_to_their_slots():
    async with running(relays=relays(isp={"max_per_hour": 2})) as h:
        ids = _queue_spaced(h, 5, "alice@example.com")
        await h.start()
        await h.settle()
        assert len(h.pool.calls) == 2
        held = [q for q in ids if h.where(q) == "deferred"]
        assert len(held) == 3
        states = [h.spool.load_state(q) for q in held]
        assert all(s.last_error.startswith("451 4.7.0 deferred: account isp over max_per_hour=2 "
                                           "(2 sent in the last hour), next slot at ") for s in states)
        assert all(s.attempts == 0 for s in states)           # not a failure, no backoff
        slots = sorted(s.next_attempt for s in states)
        # Each gets the slot it would have in turn (both sends were at one fake instant, so
        # two slots free together, the third a window later): not all due at once.
        assert slots[0] == slots[1] >= T0 + HOUR_S and slots[2] == slots[0] + HOUR_S
        snap = h.mgr.snapshot()["accounts"]["isp"]
        assert snap["state"] == "throttled" and snap["throttled_until"] == slots[0]
        assert snap["sent_last_hour"] == 2 and h.dsns() == []
        h.clock.advance(slots[0] - h.clock())
        h.mgr.rescan()
        await h.settle()
        assert len(h.pool.calls) == 4                            # two slots came free
        h.clock.advance(HOUR_S)
        h.mgr.rescan()
        await h.settle()
        assert all(h.where(q) is None for q in ids) and len(h.pool.calls) == 5


@async_test
async def test_budget_of_one_account_does_not_throttle_another():
    async with running(relays=relays(work={"max_per_hour": 1})) as h:
        work = _queue_spaced(h, 3, "me@work.example")
        isp = _queue_spaced(h, 3, "alice@example.com")
        await h.start()
        await h.settle()
        assert all(h.where(q) is None for q in isp)
        assert sorted(h.where(q) or "sent" for q in work) == ["deferred", "deferred", "sent"]


@async_test
async def test_budget_survives_a_restart_of_the_queue_manager():
    async with running(relays=relays(isp={"max_per_hour": 2})) as h:
        _queue_spaced(h, 2, "alice@example.com")
        await h.start()
        await h.settle()
        await h.stop()
        saved = json.loads(open(os.path.join(h.spool.root, "state", "budgets.json")).read())
        assert len(saved["accounts"]["isp"]["sent"]) == 2
        h.mgr = type(h.mgr)(h.cfg, h.spool, h.pool, clock=h.clock, sleep=h.sleep)
        later = h.queue(sender="alice@example.com")
        await h.start()
        await h.settle()
        assert len(h.pool.calls) == 2 and h.where(later) == "deferred"


@async_test
async def test_transaction_the_smarthost_refused_does_not_use_the_budget():
    async with running(relays=relays(isp={"max_per_hour": 1})) as h:
        h.pool.respond = lambda call: DeliveryResult.transient(call.recipients, Reply(451, "4.3.0", "later"))
        h.queue()
        await h.start()
        await h.settle()
        assert h.mgr.snapshot()["accounts"]["isp"]["sent_last_hour"] == 0


@async_test
async def test_rate_delay_starts_the_next_delivery_only_after_the_gap():
    async with running(relays=relays(isp={"rate_delay": "10s"})) as h:
        _queue_spaced(h, 3, "alice@example.com")
        await h.start()
        await h.settle()
        assert len(h.pool.calls) == 1
        h.clock.advance(9)
        naps = len(h.sleep.delays)
        h.sleep.ring()
        await wait_until_async(lambda: len(h.sleep.delays) > naps)         # the next pass ran
        assert len(h.pool.calls) == 1
        assert 0 < h.sleep.delays[-1] <= 1.0                    # it sleeps until the gap is over
        h.clock.advance(1)
        h.sleep.ring()
        await wait_until_async(lambda: len(h.pool.calls) == 2)


@async_test
async def test_noisy_sender_does_not_starve_a_single_message():
    async with running(relays=relays(isp={"concurrency": 1})) as h:
        h.pool.hold = True
        _queue_spaced(h, 30, "scanner@lan.test")
        await h.start()
        await wait_until_async(lambda: len(h.pool.calls) == 1)
        single = h.queue(sender="printer@lan.test")
        h.mgr.mail_arrived()
        h.pool.release()                                        # from now on every delivery goes through
        await wait_until_async(lambda: len(h.pool.calls) >= 4)
        senders = [c.sender for c in h.pool.calls]
        assert "printer@lan.test" in senders[:4], senders       # within the next few slots
        h.pool.release()
        await h.settle()
        assert h.where(single) is None


@async_test
async def test_notice_to_the_admin_goes_ahead_of_a_backlog():
    async with running(relays=relays(isp={"concurrency": 1})) as h:
        h.pool.hold = True
        _queue_spaced(h, 10, "scanner@lan.test")
        await h.start()
        await wait_until_async(lambda: len(h.pool.calls) == 1)
        _queue_spaced(h, 3, "nas@lan.test")
        notice = h.queue(sender="", rcpts=(ADMIN,), is_bounce=True)
        h.mgr.mail_arrived()
        h.pool.release()
        await wait_until_async(lambda: len(h.pool.calls) >= 3)
        assert "" in [c.sender for c in h.pool.calls[:3]]
        await h.settle()
        assert h.where(notice) is None


@async_test
async def test_recipients_over_the_limit_go_in_several_transactions():
    async with running(relays=relays(isp={"recipient_limit": 50})) as h:
        rcpts = tuple(f"r{i}@example.org" for i in range(120))
        queue_id = h.queue(rcpts=rcpts)
        await h.start()
        await h.settle()
        assert [len(c.recipients) for c in h.pool.calls] == [50, 50, 20]
        assert [r for c in h.pool.calls for r in c.recipients] == list(rcpts)
        assert h.where(queue_id) is None


@async_test
async def test_split_message_over_budget_keeps_done_recipients_and_waits_for_a_slot():
    async with running(relays=relays(isp={"recipient_limit": 2, "max_per_hour": 2})) as h:
        queue_id = h.queue(rcpts=tuple(f"r{i}@example.org" for i in range(5)))
        await h.start()
        await h.settle()
        state = h.spool.load_state(queue_id)
        assert len(h.pool.calls) == 2 and len(state.done) == 4 and h.where(queue_id) == "deferred"
        assert "over max_per_hour=2" in state.last_error and state.next_attempt == T0 + HOUR_S
        assert state.wait == WAIT_BUDGET
        h.clock.advance(HOUR_S)
        h.mgr.rescan()
        await h.settle()
        assert h.where(queue_id) is None and h.pool.calls[-1].recipients == ["r4@example.org"]


@async_test
async def test_split_message_deferred_by_the_smarthost_and_over_budget_waits_for_its_backoff():
    """A recipient the smarthost deferred adds a backoff: the message waits for it (and for
    the slot), so its wait is the backoff's, and the last reply is the smarthost's."""
    async with running(relays=relays(isp={"recipient_limit": 2, "max_per_hour": 2})) as h:
        h.pool.respond = lambda call: result_for(call.recipients, {"r0@example.org": (DEFER, R451)})
        queue_id = h.queue(rcpts=tuple(f"r{i}@example.org" for i in range(5)))
        await h.start()
        await h.settle()
        state = h.spool.load_state(queue_id)
        assert len(h.pool.calls) == 2 and h.where(queue_id) == "deferred"
        assert (state.wait, state.last_error) == ("", "451 4.3.0 later")
        assert state.next_attempt >= T0 + HOUR_S


def _refuse_work(call):
    if call.account == WORK:
        return DeliveryResult.transient(call.recipients, R535, "smtp.work.example[192.0.2.9]:587",
                                        auth_failed=True)
    return result_for(call.recipients, {})


@async_test
async def test_reload_with_new_credentials_resumes_a_paused_account_at_once():
    async with running(relays=relays(work={"max_per_hour": 10})) as h:
        h.pool.respond = _refuse_work
        ids = _queue_spaced(h, 2, "me@work.example")
        await h.start()
        await h.settle()
        assert h.mgr.snapshot()["accounts"][WORK]["state"] == "auth_failed"
        budget = h.mgr.accounts.get(WORK).budget
        budget.take(h.clock())                                  # one earlier send on record
        same = parse_config({**_data(h), "relays": relays(work={"max_per_hour": 10})}, h.cfg.path)
        h.mgr.reconfigure(same)                                 # same password: still paused
        await h.settle()
        assert len(h.pool.calls) == 1
        h.pool.respond = lambda call: result_for(call.recipients, {})
        fixed = parse_config({**_data(h), "relays": relays(work={"password": "pw-2", "max_per_hour": 10})},
                             h.cfg.path)
        h.mgr.reconfigure(fixed)
        await h.settle()
        assert all(h.where(q) is None for q in ids)
        assert h.clock() < T0 + AUTH_PAUSE_MIN_S                # long before the pause would end
        account = h.mgr.accounts.get(WORK)
        assert account.budget is budget and budget.used(h.clock(), HOUR_S) == 3


def _data(h) -> dict:
    return {"hostname": h.cfg.hostname, "spool_dir": h.root, "admin_address": ADMIN,
            "default_relay": "isp", "senders": [{"address": "@work.example", "relay": "work"}],
            "queue": {"min_backoff": "5m", "max_backoff": "1h"}}


@async_test
async def test_smarthost_without_answer_for_ten_minutes_shows_unreachable():
    async with running() as h:
        h.pool.respond = lambda call: DeliveryResult.transient(
            call.recipients, Reply(451, "4.4.1", "connect to smtp.isp.example[192.0.2.1]:587: Connection refused"))
        h.queue()
        await h.start()
        await h.settle()
        assert h.mgr.snapshot()["accounts"]["isp"]["state"] == "deferring"
        h.clock.advance(UNREACHABLE_AFTER_S)
        snap = h.mgr.snapshot()["accounts"]["isp"]
        assert snap["state"] == "unreachable" and snap["unreachable_since"] == T0


def test_qmgr_reload_with_a_broken_config_keeps_the_running_one(tmp_path, caplog):
    spool = str(tmp_path / "spool")
    data = {"spool_dir": spool, "admin_address": "a@example.com",
            "relays": {"isp": {"host": "smtp.isp.example", "max_per_hour": 5}}}
    path = tmp_path / "mta-lite.toml"
    path.write_text(tomli_w.dumps(data))
    service = QmgrService(parse_config(data, str(path)))
    data["relays"]["isp"]["max_per_hour"] = "lots"
    path.write_text(tomli_w.dumps(data))
    caplog.set_level(logging.INFO)
    assert service.reload() is False
    assert service.cfg.relays["isp"].max_per_hour == 5
    [line] = [r.getMessage() for r in caplog.records if "reload" in r.getMessage()]
    assert line == ("reload failed, keeping the running configuration: "
                    f"{path}: relays.isp.max_per_hour: expected int, got 'lots'")
    data["relays"]["isp"]["max_per_hour"] = 7
    path.write_text(tomli_w.dumps(data))
    assert service.reload() is True and service.qmgr.accounts.get("isp").budget.limits.max_per_hour == 7


@async_test
async def test_queue_why_names_the_budget_the_pause_and_the_last_reply():
    async with running(relays=relays(isp={"max_per_hour": 1})) as h:
        h.pool.respond = _refuse_work
        _queue_spaced(h, 2, "alice@example.com")
        work = h.queue(sender="me@work.example")
        await h.start()
        await h.settle()
        await h.stop()                                          # writes budgets.json
        held = [q for q in h.spool.list("deferred") if q != work][0]
        status = StatusSnapshot(running=True, relays=h.mgr.snapshot()["accounts"])
        line = explain(h.cfg, h.spool, held, h.clock(), status)
        assert line.startswith(f"{held}: deferred: account isp over max_per_hour=1 (1 sent in the last hour), "
                               "next slot at ") and "; next try " in line and "\n" not in line
        line = explain(h.cfg, h.spool, work, h.clock(), status)
        assert f"account {WORK} paused until " in line
        assert "last reply: 535 5.7.8 authentication failed" in line
        h.spool.move(work, "deferred", "hold")
        assert explain(h.cfg, h.spool, work, h.clock(), StatusSnapshot()).startswith(
            f"{work}: on hold by the administrator until `queue release {work}`")


def test_qmgr_reload_masks_the_new_password_in_the_log(tmp_path):
    data = {"spool_dir": str(tmp_path / "spool"), "admin_address": "a@example.com",
            "relays": {"isp": {"host": "smtp.isp.example", "username": "u@isp.example", "password": "old-pw-1"}}}
    path = tmp_path / "mta-lite.toml"
    path.write_text(tomli_w.dumps(data))
    service = QmgrService(parse_config(data, str(path)))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter(config_secrets(service.cfg)))
    logging.getLogger().addHandler(handler)
    try:
        data["relays"]["isp"]["password"] = "new-pw-2"
        path.write_text(tomli_w.dumps(data))
        assert service.reload() is True
        logging.getLogger("mta_lite.test").warning("leak? %s %s", "new-pw-2", "old-pw-1")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "pw-" not in stream.getvalue() and "leak? ******** ********" in stream.getvalue()
