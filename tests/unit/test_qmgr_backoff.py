"""backoff: retry delays double and stop at the cap, jitter stays in bounds, auth pauses, expiry."""

import random
import statistics

import pytest

from mta_lite.config.schema import QueueConfig
from mta_lite.qmgr.backoff import (AUTH_PAUSE_MAX_S, AUTH_PAUSE_MIN_S, JITTER_FRACTION,
                                   auth_pause_s, expired, retry_delay_s)

Q = QueueConfig(min_backoff_s=300.0, max_backoff_s=4000.0, lifetime_s=5 * 86400.0)


def _median_delay(attempts, queue=Q, n=200):
    rng = random.Random(1)
    return statistics.median(retry_delay_s(attempts, queue, rng) for _ in range(n))


def test_retry_delay_doubles_per_attempt_until_the_cap():
    medians = [_median_delay(n) for n in range(1, 8)]
    assert medians[0] == pytest.approx(300, rel=JITTER_FRACTION)
    assert medians[1] == pytest.approx(600, rel=JITTER_FRACTION)
    assert medians[2] == pytest.approx(1200, rel=JITTER_FRACTION)
    assert medians[3] == pytest.approx(2400, rel=JITTER_FRACTION)
    assert medians[4:] == [pytest.approx(4000 * (1 - JITTER_FRACTION / 2), rel=0.02)] * 3


@pytest.mark.parametrize("attempts", [0, 1, 2, 5, 12, 100, 10**6])
def test_retry_delay_never_leaves_min_and_max(attempts):
    rng = random.Random(attempts)
    delays = [retry_delay_s(attempts, Q, rng) for _ in range(500)]
    assert all(Q.min_backoff_s <= d <= Q.max_backoff_s for d in delays)


def test_retry_delay_is_jittered_so_messages_do_not_retry_in_lockstep():
    rng = random.Random(3)
    at_start = {round(retry_delay_s(1, Q, rng), 3) for _ in range(50)}
    at_cap = {round(retry_delay_s(30, Q, rng), 3) for _ in range(50)}
    assert len(at_start) > 40 and len(at_cap) > 40


def test_retry_delay_is_reproducible_with_a_seeded_rng():
    a = [retry_delay_s(n, Q, random.Random(9)) for n in range(1, 6)]
    b = [retry_delay_s(n, Q, random.Random(9)) for n in range(1, 6)]
    assert a == b


def test_retry_delay_with_equal_min_and_max_is_constant():
    q = QueueConfig(min_backoff_s=60.0, max_backoff_s=60.0)
    assert {retry_delay_s(n, q, random.Random(n)) for n in range(1, 10)} == {60.0}


def test_auth_pause_starts_at_an_hour_doubles_and_stops_at_a_day():
    pauses = [auth_pause_s(n, Q) for n in range(1, 8)]
    assert pauses[:5] == [AUTH_PAUSE_MIN_S, 2 * AUTH_PAUSE_MIN_S, 4 * AUTH_PAUSE_MIN_S,
                          8 * AUTH_PAUSE_MIN_S, 16 * AUTH_PAUSE_MIN_S]
    assert pauses[5:] == [AUTH_PAUSE_MAX_S, AUTH_PAUSE_MAX_S]
    assert auth_pause_s(10**6, Q) == AUTH_PAUSE_MAX_S


def test_auth_pause_never_shorter_than_min_backoff():
    q = QueueConfig(min_backoff_s=2 * 3600.0, max_backoff_s=4 * 3600.0)
    assert auth_pause_s(1, q) == 2 * 3600.0


def test_expired_after_lifetime_from_arrival():
    arrival = 1_000_000.0
    assert not expired(arrival, arrival + Q.lifetime_s - 1, Q)
    assert expired(arrival, arrival + Q.lifetime_s, Q)
