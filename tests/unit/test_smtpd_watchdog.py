"""Watchdog: the per-operation timeout of a connection, with one timer for all its
operations. Real event loop, real time (small timeouts); only lower bounds on time."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from mta_lite.smtpd.watchdog import Watchdog

SHORT_S = 0.2
NEVER = 5.0         # a hang would show as this outer TimeoutError, not as a pass


def _run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, NEVER)
    return asyncio.run(bounded())


def test_an_operation_that_waits_its_timeout_raises_timeout_error():
    async def main():
        dog, loop = Watchdog(), asyncio.get_running_loop()
        assert await dog.guard(asyncio.sleep(0.01, "done"), SHORT_S) == "done"
        started = loop.time()
        with pytest.raises(TimeoutError):
            await dog.guard(loop.create_future(), SHORT_S)
        return loop.time() - started
    assert _run(main()) >= SHORT_S


def test_each_operation_gets_its_whole_timeout_from_its_own_start():
    async def main():
        dog, loop = Watchdog(), asyncio.get_running_loop()
        for _ in range(3):                  # busy for most of a timeout, then idle, then again
            await dog.guard(asyncio.sleep(SHORT_S * 0.6), SHORT_S)
            await asyncio.sleep(SHORT_S * 0.6)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await dog.guard(loop.create_future(), SHORT_S)
        return loop.time() - started
    assert _run(main()) >= SHORT_S


def test_a_shorter_timeout_than_the_armed_one_is_kept():
    async def main():
        dog, loop = Watchdog(), asyncio.get_running_loop()
        await dog.guard(asyncio.sleep(0), 3600)          # arms an hour ahead
        with pytest.raises(TimeoutError):
            await dog.guard(loop.create_future(), SHORT_S)
    _run(main())


def test_a_cancellation_by_someone_else_stays_a_cancellation():
    async def main():
        dog, loop = Watchdog(), asyncio.get_running_loop()
        task = asyncio.create_task(dog.guard(loop.create_future(), SHORT_S))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    _run(main())


def test_an_outer_asyncio_timeout_that_ends_first_is_the_outer_ones():
    async def main():
        dog, loop = Watchdog(), asyncio.get_running_loop()
        outer = None
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(SHORT_S) as outer:
                await dog.guard(loop.create_future(), 3600)
        return outer.expired()
    assert _run(main()) is True


def _live_timers(loop) -> int:
    return sum(not handle.cancelled() for handle in loop._scheduled)


def test_the_timer_neither_keeps_a_dropped_watchdog_nor_stays_after_stop():
    async def main():
        loop = asyncio.get_running_loop()
        before = _live_timers(loop)
        dog = Watchdog()
        for _ in range(5):
            await dog.guard(asyncio.sleep(0), SHORT_S)
        armed = _live_timers(loop) - before             # one for all five operations
        dog.stop()
        stopped = _live_timers(loop) - before
        other = Watchdog()
        await other.guard(asyncio.sleep(0), SHORT_S)
        ref = weakref.ref(other)
        del other
        gc.collect()
        dropped = ref() is None
        await asyncio.sleep(SHORT_S * 1.5)              # its timer fires on nothing
        return armed, stopped, dropped
    assert _run(main()) == (1, 0, True)
