"""backoff — when to try a deferred message again, when to give up, how long to pause an account.

Pure functions: time and randomness come in as arguments.

Guarantees: retry_delay_s() doubles from queue.min_backoff_s after each failed attempt and
never leaves [min_backoff_s, max_backoff_s]; its jitter spreads messages that failed together
so that they do not retry in lockstep. auth_pause_s() grows in hours, per account (S5): an
account whose login was refused is tried once per pause, never once per message.
Must never: return a negative or unbounded delay, whatever the attempt count.
"""

from __future__ import annotations

import random

from mta_lite.config.schema import QueueConfig

# Jitter of +-10 %: enough to spread a burst of deferrals over minutes at the usual backoffs,
# small enough that an admin reading "next attempt" in the queue listing is not misled.
JITTER_FRACTION = 0.10
# 2**40 times any sane min_backoff is far beyond any cap; it only keeps float math finite.
MAX_DOUBLINGS = 40
# S5: a refused login is not fixed by retrying in minutes. The pause starts at one hour
# (or min_backoff if that is longer), doubles per consecutive refusal and stops at a day,
# so that a fixed password is noticed within a day without a probe storm before.
AUTH_PAUSE_MIN_S = 3600.0
AUTH_PAUSE_MAX_S = 86400.0


def _doubled(base_s: float, n: int) -> float:
    return base_s * 2.0 ** min(max(n, 1) - 1, MAX_DOUBLINGS)


def retry_delay_s(attempts: int, queue: QueueConfig, rng: random.Random) -> float:
    """Delay after the `attempts`-th failed attempt (1 = first failure), jittered, within bounds."""
    lowest, highest = queue.min_backoff_s, max(queue.min_backoff_s, queue.max_backoff_s)
    nominal = min(_doubled(lowest, attempts), highest)
    low = max(nominal * (1.0 - JITTER_FRACTION), lowest)
    high = min(nominal * (1.0 + JITTER_FRACTION), highest)
    return rng.uniform(low, high)


def auth_pause_s(failures: int, queue: QueueConfig) -> float:
    """How long an account stays paused after its `failures`-th consecutive refused login."""
    start = max(queue.min_backoff_s, AUTH_PAUSE_MIN_S)
    return min(_doubled(start, failures), max(AUTH_PAUSE_MAX_S, start))


def expired(arrival: float, now: float, queue: QueueConfig) -> bool:
    """True once a message has been in the queue for queue.lifetime_s (Postfix: maximal_queue_lifetime)."""
    return now - arrival >= queue.lifetime_s
