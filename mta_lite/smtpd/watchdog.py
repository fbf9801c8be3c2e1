"""watchdog — one timer per connection for the per-read timeout, instead of one per read.

asyncio.timeout arms a timer (a TimerHandle pushed on the loop's heap) and cancels it for
every read and every drain that can block: about a dozen per message on a connection that
sends one command at a time. A Watchdog notes when the operation it guards began, and
keeps one timer that looks when it fires: if the operation has been waiting its timeout,
the operation's task is cancelled and the operation raises TimeoutError, as under
asyncio.timeout; if not, the timer is set for the current operation's deadline, or left off
until the next operation.

Guarantees: an operation that waits its timeout raises TimeoutError (late only by the
loop's own lateness); a cancellation by anyone else (session limit, shutdown) stays theirs,
nested the way asyncio.timeout nests; the timer holds the Watchdog weakly and stop()
cancels it, so a finished connection is neither kept alive nor left on the loop's heap.
Must never: cancel a task that is not waiting in an operation it guards.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Awaitable, TypeVar

T = TypeVar("T")


class Watchdog:
    """Timeouts for the operations of one connection, which run one at a time."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = math.inf                # when the armed timer fires
        self._since: float | None = None    # start of the operation waiting now
        self._limit = math.inf
        self._task: asyncio.Task | None = None
        self._fired = False

    async def guard(self, awaitable: Awaitable[T], timeout_s: float) -> T:
        """Await `awaitable`; TimeoutError if it has not finished after timeout_s."""
        loop = self._loop or self._bind()
        task = asyncio.current_task(loop)
        now = loop.time()
        self._since, self._limit, self._task = now, timeout_s, task
        if now + timeout_s < self._due:
            self._arm(now + timeout_s)
        cancelling = task.cancelling()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                if task.uncancel() <= cancelling:
                    raise TimeoutError from None
            raise
        finally:
            self._since = self._task = None

    def stop(self) -> None:
        """The connection is done: take the timer off the loop."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self._due = None, math.inf

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _arm(self, when: float) -> None:
        self.stop()
        self._handle = self._loop.call_at(when, _fire, weakref.ref(self), when)
        self._due = when

    def _check(self, due: float) -> None:
        self._handle, self._due = None, math.inf
        if self._since is None or self._task is None:
            return                          # nothing waits: the next operation arms it
        deadline = self._since + self._limit
        if deadline <= due:
            self._fired = True
            self._task.cancel()
        else:
            self._arm(deadline)


def _fire(ref: weakref.ref, due: float) -> None:
    dog = ref()
    if dog is not None:
        dog._check(due)
