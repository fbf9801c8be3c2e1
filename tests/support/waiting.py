"""waiting — the one way a test waits for a condition: poll it against a deadline.

    wait_until(predicate, timeout, what)          in plain tests and helper threads
    await wait_until_async(predicate, timeout, what)   in asyncio tests (yields to the loop)

Both call `predicate` until it returns something truthy and return that value, so a wait can
hand over what it waited for (`items = wait_until(lambda: relay.queue(), 30, "a message")`).
When `timeout` seconds pass first they raise TimeoutError naming `what`, which is all a reader
of the failure gets: say what was awaited ("the queue to empty"), not "condition".
Guarantees: the predicate is called at least once, also with a zero timeout; the deadline is on
the monotonic clock (a test that moves the wall clock cannot stretch or cut it short).
Never: sleep in order to let something happen (every other sleep in tests/ is a defect, or a
deliberate pause that says why), or import pytest (tools/bench uses this module too).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, TypeVar

_T = TypeVar("_T")
# How often a condition is polled: often enough that a test does not wait noticeably
# longer than its condition takes, rarely enough not to steal the relay's CPU on 2 cores.
POLL_INTERVAL_S = 0.05
# The asyncio twin polls faster: its conditions are in-process and cost nothing to check.
ASYNC_POLL_INTERVAL_S = 0.001


def wait_until(predicate: Callable[[], _T], timeout: float = 30.0, what: str = "the condition",
               *, interval: float = POLL_INTERVAL_S) -> _T:
    """The first truthy value of `predicate()`; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], _T], timeout: float = 5.0, what: str = "the condition",
                           *, interval: float = ASYNC_POLL_INTERVAL_S) -> _T:
    """wait_until for asyncio tests: between polls the event loop runs the code under test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
