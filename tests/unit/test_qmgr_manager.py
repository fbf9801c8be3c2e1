"""QueueManager: pickup, per-recipient results (G3), retries, expiry, corrupt files, admin
actions during delivery, stop(), the doorbell. Fake clock, seeded rng, fake smarthost pool."""

import asyncio
import logging
import os

from mta_lite.errors import SpoolError
from mta_lite.qmgr import ring
from mta_lite.queue import doorbell
from mta_lite.qmgr.manager import RESCAN_INTERVAL_S
from mta_lite.smarthost.result import DeliveryResult

from tests.support.qmgr import CONTENT, DEFER, R451, SENT, async_test, defer_all, result_for, running
from tests.support.waiting import wait_until_async


@async_test
async def test_sent_message_is_removed_and_logged(caplog):
    caplog.set_level(logging.INFO)
    async with running() as h:
        queue_id = h.queue()
        await h.start()
        await h.settle()
        assert h.where(queue_id) is None
        [call] = h.pool.calls
        assert (call.account, call.sender, call.recipients, call.content) == (
            "isp", "alice@example.com", ["bob@example.org"], CONTENT)
        log = caplog.text
        assert f"{queue_id}: from=<alice@example.com>, size={len(CONTENT)}, nrcpt=1 (queue active)" in log
        assert f"{queue_id}: to=<bob@example.org>, relay=smtp.isp.example[192.0.2.1]:587" in log
        assert "status=sent (250 2.0.0 Ok: queued as 4Xyz)" in log and f"{queue_id}: removed" in log
        assert not os.path.exists(os.path.join(h.spool.root, "state", queue_id + ".json"))


@async_test
async def test_incoming_is_picked_up_in_arrival_order():
    async with running() as h:
        ids = []
        for i in range(5):
            ids.append(h.queue(rcpts=(f"r{i}@example.org",)))
            h.clock.advance(0.001)
        await h.start()
        await h.settle()
        assert [c.recipients[0] for c in h.pool.calls] == [f"r{i}@example.org" for i in range(5)]
        assert all(h.where(q) is None for q in ids)


@async_test
async def test_partial_delivery_records_done_and_retries_only_the_pending_recipient():
    async with running() as h:
        h.pool.respond = lambda call: result_for(call.recipients, {"carol@example.org": (DEFER, R451)})
        queue_id = h.queue(rcpts=("bob@example.org", "carol@example.org"))
        await h.start()
        await h.settle()
        assert h.where(queue_id) == "deferred"
        state = h.spool.load_state(queue_id)
        assert state.done == {"bob@example.org": SENT} and state.attempts == 1
        assert state.last_error == "451 4.3.0 later"
        assert 270 <= state.next_attempt - h.clock() <= 330          # min_backoff 5m, +-10 %
        h.pool.respond = lambda call: result_for(call.recipients, {})
        h.clock.advance(state.next_attempt - h.clock() + 1)
        h.mgr.mail_arrived()
        await h.settle()
        assert [c.recipients for c in h.pool.calls] == [
            ["bob@example.org", "carol@example.org"], ["carol@example.org"]]
        assert h.where(queue_id) is None


@async_test
async def test_deferred_message_is_not_retried_before_its_time():
    async with running() as h:
        h.pool.respond = defer_all
        queue_id = h.queue()
        await h.start()
        await h.settle()
        h.clock.advance(200)                    # less than min_backoff * 0.9
        h.mgr.rescan()
        await h.settle()
        assert len(h.pool.calls) == 1 and h.where(queue_id) == "deferred"
        h.clock.advance(200)
        h.mgr.mail_arrived()
        await h.settle()
        assert len(h.pool.calls) == 2
        assert h.spool.load_state(queue_id).attempts == 2


