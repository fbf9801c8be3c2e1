"""The queue manager runs pickup: a sendmail submission is delivered on a ring of the doorbell, on the
periodic rescan when no ring came, and a backlog bigger than one run is not left behind."""

import os

from mta_lite.envelope import Envelope
from mta_lite.qmgr import ring
from mta_lite.qmgr.manager import RESCAN_INTERVAL_S
from mta_lite.qmgr.pickup import MAX_FILES_PER_RUN
from mta_lite.queue.spool import MAILDROP

from tests.support.qmgr import CONTENT, async_test, running
from tests.support.waiting import wait_until_async


def submit(h, rcpt="ops@remote.example") -> str:
    writer = h.spool.begin(Envelope("cron@lan.test", [rcpt], "127.0.0.1", "localhost", True, "8BITMIME"),
                           target=MAILDROP, mode=0o640)
    writer.write(CONTENT)
    return writer.commit()


def maildrop(h) -> list[str]:
    return os.listdir(os.path.join(h.spool.root, MAILDROP))


@async_test
async def test_submission_is_delivered_after_a_ring():
    async with running() as h:
        await h.start()
        await h.settle()
        submit(h)
        assert ring(h.spool.doorbell_path) is True          # what sendmail does after commit
        await wait_until_async(lambda: len(h.pool.calls) == 1)
        await h.settle()
        [call] = h.pool.calls
        assert (call.sender, call.recipients, call.content) == (
            "cron@lan.test", ["ops@remote.example"], CONTENT)
        assert maildrop(h) == [] and h.spool.list("incoming") == [] and h.spool.list("active") == []


@async_test
async def test_submission_is_delivered_by_the_periodic_rescan_without_a_ring():
    async with running() as h:
        await h.start()
        await h.settle()
        submit(h)                                           # e.g. the ring was not permitted
        h.clock.advance(RESCAN_INTERVAL_S)
        h.sleep.ring()
        await wait_until_async(lambda: len(h.pool.calls) == 1)
        await h.settle()
        assert maildrop(h) == []


@async_test
async def test_submission_made_while_stopped_is_delivered_at_start():
    async with running() as h:
        submit(h)
        await h.start()
        await wait_until_async(lambda: len(h.pool.calls) == 1)
        await h.settle()
        assert maildrop(h) == []


@async_test
async def test_backlog_larger_than_one_run_is_all_delivered_after_one_ring():
    async with running() as h:
        await h.start()
        await h.settle()
        count = MAX_FILES_PER_RUN + 5
        for i in range(count):
            submit(h, f"r{i}@remote.example")
        h.mgr.mail_arrived()
        await wait_until_async(lambda: len(h.pool.calls) == count)
        await h.settle()
        assert maildrop(h) == [] and sorted(c.recipients[0] for c in h.pool.calls) == sorted(
            f"r{i}@remote.example" for i in range(count))


@async_test
async def test_bad_submission_does_not_stop_the_queue_manager():
    async with running() as h:
        await h.start()
        await h.settle()
        os.mkfifo(os.path.join(h.spool.root, MAILDROP, "fifo"))
        with open(os.path.join(h.spool.root, MAILDROP, "junk"), "wb") as handle:
            handle.write(b"not a queue file")
        submit(h)
        h.mgr.mail_arrived()
        await wait_until_async(lambda: len(h.pool.calls) == 1)
        await h.settle()
        assert maildrop(h) == [] and len(os.listdir(os.path.join(h.spool.root, "corrupt"))) == 1
