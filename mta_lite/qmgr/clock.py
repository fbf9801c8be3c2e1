"""clock — is the system clock set? The trusted floor, its record in the spool, the lifetime rule.

A Raspberry Pi has no real-time clock: after a power cut it boots at the image's build date
or at 1970, and until NTP answers every smarthost certificate looks expired or not yet
valid. The relay therefore calls the clock NOT SET while it reads earlier than its trusted
floor, the later of

    BUILD_TIME   when this software was built: the image build's stamp in BUILD_TIME_FILE,
                 read once at start, never earlier than RELEASE_TIME (set by hand at each
                 release); RELEASE_TIME alone where no stamp is installed (a checkout)
    last_seen    the latest time the queue manager saw while the clock was set, kept in
                 spool/state/clock.json, less STEP_SLACK_S

While not set, the queue manager defers every delivery that needs a certificate check
(relay tls = starttls or implicit) with `clock not set`, without a connection; mail to a
relay with tls = none goes on. The record also says when the clock was last found good
after being not set (good_since) and the floor at that moment (suspect_before): an arrival
stamp earlier than suspect_before was, or may have been, taken from a clock not set, and
counts as arrived at good_since for the queue lifetime (effective_arrival()), so mail
accepted at "1970" does not bounce as five days old, and no message bounces early. The
price: mail that was already queued before a power cut gets its lifetime counted again
from the moment the clock came back (it may wait longer, never shorter).

Guarantees: observe() and effective_arrival() are pure (the time comes in as an argument).
ClockWatch writes the record at a state change, at most every SAVE_INTERVAL_S otherwise
(SD-card wear: never per message), and at a clean stop; a torn, garbled or unreadable
record counts as absent (the floor is then BUILD_TIME) and a failed write is logged, never
raised: the relay runs on. An absent, unreadable or garbled build stamp gives RELEASE_TIME.
Must never: move the floor backwards within a run, or stop delivery of mail that needs no
certificate check.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace

from mta_lite import safeio

log = logging.getLogger("mta_lite.qmgr")

# The release's source date (2026-12-06 00:00:00 UTC), set by hand at each release. It is an
# honest lower bound of the build time: this code did not exist before it, so no build of
# it can be older. A clock that reads earlier cannot be right.
RELEASE_TIME = 1796515200.0
# The image build (firmware/image/build.py) writes its SOURCE_DATE_EPOCH here, one line of
# decimal seconds, on the read-only root file system: a later floor than RELEASE_TIME
# without anyone editing a constant.
BUILD_TIME_FILE = "/usr/lib/mta-lite/build-time"
BUILD_STAMP_MAX_BYTES = 32
CLOCK_FILE = os.path.join("state", "clock.json")


def read_build_time(path: str = BUILD_TIME_FILE, floor: float = RELEASE_TIME) -> float:
    """The build's stamp in `path`, never earlier than `floor`; a stamp that is absent,
    unreadable or not plain decimal seconds is ignored (the floor it is)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(BUILD_STAMP_MAX_BYTES).strip()
    except OSError:
        return floor
    if not (text.isdigit() and len(text) < BUILD_STAMP_MAX_BYTES):     # ASCII digits only
        return floor
    return max(floor, float(int(text)))


BUILD_TIME = read_build_time()
# last_seen is written at most this often while the clock is good (and at stop): an SD card
# must not get a write per message. The price of a power cut is a floor up to five minutes
# old, which still catches a Pi that booted at its image's date or at 1970.
SAVE_INTERVAL_S = 300.0
# NTP may step a good clock back by a fraction of a second (timesyncd steps beyond 0.4 s):
# that must not read as "not set" and hold mail back. A clock that is really not set is
# hours to decades behind, far beyond this.
STEP_SLACK_S = 60.0
# While the clock is not set the queue manager looks again this often, so the mail waiting
# for it goes out within about a second of NTP setting the clock.
CHECK_INTERVAL_S = 1.0

OK = "ok"
NOT_SET = "not_set"


@dataclass(frozen=True)
class ClockRecord:
    """What the queue manager keeps of the clock between runs (spool/state/clock.json)."""

    last_seen: float = 0.0       # the latest time seen while the clock was set
    state: str = OK              # OK or NOT_SET, as last observed
    since: float = 0.0           # the clock's reading when that state began
    good_since: float = 0.0      # when the clock was last found good (after not set, or the first run)
    suspect_before: float = 0.0  # arrival stamps before this may come from a clock not set

    def floor(self, build_time: float = BUILD_TIME) -> float:
        return max(build_time, self.last_seen - STEP_SLACK_S)


