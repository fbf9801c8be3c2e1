"""mta_lite.history: the per-hour and per-day counts the status page plots, and the recent list."""

import json
import os

from mta_lite import history
from mta_lite.history import DAY_S, HOUR_S, History, RECENT_LIMIT

NOW = 1_800_000_000.0       # 2027-01-15 08:00 UTC


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_record_counts_each_status_in_its_hour_and_day():
    hist = History(os.devnull, clock=Clock())
    hist.record("A1", "scanner@lan.test", "bob@example.com", "sent", "250 2.0.0 Ok", "isp[1.2.3.4]:587")
    hist.record("A2", "scanner@lan.test", "eve@example.org", "bounced", "550 5.1.1 no", "isp")
    hist.record("A3", "scanner@lan.test", "bob@example.com", "deferred", "451 later", "isp")
    plots = history.series(hist.book, NOW)
    assert len(plots["hours"]) == history.HOURS and len(plots["days"]) == history.DAYS
    last_hour, last_day = plots["hours"][-1], plots["days"][-1]
    for bucket in (last_hour, last_day):
        assert (bucket["relayed"], bucket["bounced"], bucket["deferred"], bucket["rejected"]) == (1, 1, 1, 0)
    assert sum(b["relayed"] for b in plots["hours"]) == 1


def test_recent_keeps_the_recipient_domain_only_and_masks_secrets():
    hist = History(os.devnull, clock=Clock())
    hist.secrets = ["hunter2-secret"]
    hist.record("A1", "<script>@lan.test", "bob@example.com", "bounced",
                "535 5.7.8 bad password hunter2-secret", "isp")
    entry = hist.snapshot()[0]
    assert entry["recipient_domain"] == "example.com"
    assert "bob" not in json.dumps(entry)
    assert "hunter2-secret" not in entry["reply"] and history.MASK in entry["reply"]
    assert entry["sender"] == "<script>@lan.test"


def test_recent_is_bounded_newest_first():
    hist = History(os.devnull, clock=Clock())
    for i in range(RECENT_LIMIT + 5):
        hist.record(f"Q{i}", "a@lan.test", "b@x.test", "sent", "250 ok", "isp")
    recent = hist.snapshot()
    assert len(recent) == RECENT_LIMIT and recent[0]["queue_id"] == f"Q{RECENT_LIMIT + 4}"


def test_smtpd_rejects_count_growth_and_survive_a_new_smtpd_process():
    hist = History(os.devnull, clock=Clock())
    hist.observe_smtpd({"pid": 100, "rejects": 3, "postscreen_dropped": 1})
    hist.observe_smtpd({"pid": 100, "rejects": 5, "postscreen_dropped": 1})
    hist.observe_smtpd({"pid": 200, "rejects": 2})        # smtpd restarted: counts from zero
    assert history.series(hist.book, NOW)["hours"][-1]["rejected"] == 4 + 2 + 2
    assert hist.book.smtpd_rejected == 2


def test_saved_at_most_once_a_minute_and_read_back_after_a_restart(tmp_path):
    clock = Clock()
    path = str(tmp_path / "history.json")
    hist = History(path, clock=clock)
    hist.record("A1", "a@lan.test", "b@x.test", "sent", "250 ok", "isp")
    hist.save_if_due()
    first = os.stat(path).st_mtime_ns
    clock.now += 10
    hist.record("A2", "a@lan.test", "b@x.test", "sent", "250 ok", "isp")
    hist.save_if_due()
    assert os.stat(path).st_mtime_ns == first            # not yet: within the minute
    assert os.stat(path).st_mode & 0o777 == 0o644        # the page's user reads it by name
    clock.now += history.SAVE_INTERVAL_S
    hist.save_if_due()
    again = History(path, clock=clock)
    again.load()
    assert history.series(again.book, clock.now)["days"][-1]["relayed"] == 2


def test_old_and_future_buckets_are_dropped_so_the_file_stays_bounded(tmp_path):
    book = history.Book()
    for hour in range(24 * 40, -1, -1):          # forward in time, as a clock runs
        history.add(book, "relayed", 1, NOW - hour * HOUR_S)
    # From a clock that was ahead, then set right: never obeyed, dropped.
    book.days[int((NOW + 10 * DAY_S) // DAY_S * DAY_S)] = dict.fromkeys(history.KINDS, 5)
    history.prune(book, NOW)
    assert len(book.hours) == history.HOURS and len(book.days) == history.DAYS
    assert max(book.days) <= NOW
    assert len(history.to_json(book)) < 8192


def test_a_torn_or_garbage_file_starts_afresh_and_never_raises(tmp_path):
    path = tmp_path / "history.json"
    good = History(str(path), clock=Clock())
    good.record("A1", "a@lan.test", "b@x.test", "sent", "250 ok", "isp")
    good.save_if_due(force=True)
    raw = path.read_bytes()
    for garbage in (raw[: len(raw) // 2], b"\x00\xff" * 10, b"[]", b'{"version":1,"hours":{"x":1,"5":"y"}}',
                    b'{"version":1,"hours":[],"days":{"%d":{"relayed":-3,"bounced":1e999}}}' % int(NOW),
                    b"{" * 100_000):
        path.write_bytes(garbage)
        hist = History(str(path), clock=Clock())
        hist.load()
        plots = history.series(hist.book, NOW)
        assert all(b[k] >= 0 for b in plots["hours"] + plots["days"] for k in history.KINDS)
        hist.record("A2", "a@lan.test", "b@x.test", "sent", "250 ok", "isp")
        hist.save_if_due(force=True)                      # and it is replaced with a good one
        assert json.loads(path.read_bytes())["version"] == 1