@async_test
async def test_transient_failure_after_lifetime_bounces_as_expired(caplog):
    caplog.set_level(logging.INFO)
    async with running() as h:
        h.pool.respond = lambda call: defer_all(call) if call.sender else result_for(call.recipients, {})
        queue_id = h.queue(arrival=h.clock() - h.cfg.queue.lifetime_s - 1)
        await h.start()
        await h.settle()
        assert h.where(queue_id) is None
        assert f"{queue_id}: from=<alice@example.com>, status=expired, returned to sender" in caplog.text
        assert f"delay={int(h.cfg.queue.lifetime_s) + 1}, dsn=4.3.0, status=deferred" in caplog.text
        [dsn_call] = [c for c in h.pool.calls if c.sender == ""]
        assert dsn_call.recipients == ["alice@example.com"]
        assert b"Status: 4.4.7" in dsn_call.content and b"Action: failed" in dsn_call.content
        assert b"Diagnostic-Code: smtp; 451 4.3.0 later" in dsn_call.content


@async_test
async def test_corrupt_file_in_incoming_is_quarantined_and_the_manager_keeps_going(caplog):
    async with running() as h:
        bad = h.queue()
        path = h.spool.path("incoming", bad)
        with open(path, "r+b") as handle:
            handle.seek(-20, os.SEEK_END)
            handle.write(b"X")
        good = h.queue(rcpts=("carol@example.org",))
        await h.start()
        await h.settle()
        assert os.path.exists(h.spool.path("corrupt", bad)) and h.where(bad) is None
        assert h.where(good) is None and [c.recipients for c in h.pool.calls] == [["carol@example.org"]]
        assert f"{bad}: corrupt queue file moved to corrupt/" in caplog.text
        assert h.mgr.snapshot()["totals"]["corrupt"] == 1


@async_test
async def test_message_deleted_during_delivery_is_dropped_without_crash():
    async with running() as h:
        h.pool.hold = True
        queue_id = h.queue()
        await h.start()
        await wait_until_async(lambda: h.pool.calls)
        assert h.spool.remove(queue_id)
        h.pool.release()
        await h.settle()
        assert h.where(queue_id) is None and h.dsns() == []
        second = h.queue()                       # still running
        h.mgr.mail_arrived()
        await h.settle()
        assert h.where(second) is None


@async_test
async def test_message_held_during_delivery_keeps_its_recipient_results():
    async with running() as h:
        h.pool.hold = True
        h.pool.respond = lambda call: result_for(call.recipients, {"carol@example.org": (DEFER, R451)})
        queue_id = h.queue(rcpts=("bob@example.org", "carol@example.org"))
        await h.start()
        await wait_until_async(lambda: h.pool.calls)
        assert h.spool.move(queue_id, "active", "hold")
        h.pool.release()
        await h.settle()
        assert h.where(queue_id) == "hold"
        assert h.spool.load_state(queue_id).done == {"bob@example.org": SENT}
        h.clock.advance(10 * 3600)
        h.mgr.flush()
        await h.settle()
        assert len(h.pool.calls) == 1            # a held message is never delivered


@async_test
async def test_stop_with_a_delivery_in_flight_leaves_it_recoverable():
    async with running() as h:
        h.pool.hold = True
        queue_id = h.queue()
        await h.start()
        await wait_until_async(lambda: h.pool.calls)
        await h.stop(grace_s=0.01)
        assert h.where(queue_id) == "active"
        assert not os.path.exists(h.spool.doorbell_path)
        assert h.spool.recover()["requeued"] == 1 and h.where(queue_id) == "incoming"


@async_test
async def test_stop_waits_for_a_delivery_that_finishes_within_the_grace_time():
    async with running() as h:
        h.pool.hold = True
        queue_id = h.queue()
        await h.start()
        await wait_until_async(lambda: h.pool.calls)
        stopping = asyncio.create_task(h.stop(grace_s=5))
        await wait_until_async(lambda: h.mgr._stopping)
        h.pool.release()
        await stopping
        assert h.where(queue_id) is None


