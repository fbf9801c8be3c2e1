"""history — mail per hour and per day, and the last deliveries, for the status page.

    relayed    recipients the smarthost accepted          (qmgr: a delivery result "sent")
    deferred   recipients deferred after an attempt or a pause  (qmgr: "deferred")
    bounced    recipients bounced, expired ones included   (qmgr: "bounced")
    rejected   smtpd's refusals: 4xx/5xx replies to MAIL, RCPT, DATA and end of data, plus
               the clients postscreen dropped with 521 (the counters smtpd sends the queue
               manager over the doorbell; see observe_smtpd)

The queue manager owns the record: it sees every delivery result and already receives
smtpd's counters, and it is the one process that writes the spool's state. It keeps the
counts of the last HOURS hours and DAYS days in spool/public/history.json (0644, so the
status page's user reads it by name and can read nothing else of the spool), and the last
RECENT_LIMIT delivery results in memory, for the status snapshot.

Guarantees: the file is bounded (at most HOURS + DAYS buckets and one smtpd baseline; a
file with more, with buckets from the future or with garbage in it is cut back or ignored on
load, never obeyed); it is written through safeio, atomically, and at most once every
SAVE_INTERVAL_S while mail flows (an SD card sees one small write a minute at worst), and at
stop. A torn or garbage file costs the history, logged once, never mail: load() never
raises. The recent list holds queue ID, envelope sender, recipient DOMAIN, status and the
smarthost's reply (length-capped, with the config's secrets masked): never a full recipient
address, never message content, never a password.
Must never: block or fail a delivery (record() is memory only; save errors are logged),
or be read by the relay to decide anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field

from mta_lite import safeio

log = logging.getLogger("mta_lite.qmgr")

HISTORY_FILE = os.path.join("public", "history.json")
FILE_VERSION = 1
FILE_MODE = 0o644
KINDS = ("relayed", "deferred", "bounced", "rejected")
HOUR_S = 3600
DAY_S = 86400
HOURS = 24          # the page's hourly plot: the last day
DAYS = 30           # the page's daily plot: the last month
# Written at most this often while counts change: a crash loses at most a minute of counts,
# and the SD card sees at most one 2 KB write a minute from this file.
SAVE_INTERVAL_S = 60.0
# A file bigger than this is not ours (HOURS + DAYS buckets take about 3 KB): not even parsed.
MAX_FILE_BYTES = 64 * 1024
# The last deliveries shown on the page: enough for "what just happened", small enough that
# the status file, rewritten every 2 s on the SD card, grows by at most about 4 KB.
RECENT_LIMIT = 10
# Caps on what a recent entry carries: an address is at most 254 octets (RFC 5321 4.5.3.1.3),
# a reply line at most 512; a smarthost reply is cut at a length a page can show.
MAX_ADDRESS_CHARS = 254
MAX_REPLY_CHARS = 200
MASK = "*****"


@dataclass
class Book:
    """Counts per bucket start (epoch seconds, UTC): hours and days, each {kind: n}."""
    hours: dict[int, dict[str, int]] = field(default_factory=dict)
    days: dict[int, dict[str, int]] = field(default_factory=dict)
    smtpd_pid: int = 0              # the smtpd process whose counters were seen last
    smtpd_rejected: int = 0         # its rejected total then (the baseline for the next delta)


def add(book: Book, kind: str, count: int, now: float) -> None:
    """Count `count` of `kind` at `now` in its hour and its day (pure but for `book`)."""
    if kind not in KINDS or count <= 0:
        return
    for buckets, size in ((book.hours, HOUR_S), (book.days, DAY_S)):
        start = int(now // size * size)
        bucket = buckets.setdefault(start, dict.fromkeys(KINDS, 0))
        bucket[kind] += count
    prune(book, now)


def prune(book: Book, now: float) -> None:
    """Drop buckets older than the plots and any from the future (the clock was stepped back)."""
    for buckets, size, keep in ((book.hours, HOUR_S, HOURS), (book.days, DAY_S, DAYS)):
        current = int(now // size * size)
        oldest = current - (keep - 1) * size
        for start in [s for s in buckets if not oldest <= s <= current]:
            del buckets[start]


def series(book: Book, now: float) -> dict[str, list[dict]]:
    """The plots' data, oldest first: HOURS hourly and DAYS daily buckets ending at `now`'s,
    every one present (zeros where nothing happened), each {"start": epoch, kind: n...}."""
    out = {}
    for name, buckets, size, keep in (("hours", book.hours, HOUR_S, HOURS), ("days", book.days, DAY_S, DAYS)):
        current = int(now // size * size)
        starts = [current - i * size for i in range(keep - 1, -1, -1)]
        out[name] = [{"start": s, **{k: buckets.get(s, {}).get(k, 0) for k in KINDS}} for s in starts]
    return out


def to_json(book: Book) -> bytes:
    data = {"version": FILE_VERSION,
            "hours": {str(s): c for s, c in sorted(book.hours.items())},
            "days": {str(s): c for s, c in sorted(book.days.items())},
            "smtpd": {"pid": book.smtpd_pid, "rejected": book.smtpd_rejected}}
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def from_json(raw: bytes, now: float) -> Book:
    """A Book from the file's bytes; ValueError for anything that is not one of ours.
    Bad buckets are skipped one by one; the result is pruned, so it is bounded."""
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
        raise ValueError("not a version 1 history file")
    book = Book(hours=_buckets(data.get("hours")), days=_buckets(data.get("days")))
    smtpd = data.get("smtpd") if isinstance(data.get("smtpd"), dict) else {}
    book.smtpd_pid, book.smtpd_rejected = _count(smtpd.get("pid")), _count(smtpd.get("rejected"))
    prune(book, now)
    return book


def _buckets(value) -> dict[int, dict[str, int]]:
    if not isinstance(value, dict):
        return {}
    buckets = {}
    for start, counts in list(value.items())[: 4 * (HOURS + DAYS)]:
        if isinstance(counts, dict) and str(start).isdigit():
            buckets[int(start)] = {k: _count(counts.get(k)) for k in KINDS}
    return buckets


def _count(value) -> int:
    """A non-negative int, or 0 for anything else (the file is not trusted for types)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return max(0, int(value))


