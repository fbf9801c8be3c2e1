"""Per-account behaviour (S5): a refused login pauses only that account, one probe per pause,
the pause doubles; concurrency per account; snapshot()."""

import asyncio

from mta_lite.qmgr.backoff import AUTH_PAUSE_MIN_S
from mta_lite.commands.why import explain
from mta_lite.reply import Reply
from mta_lite.status import StatusSnapshot
from mta_lite.smarthost.result import DeliveryResult

from tests.support.qmgr import R535, T0, async_test, result_for, running
from tests.support.waiting import wait_until_async

WORK = "work:alice@work.example"


def _refuse_work(call):
    if call.account == WORK:
        return DeliveryResult.transient(call.recipients, R535, "smtp.work.example[192.0.2.9]:587",
                                        auth_failed=True)
    return result_for(call.recipients, {})


def _work_calls(h):
    return [c for c in h.pool.calls if c.account == WORK]


async def _yield_a_while(n=50):
    for _ in range(n):
        await asyncio.sleep(0)


@async_test
async def test_auth_failure_pauses_only_that_account_and_others_keep_delivering():
    async with running() as h:
        h.pool.respond = _refuse_work
        w1 = h.queue(sender="me@work.example")
        other = h.queue(sender="alice@example.com")
        w2 = h.queue(sender="you@work.example")
        await h.start()
        await h.settle()
        assert h.where(other) is None                           # isp delivered
        assert len(_work_calls(h)) == 1                         # one login attempt, not one per message
        assert h.where(w1) == h.where(w2) == "deferred"         # 535 defers, never bounces
        paused_until = T0 + AUTH_PAUSE_MIN_S
        for queue_id in (w1, w2):
            assert h.spool.load_state(queue_id).next_attempt >= paused_until
        [tried] = _work_calls(h)
        first, second = (w1, w2) if tried.sender == "me@work.example" else (w2, w1)
        assert h.spool.load_state(first).last_error == "535 5.7.8 authentication failed"
        assert "delivery temporarily suspended" in h.spool.load_state(second).last_error
        assert h.spool.load_state(second).attempts == 0         # nothing was tried for it
        snap = h.mgr.snapshot()["accounts"]
        assert (snap[WORK]["state"], snap[WORK]["paused_until"]) == ("auth_failed", paused_until)
        assert snap[WORK]["last_error"] == "535 5.7.8 authentication failed"
        assert (snap["isp"]["state"], snap["isp"]["sent"]) == ("ok", 1)
        # later mail for the paused account is deferred without a login attempt
        w3 = h.queue(sender="me@work.example")
        h.mgr.mail_arrived()
        await h.settle()
        assert len(_work_calls(h)) == 1 and h.where(w3) == "deferred"


RELAYS_3 = {"isp": {"host": "smtp.isp.example", "concurrency": 3},
            "work": {"host": "smtp.work.example", "username": "alice@work.example",
                     "password": "pw-1", "concurrency": 3}}


@async_test
async def test_exactly_one_attempt_when_the_pause_expires_and_the_pause_doubles_on_failure():
    async with running(relays=RELAYS_3) as h:             # 3 connections allowed, still one probe
        h.pool.respond = _refuse_work
        ids = [h.queue(sender=f"u{i}@work.example") for i in range(3)]
        await h.start()
        await h.settle()
        assert len(_work_calls(h)) == 3                         # in flight together before the 535
        h.clock.advance(AUTH_PAUSE_MIN_S + 1)
        h.mgr.rescan()
        await h.settle()
        assert len(_work_calls(h)) == 4                         # one probe, still refused
        account = h.mgr.snapshot()["accounts"][WORK]
        assert account["paused_until"] == h.clock() + 2 * AUTH_PAUSE_MIN_S
        assert account["auth_failed_since"] == T0               # the first refusal, for the status page
        h.clock.advance(2 * AUTH_PAUSE_MIN_S + 1)
        h.pool.respond = lambda call: result_for(call.recipients, {})
        h.mgr.rescan()
        await h.settle()
        assert len(_work_calls(h)) == 7                         # the probe succeeded, the rest follow
        assert all(h.where(q) is None for q in ids)
        assert h.mgr.snapshot()["accounts"][WORK]["state"] == "ok"
        assert h.mgr.snapshot()["accounts"][WORK]["auth_failed_since"] is None


