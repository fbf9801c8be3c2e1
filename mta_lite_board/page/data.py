"""page.data — what the status page shows, as one plain dict: the body of /status.json.

    collect(spool_dir, board_run_dir, now, config_info)
        reads spool/public/status.json and master.json (mta_lite.status.read_status),
        public/history.json (mta_lite.history), the board's clock.json and the config.json
        the page's root start step wrote (the config's digest and generation number)
    build(snapshot, book, relay_clock, ntp, now, config_info)
        pure: the dict, with stable keys (docs/status.schema.json)

Every value is checked for its type here, because every file read is another process's and
may be torn, garbage or hostile: a wrong type becomes 0, "", null or "unknown", never an
exception, so the page always answers. Strings are copied as they are; escaping them is the
renderer's job (render.py), and a JSON encoder's for /status.json.
Guarantees: only those files are read, by name; nothing is written. The dict holds what
the status snapshot holds (counters, states, the last delivery results with recipient
domains only) and never a secret: the relay never puts one into those files.
Must never: read the config, the queue, or anything under /etc/mta-lite; raise on bad input.
"""

from __future__ import annotations

import json
import math
import os

from mta_lite import history
from mta_lite.status import QUEUE_DIRS, StatusSnapshot, read_status

from mta_lite_board import patterns

SCHEMA_VERSION = 1
CLOCK_FILE = "clock.json"          # the board's NTP report, in its runtime directory
# The board's clock report is a few hundred bytes; anything bigger is not it.
MAX_CLOCK_FILE_BYTES = 4096
MAX_TEXT_CHARS = 300
# Times past the year 9999 are garbage (and beyond what gmtime() can show).
MAX_EPOCH = 253_402_300_799
MAX_ACCOUNTS = 50                   # a home relay has a handful; a garbled file must not make a huge page
SMTPD_KEYS = {"connections": "connections", "accepted": "accepted", "rejected": "rejects",
              "refused": "refused", "errors": "errors"}
POSTSCREEN_KEYS = ("passed", "cache_hits", "pregreet", "dnsbl", "dropped", "enforced", "allowlisted",
                   "denylisted", "stress")
PATTERN_WORDS = {patterns.OFF: "off", patterns.ON: "on", patterns.SLOW_BLINK: "slow blink",
                 patterns.FAST_BLINK: "fast blink", patterns.FLASH: "short flash", patterns.WINK: "wink"}
# The LED meanings of patterns.py, in plain words.
POWER_WORDS = {patterns.ON: "the relay is running", patterns.SLOW_BLINK: "the relay is not running"}
MAIL_WORDS = {patterns.OFF: "no mail in the box", patterns.ON: "mail is waiting in the box",
              patterns.FAST_BLINK: "a damaged queue file was set aside in corrupt/: look at it "
                                   "(mta-lite queue list)"}
ALERT_WORDS = {patterns.OFF: "every smarthost account is fine",
               patterns.FAST_BLINK: "a part of the relay cannot start because of its configuration",
               patterns.ON: "a smarthost refused an account's login: fix its username or password",
               patterns.SLOW_BLINK: "a smarthost has not answered for 10 minutes",
               patterns.FLASH: "an account is throttled by its own sending budget",
               patterns.WINK: "the clock is off: NTP servers disagree with it, or none answered for long"}
ALERT_CLOCK_NOT_SET = "the clock is not set: mail for smarthosts with TLS waits for it"
ALERT_OFF_NOT_RUNNING = "the accounts' state is unknown while the relay is not running"
CLOCK_STATES = ("ok", "not_set")


def collect(spool_dir: str, board_run_dir: str | None, now: float, config_info: str | None = None) -> dict:
    """Read the files and build the page's data; missing or bad files give "unknown"s."""
    snapshot = read_status(spool_dir, now)
    relay_clock = getattr(snapshot, "clock", None)
    try:
        book = history.read_book(history.history_path(spool_dir), now)
    except (OSError, ValueError):
        book = history.Book()
    ntp = _load_json(os.path.join(board_run_dir, CLOCK_FILE), MAX_CLOCK_FILE_BYTES) if board_run_dir else {}
    info = _load_json(config_info, MAX_CLOCK_FILE_BYTES) if config_info else {}
    return build(snapshot, book, relay_clock, ntp, now, info)


def _load_json(path: str, limit: int) -> dict:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
        data = json.loads(raw) if len(raw) <= limit else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def build(snapshot: StatusSnapshot, book: history.Book, relay_clock, ntp: dict, now: float,
          config_info: dict | None = None) -> dict:
    """The page's data (pure)."""
    running = patterns.relay_running(snapshot, now)
    return {
        "version": SCHEMA_VERSION,
        "generated": now,
        "relay": _relay(snapshot, running, now, _mapping(config_info)),
        "leds": _leds(snapshot, running, now, _mapping(ntp).get("alert") is True),
        "mail": _mail(snapshot, now),
        "accounts": [_account(name, entry) for name, entry in list(_mapping(snapshot.relays).items())[:MAX_ACCOUNTS]],
        "recent": [_recent(entry) for entry in _list(getattr(snapshot, "recent", None))[:history.RECENT_LIMIT]],
        "smtpd": {key: _count(_mapping(snapshot.smtpd).get(name)) for key, name in SMTPD_KEYS.items()},
        "postscreen": {key: _count(_mapping(snapshot.smtpd).get(f"postscreen_{key}")) for key in POSTSCREEN_KEYS},
        "disk": _disk(_mapping(getattr(snapshot, "disk", None))),
        "clock": _clock(relay_clock if running else None, ntp),     # a stopped relay's view is stale
        "history": history.series(book, now),
    }


