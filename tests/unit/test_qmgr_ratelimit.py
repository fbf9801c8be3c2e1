"""ratelimit: at most N events in any sliding window (the DSNs-per-hour cap, G6)."""

from mta_lite.qmgr.ratelimit import SlidingWindowLimit


def test_allows_up_to_the_limit_then_refuses_until_the_window_slides():
    limit = SlidingWindowLimit(3, 3600.0)
    assert [limit.allow(t) for t in (0, 10, 20, 30)] == [True, True, True, False]
    assert limit.allow(3599) is False
    assert limit.allow(3600) is True              # the event at 0 left the window
    assert limit.used(3600) == 3


def test_refused_events_do_not_use_up_the_window():
    limit = SlidingWindowLimit(1, 60.0)
    assert limit.allow(0) and not limit.allow(1) and not limit.allow(59)
    assert limit.allow(60)