def observe(record: ClockRecord, now: float, build_time: float = BUILD_TIME) -> ClockRecord:
    """The record after reading the clock at `now`: not set below the floor; otherwise
    last_seen moves up, and a clock found good after being not set (or on the first run)
    starts a new good_since with the floor of that moment as suspect_before."""
    floor = record.floor(build_time)
    if now < floor:
        return record if record.state == NOT_SET else replace(record, state=NOT_SET, since=now)
    if record.state == NOT_SET:
        return replace(record, last_seen=now, state=OK, since=now, good_since=now, suspect_before=floor)
    if not record.good_since:                   # no record yet: the first run of the relay
        return replace(record, last_seen=now, since=now, good_since=now, suspect_before=build_time)
    return replace(record, last_seen=max(record.last_seen, now))


def effective_arrival(arrival: float, record: ClockRecord) -> float:
    """The arrival the queue lifetime counts from (see the module docstring)."""
    if record.good_since and arrival < record.suspect_before:
        return max(arrival, record.good_since)
    return arrival


def needs_clock(tls: str) -> bool:
    """A relay whose certificate is checked (tls = starttls or implicit) needs a set clock."""
    return tls != "none"


def clock_path(spool_root: str) -> str:
    return os.path.join(spool_root, CLOCK_FILE)


def read_record(path: str) -> ClockRecord:
    """The saved record; a missing, torn or garbled file gives an empty one (floor BUILD_TIME)."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
        record = ClockRecord(**{key: data[key] for key in asdict(ClockRecord()) if key in data})
    except FileNotFoundError:
        return ClockRecord()
    except (OSError, ValueError, TypeError) as exc:
        log.warning("clock record %s unreadable, ignored: %s", path, exc)
        return ClockRecord()
    return _checked(record, path)


def _checked(record: ClockRecord, path: str) -> ClockRecord:
    numbers = (record.last_seen, record.since, record.good_since, record.suspect_before)
    if record.state not in (OK, NOT_SET) or not all(_finite(n) for n in numbers):
        log.warning("clock record %s holds garbage, ignored", path)
        return ClockRecord()
    return record


def _finite(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def not_set_reason(record: ClockRecord, now: float, build_time: float = BUILD_TIME) -> str:
    """`clock not set: it reads 1970-01-01 00:00:07 UTC, earlier than ...` (log, `queue why`)."""
    floor = record.floor(build_time)
    what = "the last time this relay saw" if record.last_seen > build_time else "this software's release"
    return f"clock not set: it reads {stamp(now)}, earlier than {stamp(floor)} ({what})"


class ClockWatch:
    """The queue manager's view of the clock: observe often, write rarely."""

    def __init__(self, path: str, *, clock=time.time, build_time: float = BUILD_TIME) -> None:
        self.path, self.clock, self.build_time = path, clock, build_time
        self.record = read_record(path)
        self._saved = self.record

    def is_set(self) -> bool:
        return self.record.state == OK

    def check(self) -> bool:
        """Read the clock; True if it just became good (mail waiting for it may go)."""
        before = self.record
        self.record = observe(before, self.clock(), self.build_time)
        if self.record.state != before.state:
            self._log_change(before)
        self.save(force=self.record.state != self._saved.state or not self._saved.good_since)
        return before.state == NOT_SET and self.is_set()

    def _log_change(self, before: ClockRecord) -> None:
        if self.is_set():
            log.info("clock is set: it reads %s", stamp(self.record.since))
        else:
            log.warning("%s; deliveries that need a certificate check wait for it (NTP)",
                        not_set_reason(before, self.record.since, self.build_time))

    def save(self, force: bool = False) -> None:
        """Write the record at a change or once SAVE_INTERVAL_S has passed; failures are logged."""
        due = self.record.last_seen - self._saved.last_seen >= SAVE_INTERVAL_S
        if self.record == self._saved or not (force or due):
            return
        try:
            safeio.atomic_write(self.path, json.dumps(asdict(self.record)).encode(), mode=0o644)
        except OSError as exc:
            log.warning("cannot write the clock record %s: %s", self.path, exc.strerror)
            return
        self._saved = self.record

    def arrival(self, arrival: float) -> float:
        return effective_arrival(arrival, self.record)

    def reason(self) -> str:
        return not_set_reason(self.record, self.clock(), self.build_time)

    def snapshot(self) -> dict:
        """The status file's `clock` entry."""
        return {"state": self.record.state, "trusted_floor": self.record.floor(self.build_time),
                "since": self.record.since}