@async_test
async def test_concurrent_refusals_double_the_pause_once():
    async with running(relays=RELAYS_3) as h:
        h.pool.hold = True
        h.pool.respond = _refuse_work
        for i in range(3):
            h.queue(sender=f"u{i}@work.example")
        await h.start()
        await wait_until_async(lambda: len(_work_calls(h)) == 3)
        h.pool.release()
        await h.settle()
        assert h.mgr.accounts.get(WORK).auth_failures == 1
        assert h.mgr.snapshot()["accounts"][WORK]["paused_until"] == T0 + AUTH_PAUSE_MIN_S


@async_test
async def test_flush_ends_a_pause_early_but_lets_only_one_probe_through():
    async with running() as h:
        h.pool.respond = _refuse_work
        for i in range(3):
            h.queue(sender=f"u{i}@work.example")
        await h.start()
        await h.settle()
        h.mgr.flush()
        await h.settle()
        assert len(_work_calls(h)) == 2


@async_test
async def test_account_concurrency_limits_parallel_deliveries():
    async with running() as h:
        h.pool.hold = True
        work = [h.queue(sender=f"u{i}@work.example") for i in range(4)]      # concurrency 1
        isp = [h.queue(sender=f"p{i}@example.com") for i in range(4)]        # concurrency 2
        await h.start()
        await wait_until_async(lambda: len(h.pool.calls) == 3)
        await _yield_a_while()
        assert len(_work_calls(h)) == 1 and len(h.pool.calls) == 3
        h.pool.release()
        await h.settle()
        assert all(h.where(q) is None for q in work + isp)


@async_test
async def test_snapshot_lists_every_configured_account_with_totals():
    async with running() as h:
        await h.start()
        await h.settle()
        snap = h.mgr.snapshot()
        assert set(snap["accounts"]) == {"isp", WORK}
        assert snap["accounts"]["isp"] == {"state": "ok", "sent": 0, "deferred": 0, "bounced": 0,
                                           "last_error": "", "paused_until": None, "concurrency": 2, "site_down": False,
                                           "throttled_until": None, "unreachable_since": None, "auth_failed_since": None,
                                           "sent_last_hour": 0, "sent_last_day": 0,
                                           "max_per_hour": 0, "max_per_day": 0, "rate_delay": 0.0}
        assert snap["totals"]["sent"] == 0 and snap["totals"]["in_flight"] == 0


R_REFUSED = Reply(451, "4.4.1", "connect to smtp.work.example[192.0.2.9]:587: Connection refused")


def _work_down(call):
    if call.account == WORK:
        return DeliveryResult.transient(call.recipients, R_REFUSED)
    return result_for(call.recipients, {})


@async_test
async def test_smarthost_not_answering_gets_one_probe_per_pause_not_one_connection_per_message():
    """Postfix's dead destination: a smarthost that is down is not hammered by the backlog."""
    async with running(relays=RELAYS_3) as h:
        h.pool.respond = _work_down
        ids = [h.queue(sender=f"u{i}@work.example") for i in range(8)]
        other = h.queue(sender="alice@example.com")
        await h.start()
        await h.settle()
        tried = len(_work_calls(h))
        assert 1 <= tried <= 3, "only the deliveries already in flight together connected"
        assert h.where(other) is None                           # another account is not affected
        states = [h.spool.load_state(q) for q in ids]
        suspended = [s for s in states if s.attempts == 0]
        assert len(suspended) == 8 - tried
        assert all(s.last_error == "451 4.4.1 delivery temporarily suspended: connect to "
                   "smtp.work.example[192.0.2.9]:587: Connection refused" for s in suspended)
        account = h.mgr.snapshot()["accounts"][WORK]
        min_backoff = h.mgr.cfg.queue.min_backoff_s
        assert account["site_down"] and account["paused_until"] == T0 + min_backoff
        waiting = next(q for q, s in zip(ids, states) if s.attempts == 0)
        line = explain(h.cfg, h.spool, waiting, h.clock(), StatusSnapshot(running=True, relays={WORK: account}))
        assert f"account {WORK} paused until " in line and "its smarthost did not answer" in line
        h.clock.advance(2 * min_backoff)                        # past every retry time (jitter)
        h.mgr.rescan()
        await h.settle()
        assert len(_work_calls(h)) == tried + 1, "one probe while the smarthost is still down"
        h.clock.advance(2 * min_backoff)
        h.pool.respond = lambda call: result_for(call.recipients, {})
        h.mgr.rescan()
        await h.settle()
        assert all(h.where(q) is None for q in ids)             # the probe got through, the rest followed
        assert not h.mgr.snapshot()["accounts"][WORK]["site_down"]
