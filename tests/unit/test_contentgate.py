"""ContentGate: large messages share a byte budget in arrival order; small ones never wait;
a cancelled or failed delivery gives its share back."""

import asyncio

import pytest

from mta_lite.qmgr.contentgate import ContentGate

MIB = 1024 * 1024


async def _deliver(gate: ContentGate, name: str, size: int, log: list, release: asyncio.Event):
    async with gate.hold(size):
        log.append(("start", name))
        await release.wait()
    log.append(("end", name))


def _run(coro):
    return asyncio.run(coro)


def test_large_messages_beyond_the_budget_wait_their_turn_in_order():
    async def scenario():
        gate, log, release = ContentGate(budget_bytes=8 * MIB, large_bytes=MIB), [], asyncio.Event()
        tasks = [asyncio.create_task(_deliver(gate, f"m{i}", 5 * MIB, log, release)) for i in range(3)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        started_first = [name for event, name in log if event == "start"]
        release.set()
        await asyncio.gather(*tasks)
        return started_first, log, gate
    started_first, log, gate = _run(scenario())
    assert started_first == ["m0"]                  # 5 + 5 MiB is over the 8 MiB budget
    assert [name for event, name in log if event == "start"] == ["m0", "m1", "m2"]
    assert (gate.held, gate.holders) == (0, 0)


def test_a_message_bigger_than_the_budget_still_goes_alone():
    async def scenario():
        gate, log, release = ContentGate(budget_bytes=8 * MIB, large_bytes=MIB), [], asyncio.Event()
        release.set()
        await asyncio.wait_for(_deliver(gate, "huge", 50 * MIB, log, release), 5)
        return log
    assert _run(scenario()) == [("start", "huge"), ("end", "huge")]


def test_small_messages_pass_while_large_ones_wait():
    async def scenario():
        gate, log = ContentGate(budget_bytes=8 * MIB, large_bytes=MIB), []
        big, small = asyncio.Event(), asyncio.Event()
        small.set()
        tasks = [asyncio.create_task(_deliver(gate, f"big{i}", 6 * MIB, log, big)) for i in range(2)]
        await asyncio.sleep(0)
        await asyncio.wait_for(_deliver(gate, "small", 20 * 1024, log, small), 5)
        snapshot = list(log)
        big.set()
        await asyncio.gather(*tasks)
        return snapshot
    assert _run(scenario()) == [("start", "big0"), ("start", "small"), ("end", "small")]


def test_a_cancelled_waiter_and_a_failed_holder_give_their_share_back():
    async def scenario():
        gate, log, release = ContentGate(budget_bytes=8 * MIB, large_bytes=MIB), [], asyncio.Event()
        first = asyncio.create_task(_deliver(gate, "first", 6 * MIB, log, release))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(_deliver(gate, "waiting", 6 * MIB, log, release))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        first.cancel()                              # the holder's delivery ends in an error
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        await asyncio.wait_for(_deliver(gate, "after", 6 * MIB, log, release), 5)
        return log, gate
    log, gate = _run(scenario())
    assert ("start", "waiting") not in log and ("end", "after") in log
    assert (gate.held, gate.holders) == (0, 0)