def _relay(snapshot: StatusSnapshot, running: bool, now: float, config_info: dict) -> dict:
    started = _number(snapshot.started)
    problems = []
    for name, entry in sorted(_mapping(snapshot.processes).items()):
        entry = _mapping(entry)
        if entry.get("state") not in (None, "running"):
            problems.append({"process": _text(name), "state": _text(entry.get("state")),
                             "since": _time(entry.get("since")), "reason": _text(entry.get("reason"))})
    return {"running": running, "pid": _count(snapshot.pid) if running else 0,
            "up_s": max(0.0, now - started) if running and started else None,
            "config": _text(snapshot.config), "config_generation": _generation(snapshot, config_info),
            "problems": problems}


def _generation(snapshot: StatusSnapshot, config_info: dict) -> int | None:
    """The generation number of the config the relay runs: known when the installed file the
    root step saw is the one the relay reports (same digest)."""
    number = config_info.get("generation")
    if not (isinstance(number, int) and not isinstance(number, bool) and number > 0):
        return None
    same = isinstance(snapshot.config, str) and snapshot.config and snapshot.config == config_info.get("digest")
    return number if same else None


def _leds(snapshot: StatusSnapshot, running: bool, now: float, ntp_alert: bool) -> dict:
    state = patterns.pattern_for(snapshot, now, ntp_alert)
    alert = ALERT_WORDS.get(state.alert, "")
    if state.alert == patterns.OFF and not running:
        alert = ALERT_OFF_NOT_RUNNING
    if state.alert == patterns.WINK and running and patterns.clock_not_set(snapshot):
        alert = ALERT_CLOCK_NOT_SET
    return {"power": {"pattern": PATTERN_WORDS.get(state.power, "?"), "meaning": POWER_WORDS.get(state.power, "")},
            "mail": {"pattern": PATTERN_WORDS.get(state.mail, "?"), "meaning": MAIL_WORDS.get(state.mail, "")},
            "alert": {"pattern": PATTERN_WORDS.get(state.alert, "?"), "meaning": alert}}


def _mail(snapshot: StatusSnapshot, now: float) -> dict:
    queue = _mapping(snapshot.queue)
    counts = {name: _count(queue.get(name)) for name in QUEUE_DIRS}
    waiting = sum(counts[name] for name in patterns.WAITING_DIRS)
    oldest = _time(getattr(snapshot, "oldest", None)) if waiting else None
    return {"waiting": waiting, **counts, "oldest_arrival": oldest,
            "oldest_age_s": max(0.0, now - oldest) if oldest is not None else None}


def _account(name, entry) -> dict:
    entry = _mapping(entry)
    state = _text(entry.get("state")) or "unknown"
    since = {"auth_failed": entry.get("auth_failed_since"), "unreachable": entry.get("unreachable_since")}.get(state)
    until = {"throttled": entry.get("throttled_until"), "auth_failed": entry.get("paused_until")}.get(state)
    return {"name": _text(name), "state": state, "since": _time(since), "until": _time(until),
            "sent_last_hour": _count(entry.get("sent_last_hour")), "max_per_hour": _count(entry.get("max_per_hour")),
            "sent_last_day": _count(entry.get("sent_last_day")), "max_per_day": _count(entry.get("max_per_day")),
            "sent": _count(entry.get("sent")), "deferred": _count(entry.get("deferred")),
            "bounced": _count(entry.get("bounced")), "last_error": _text(entry.get("last_error"))}


def _recent(entry) -> dict:
    entry = _mapping(entry)
    return {"time": _time(entry.get("time")), "queue_id": _text(entry.get("queue_id")),
            "sender": _text(entry.get("sender")), "recipient_domain": _text(entry.get("recipient_domain")),
            "status": _text(entry.get("status")), "reply": _text(entry.get("reply")),
            "relay": _text(entry.get("relay"))}


def _disk(disk: dict) -> dict:
    free, total = disk.get("free_bytes"), disk.get("total_bytes")
    return {"free_bytes": _count(free) if _is_number(free) else None,
            "total_bytes": _count(total) if _is_number(total) else None}


def _clock(relay_clock, ntp: dict) -> dict:
    """The relay's verdict on its clock ({"state": "ok"|"not_set", ...} in its snapshot) and
    the board's NTP check (clock.json); "unknown" and nulls for what is not there."""
    state = _mapping(relay_clock).get("state")
    offset = ntp.get("offset_s")
    return {"state": state if state in CLOCK_STATES else "unknown",
            "ntp_checked": _time(ntp.get("checked")), "ntp_server": _text(ntp.get("server")),
            "ntp_offset_s": float(offset) if _is_number(offset) else None,
            "ntp_error": _text(ntp.get("error")), "ntp_alert": ntp.get("alert") is True,
            "ntp_alert_after_s": float(ntp["alert_after_s"]) if _is_number(ntp.get("alert_after_s")) else None}


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _number(value) -> float:
    return float(value) if _is_number(value) else 0.0


def _count(value) -> int:
    return max(0, int(value)) if _is_number(value) else 0


def _time(value) -> float | None:
    """An epoch time, or None for a missing or nonsensical one."""
    return float(value) if _is_number(value) and 0 < value <= MAX_EPOCH else None


def _text(value) -> str:
    return value[:MAX_TEXT_CHARS] if isinstance(value, str) else ""
