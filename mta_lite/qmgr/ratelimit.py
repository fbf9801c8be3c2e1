"""ratelimit — a sliding-window counter: at most N events per window.

Pure: the caller passes the time. Used to cap the non-delivery notifications the queue
manager creates per hour (G6), so that a broken smarthost that bounces everything, or a
bounce storm from a misbehaving LAN device, cannot flood senders or the postmaster.
Guarantees: memory is bounded by the limit (one timestamp per allowed event in the window).
Must never: allow more than `limit` events in any window of `window_s` seconds.
"""

from __future__ import annotations

from collections import deque


class SlidingWindowLimit:
    """allow(now) is True for at most `limit` calls in any `window_s` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()

    def allow(self, now: float) -> bool:
        self._prune(now)
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def used(self, now: float) -> int:
        self._prune(now)
        return len(self._times)