@async_test
async def test_ring_on_the_doorbell_triggers_delivery():
    async with running() as h:
        await h.start()
        await h.settle()
        queue_id = h.queue()                    # written by "another process": no ring
        await h.settle()
        assert h.pool.calls == []
        assert ring(h.spool.root, doorbell.NEW_MAIL) is True
        await wait_until_async(lambda: h.where(queue_id) is None)
        assert len(h.pool.calls) == 1


@async_test
async def test_flush_retries_deferred_messages_now():
    async with running() as h:
        h.pool.respond = defer_all
        queue_id = h.queue()
        await h.start()
        await h.settle()
        h.pool.respond = lambda call: result_for(call.recipients, {})
        assert ring(h.spool.doorbell_path, doorbell.FLUSH) is True
        await wait_until_async(lambda: h.where(queue_id) is None)
        assert len(h.pool.calls) == 2


@async_test
async def test_periodic_rescan_finds_mail_whose_ring_was_lost():
    async with running() as h:
        await h.start()
        await h.settle()
        assert h.sleep.delays and h.sleep.delays[-1] <= RESCAN_INTERVAL_S
        queue_id = h.queue()
        h.clock.advance(RESCAN_INTERVAL_S)
        h.sleep.ring()
        await wait_until_async(lambda: h.where(queue_id) is None)


@async_test
async def test_smarthost_client_exception_defers_and_the_manager_survives(caplog):
    async with running() as h:
        def broken(call):
            raise RuntimeError("bug in client")
        h.pool.respond = broken
        queue_id = h.queue()
        await h.start()
        await h.settle()
        assert h.where(queue_id) == "deferred"
        assert h.spool.load_state(queue_id).last_error == "451 4.3.0 Error: internal error, please try again later"
        assert "bug in client" in caplog.text


@async_test
async def test_recipients_recorded_done_are_not_resent_after_a_restart():
    async with running() as h:
        queue_id = h.queue(rcpts=("bob@example.org", "carol@example.org"))
        state = h.spool.load_state(queue_id)
        state.done["bob@example.org"] = SENT      # recorded before a crash
        h.spool.save_state(state)
        await h.start()
        await h.settle()
        assert [c.recipients for c in h.pool.calls] == [["carol@example.org"]]


@async_test
async def test_spool_failure_while_settling_keeps_the_message(monkeypatch):
    async with running() as h:
        h.pool.respond = defer_all
        queue_id = h.queue()

        def disk_full(state):
            raise SpoolError(28, "No space left on device")
        monkeypatch.setattr(h.spool, "save_state", disk_full)
        await h.start()
        await h.settle()
        assert h.where(queue_id) == "deferred"   # parked for a later retry, not lost
        h.clock.advance(h.cfg.queue.min_backoff_s)
        monkeypatch.undo()
        h.pool.respond = lambda call: result_for(call.recipients, {})
        h.mgr.mail_arrived()
        await h.settle()
        assert h.where(queue_id) is None


@async_test
async def test_unknown_result_for_a_recipient_counts_as_deferred():
    async with running() as h:
        h.pool.respond = lambda call: DeliveryResult("none", ())
        queue_id = h.queue()
        await h.start()
        await h.settle()
        assert h.where(queue_id) == "deferred" and h.spool.load_state(queue_id).done == {}
        assert h.spool.load_state(queue_id).last_error == "451 4.3.0 Error: no result from the smarthost client"


@async_test
async def test_on_the_loops_own_clock_the_manager_naps_until_due_or_until_rung():
    async with running() as h:
        mgr = h.mgr
        mgr.sleep = asyncio.sleep          # as in the daemon: the wait between passes is timed
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(mgr._idle(0.2), 5)
        napped = loop.time() - started
        loop.call_later(0.05, mgr.mail_arrived)
        await asyncio.wait_for(mgr._idle(3600), 5)      # a ring ends the nap (else: TimeoutError)
        assert napped >= 0.2 and mgr._work.is_set()
