"""status — StatusSnapshot: what the daemon is doing, for `mta-lite status`, board/ and tools.

The daemon writes the snapshot atomically to spool/public/status.json when it changes, and
every few seconds as a heartbeat; readers never see a half-written file. Where that name is
a symlink (the box: firmware/tmpfiles.d points it into /run, RAM), the snapshot is written
where it points and the link stays, so the heartbeat never wears the SD card; readers open
the same name as always. Queue counts are taken live from the spool
directories the reader may list, so `status` is right even while the daemon is stopped; for
those it may not (the board), the queue manager's counts in the snapshot stand.
Guarantees: the snapshot holds counters and states, and the last few delivery results
(mta_lite.history: queue ID, sender, recipient domain, status, the smarthost's reply with
secrets masked) — never an address book, a password, or message content. board/ reads it through read_status() and nothing else.
Must never: block the daemon on a slow reader (the file is replaced, not locked).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from mta_lite import safeio

STATUS_FILE = os.path.join("public", "status.json")
# The master's view of its children (running, restarting, config_error and why), written by
# the master whenever one starts or dies: it is there even while the queue manager is down.
PROCESSES_FILE = os.path.join("public", "master.json")
# A snapshot older than this, or one whose writer is gone, means the daemon is not running.
STALE_AFTER_S = 30.0
PID_LIMIT = 2 ** 22         # Linux's pid_max ceiling
QUEUE_DIRS = ("incoming", "active", "deferred", "hold", "corrupt")
# Where mail waits to go out: the oldest message among these is "the oldest message".
WAITING_DIRS = ("incoming", "active", "deferred", "hold")
# A queue ID's first 13 hex digits are microseconds since the epoch (queue.spool.new_queue_id).
QUEUE_ID_TIME_DIGITS = 13


@dataclass
class StatusSnapshot:
    pid: int = 0
    started: float = 0.0
    written: float = 0.0
    running: bool = False
    queue: dict[str, int] = field(default_factory=dict)
    relays: dict[str, dict] = field(default_factory=dict)
    qmgr: dict[str, int] = field(default_factory=dict)
    smtpd: dict[str, int] = field(default_factory=dict)
    config: str = ""                  # digest of the config file the queue manager runs
    processes: dict[str, dict] = field(default_factory=dict)   # from the master, while it runs
    # The queue manager's view of the system clock (qmgr/clock.py): {"state": "ok" | "not_set",
    # "trusted_floor": epoch it must not be below, "since": the clock's reading when that began}.
    clock: dict = field(default_factory=dict)
    recent: list[dict] = field(default_factory=list)    # the last delivery results, newest first
    disk: dict[str, int] = field(default_factory=dict)  # the spool's file system: free_bytes, total_bytes
    oldest: float | None = None       # arrival of the oldest message waiting to go out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def queue_counts(spool_dir: str) -> dict[str, int]:
    """Live counts of the queue directories this process may list; a directory it may not
    (the board's user) is left out, and the queue manager's figure from the file stands."""
    counts = {}
    for name in QUEUE_DIRS:
        try:
            counts[name] = sum(1 for n in os.listdir(os.path.join(spool_dir, name)) if not n.startswith("."))
        except FileNotFoundError:
            counts[name] = 0
        except PermissionError:
            continue
    return counts


def oldest_arrival(spool_dir: str) -> float | None:
    """Arrival time of the oldest message waiting to go out, from the queue IDs (which sort
    by arrival); None when nothing waits or the directories may not be listed."""
    oldest = None
    for name in WAITING_DIRS:
        try:
            names = os.listdir(os.path.join(spool_dir, name))
        except OSError:
            continue
        for queue_id in names:
            arrival = _arrival(queue_id)
            if arrival is not None and (oldest is None or arrival < oldest):
                oldest = arrival
    return oldest


def _arrival(queue_id: str) -> float | None:
    digits = queue_id[:QUEUE_ID_TIME_DIGITS]
    if len(queue_id) != 16 or not all(c in "0123456789ABCDEF" for c in queue_id):
        return None
    return int(digits, 16) / 1_000_000


def disk_usage(spool_dir: str) -> dict[str, int]:
    """The spool's file system: {"free_bytes", "total_bytes"}; {} if it cannot be asked."""
    try:
        usage = shutil.disk_usage(spool_dir)
    except OSError:
        return {}
    return {"free_bytes": usage.free, "total_bytes": usage.total}


def write_status(spool_dir: str, snapshot: StatusSnapshot) -> None:
    snapshot.written = time.time()
    # Not durable: it is rewritten every few seconds, and after a power cut the next write
    # replaces whatever the cut left (readers take an unreadable file for a stopped daemon).
    safeio.atomic_write(status_target(spool_dir), snapshot.to_json().encode(), mode=0o644, durable=False)


def status_target(spool_dir: str) -> str:
    """Where the snapshot is written: public/status.json, or the file it links to. Only the
    queue owner (and root) may create entries in public/, so the link is the box's own."""
    path = os.path.join(spool_dir, STATUS_FILE)
    return os.path.realpath(path) if os.path.islink(path) else path


def write_processes(spool_dir: str, record: dict) -> None:
    safeio.atomic_write(os.path.join(spool_dir, PROCESSES_FILE), json.dumps(record, sort_keys=True).encode(),
                        mode=0o644)


def read_processes(spool_dir: str) -> dict[str, dict]:
    """The master's children and their states; {} when no master runs (or the file is bad)."""
    try:
        with open(os.path.join(spool_dir, PROCESSES_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
        pid, processes = data["pid"], data["processes"]
    except (OSError, ValueError, TypeError, KeyError):
        return {}
    if not (type(pid) is int and 0 < pid < PID_LIMIT and _alive(pid) and isinstance(processes, dict)):
        return {}
    return {str(name): entry for name, entry in processes.items() if isinstance(entry, dict)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(spool_dir: str, now: float | None = None) -> StatusSnapshot:
    """The last snapshot with live queue counts; running=False if the daemon is gone."""
    now = time.time() if now is None else now
    snapshot = StatusSnapshot()
    try:
        with open(os.path.join(spool_dir, STATUS_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
        snapshot = StatusSnapshot(**{k: data[k] for k in asdict(snapshot) if k in data})
    except (OSError, ValueError, TypeError):
        pass
    # The file is the daemon's, but a reader must not trust its types: a pid of -1 would
    # signal every process, a string would crash `status` and the LEDs.
    if not (type(snapshot.pid) is int and 0 < snapshot.pid < PID_LIMIT):
        snapshot.pid = 0
    if type(snapshot.written) not in (int, float):
        snapshot.written = 0.0
    snapshot.running = bool(snapshot.pid) and _alive(snapshot.pid) and now - snapshot.written < STALE_AFTER_S
    written = snapshot.queue if isinstance(snapshot.queue, dict) else {}
    snapshot.queue = {name: written.get(name, 0) for name in QUEUE_DIRS
                      if type(written.get(name, 0)) is int} | queue_counts(spool_dir)
    snapshot.processes = read_processes(spool_dir)
    return snapshot


def format_status(snapshot: StatusSnapshot) -> str:
    lines = []
    if snapshot.running:
        lines.append(f"mta-lite: running (pid {snapshot.pid}, up {int(snapshot.written - snapshot.started)}s)")
    else:
        lines.append("mta-lite: not running")
    if snapshot.config:
        lines.append(f"config: {snapshot.config}")
    for name, entry in sorted(snapshot.processes.items()):
        if entry.get("state") not in (None, "running"):
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(_number(entry.get("since"))))
            lines.append(f"{name}: {str(entry.get('state')).replace('_', ' ')} since {since}: {entry.get('reason', '')}")
    if snapshot.running and isinstance(snapshot.clock, dict) and snapshot.clock.get("state") == "not_set":
        floor = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(_number(snapshot.clock.get("trusted_floor"))))
        lines.append(f"clock: not set (earlier than {floor}): mail for smarthosts with TLS waits for it")
    lines.append("queue: " + ", ".join(f"{k} {v}" for k, v in snapshot.queue.items()))
    for name, relay in sorted(snapshot.relays.items()):
        extra = f"  last_error: {relay['last_error']}" if relay.get("last_error") else ""
        lines.append(f"relay {name}: {_state(relay)}  sent={relay.get('sent', 0)} "
                     f"deferred={relay.get('deferred', 0)} bounced={relay.get('bounced', 0)}{extra}")
        if isinstance(relay.get("oauth"), dict):
            lines.extend(_oauth_lines(relay["oauth"], snapshot.written))
    if snapshot.smtpd:
        lines.append("smtpd: " + ", ".join(f"{k}={v}" for k, v in sorted(snapshot.smtpd.items())))
    return "\n".join(lines)


def _oauth_lines(oauth: dict, now: float) -> list[str]:
    """An OAuth account's token health: `oauth m365: token ok until ...`, the last failure,
    and the warnings given well before something breaks (never a token: there is none here)."""
    name = str(oauth.get("provider", "?"))
    until = _number(oauth.get("token_until"))
    if oauth.get("failed"):
        lines = [f"  oauth {name}: token refresh failed: {oauth['failed']}"]
    elif until > now:
        lines = [f"  oauth {name}: token ok until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}"]
    else:
        lines = [f"  oauth {name}: no valid token yet (one is asked for at the next delivery)"]
    warnings = oauth.get("warnings")
    return lines + [f"  oauth {name}: warning: {w}" for w in (warnings if isinstance(warnings, list) else [])]


def _number(value) -> float:
    return float(value) if type(value) in (int, float) else 0.0


def _state(relay: dict) -> str:
    """`throttled until 14:05:00 UTC`, `auth_failed until ...`, `unreachable since ...`."""
    state = relay.get("state", "?")
    until = {"throttled": relay.get("throttled_until"), "auth_failed": relay.get("paused_until")}.get(state)
    if until:
        return f"{state} until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}"
    if state == "unreachable" and relay.get("unreachable_since"):
        return f"{state} since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(relay['unreachable_since']))}"
    return state
