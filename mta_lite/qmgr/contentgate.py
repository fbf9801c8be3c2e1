"""contentgate — how much large-message content the queue manager holds in memory at once.

    gate = ContentGate(budget_bytes, large_bytes)
    async with gate.hold(entry.size):   the delivery reads the message and sends it

A delivery holds its message's content in memory while it sends it (about three times its
size at the peak: the content, the dot-stuffed wire copy, the transport's send buffer), so
ten 10 MB messages delivered at once cost the queue manager some 270 MiB. A message smaller
than `large_bytes` passes at once and never waits; larger ones share `budget_bytes`: one is
admitted when its size fits into what the others left, or when no large message is being
delivered (so a message bigger than the budget still goes, alone). Waiters are admitted in
arrival order, so a big message is never starved by a stream of smaller large ones.
Guarantees: a hold is released however its delivery ends (result, error, cancellation), and
a cancelled waiter leaves the queue, so the gate never wedges; a small message never waits
here (a waiting large one still counts in its account's backlog, as one waiting for a
concurrency slot always did).
Must never: drop, reorder the results of or time out a delivery (it only delays its start).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

# A message from this size on waits its turn; below it, nothing changes.
LARGE_BYTES = 1024 * 1024
# Content of large messages in flight at once (a bigger single message still goes alone).
BUDGET_BYTES = 8 * 1024 * 1024


class ContentGate:
    """A FIFO byte budget for large messages (see the module docstring)."""

    def __init__(self, budget_bytes: int = BUDGET_BYTES, large_bytes: int = LARGE_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self.large_bytes = large_bytes
        self.held = 0                   # bytes of large messages being delivered
        self.holders = 0
        self._waiters: collections.deque = collections.deque()     # (size, future), oldest first

    def _fits(self, size: int) -> bool:
        return self.holders == 0 or self.held + size <= self.budget_bytes

    @contextlib.asynccontextmanager
    async def hold(self, size: int):
        if size < self.large_bytes:
            yield
            return
        await self._acquire(size)
        try:
            yield
        finally:
            self.held -= size
            self.holders -= 1
            self._wake()

    async def _acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self.held += size
            self.holders += 1
            return
        waiter = (size, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter[1]             # _wake() counted this hold in before setting it
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif not waiter[1].cancelled():
                self.held -= size       # admitted and cancelled in the same turn
                self.holders -= 1
            self._wake()
            raise

    def _wake(self) -> None:
        """Admit waiters in order while the first one fits."""
        while self._waiters and self._fits(self._waiters[0][0]):
            size, future = self._waiters.popleft()
            if future.cancelled():      # its task is unwinding; it counted nothing
                continue
            self.held += size
            self.holders += 1
            future.set_result(None)