def read_book(path: str, now: float) -> Book:
    """The history file as a Book; an empty one when absent; ValueError/OSError otherwise."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return Book()
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return from_json(raw, now)


def history_path(spool_root: str) -> str:
    return os.path.join(spool_root, HISTORY_FILE)


def recent_entry(queue_id: str, sender: str, recipient: str, status: str, reply: str, relay: str,
                 now: float, secrets=()) -> dict:
    """One delivery result as the page shows it: the recipient's domain only, the reply
    capped and masked."""
    for secret in secrets:
        reply = reply.replace(secret, MASK)
    return {"time": now, "queue_id": queue_id, "sender": sender[:MAX_ADDRESS_CHARS] or "<>",
            "recipient_domain": recipient.rpartition("@")[2][:MAX_ADDRESS_CHARS], "status": status,
            "reply": reply[:MAX_REPLY_CHARS], "relay": relay[:MAX_ADDRESS_CHARS]}


class History:
    """The queue manager's record: counts (saved rarely to `path`) and the recent results."""

    def __init__(self, path: str, clock=time.time) -> None:
        self.path, self.clock = path, clock
        self.book = Book()
        self.recent: deque[dict] = deque(maxlen=RECENT_LIMIT)
        self.secrets: list[str] = []        # masked in recent replies (set from the config)
        self.dirty = False
        self.saved_at = -math.inf

    def load(self) -> None:
        """Read the file; a torn or garbage one is logged and the history starts afresh."""
        try:
            self.book = read_book(self.path, self.clock())
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable, the mail history starts afresh: %s", self.path, exc)
            self.book = Book()

    def record(self, queue_id: str, sender: str, recipient: str, status: str, reply: str,
               relay: str) -> None:
        """One recipient's result (status "sent", "deferred" or "bounced")."""
        now = self.clock()
        kind = {"sent": "relayed", "deferred": "deferred", "bounced": "bounced"}.get(status)
        if kind:
            add(self.book, kind, 1, now)
            self.dirty = True
        self.recent.appendleft(recent_entry(queue_id, sender, recipient, status, reply, relay, now,
                                            self.secrets))

    def observe_smtpd(self, counters: dict) -> None:
        """smtpd's totals since its start; the growth since the last look is counted. A new
        smtpd process (another pid) or a total that went down starts from zero."""
        rejected = _count(counters.get("rejects")) + _count(counters.get("postscreen_dropped"))
        pid = _count(counters.get("pid"))
        same = pid == self.book.smtpd_pid and rejected >= self.book.smtpd_rejected
        growth = rejected - self.book.smtpd_rejected if same else rejected
        if growth:
            add(self.book, "rejected", growth, self.clock())
        if growth or pid != self.book.smtpd_pid:
            self.dirty = True
        self.book.smtpd_pid, self.book.smtpd_rejected = pid, rejected

    def save_if_due(self, force: bool = False) -> None:
        """Write the file if counts changed and SAVE_INTERVAL_S passed (or force); errors
        are logged, never raised: the history must not cost a delivery."""
        now = self.clock()
        if not self.dirty or (not force and now - self.saved_at < SAVE_INTERVAL_S):
            return
        self.saved_at = now
        try:
            safeio.atomic_write(self.path, to_json(self.book), mode=FILE_MODE)
            self.dirty = False
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc.strerror or exc)

    def snapshot(self) -> list[dict]:
        """The recent results, newest first (for the status file)."""
        return list(self.recent)
