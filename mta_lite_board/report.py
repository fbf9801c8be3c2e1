"""report — the facts a helper needs when mail does not go out, without a login to the box.

    diag = Diagnostics(config_path, RelayCli(config_path), default_source())
    report = diag.build()           Report(data, text, json)
    report.text                     mta-lite-report.txt: sections a person reads, CRLF
    report.json                     mta-lite-report.json: the same data
    queue_summary(cli, redactor, n) the queue counts and the n oldest messages with `queue why`

Sections: version, clock, disk, status, queue (counts, the oldest messages and why each is
held back), a `relay test` of every [relays.NAME], the config as `config show` prints it
(the relay masks its secrets), and the last LOG_LINES log lines (board/logsource.py). A
section that cannot be had holds its reason under "error"; the others are still there.
The stick's EXPORT (board/usbstick.py) and the console's REPORT (board/console_protocol.py)
write exactly this.

Guarantees: no message content is ever read: the queue is seen through `queue list --json`
(envelope, size, state) and `queue why`; every string from the relay, the log or the system
passes through the Redactor (the passwords and password hashes of the config in use and of
every kept generation, and their base64 forms, become ********) before it enters the data,
and the finished text and JSON are masked once more. Every line is printable ASCII. The text
and the JSON each fit in MAX_REPORT_BYTES: the oldest log lines are left out first.
Must never: read a queue file, show a recipient list, or let a secret through.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from mta_lite import __version__

from mta_lite_board.command import CommandError, run_command
from mta_lite_board.logsource import LogUnavailableError
from mta_lite_board.redact import Redactor, printable
from mta_lite_board.relaycli import RelayCli, RelayCliError

REPORT_FORMAT = 1
LOG_LINES = 500
QUEUE_OLDEST = 10
# Big enough for 500 full log lines, small enough for a serial line (~15 s at 115200 baud)
# and for the console's output buffer (board/console.py).
MAX_REPORT_BYTES = 200 * 1024
MAX_LINE_CHARS = 300
# The report runs every relay's test at once; one that hangs is cut off here, not after
# `relay test`'s own 20 s per step, so that a stick's export ends in good time.
REPORT_RELAY_TEST_TIMEOUT_S = 60.0
MAX_PARALLEL_TESTS = 4
TEXT_EOL = "\r\n"           # for any PC's editor, as RESULT.TXT


def utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def queue_summary(cli: RelayCli, redactor: Redactor, oldest: int) -> dict:
    """Counts by state and the `oldest` messages by arrival, each with its `queue why` line.
    Sender and recipient count only: no recipient list, no content."""
    items = cli.queue()
    counts: dict[str, int] = {}
    for item in items:
        state = str(item.get("state", "?"))
        counts[state] = counts.get(state, 0) + 1
    first = sorted(items, key=lambda item: (_number(item.get("arrival")), str(item.get("id"))))[:oldest]
    why = {line.partition(":")[0]: line for line in cli.why([str(item.get("id", "")) for item in first])}
    shown = []
    for item in first:
        queue_id = str(item.get("id", ""))
        recipients = item.get("recipients")
        shown.append({
            "id": redactor.line(queue_id, 64),
            "state": redactor.line(str(item.get("state", "?")), 20),
            "arrival": utc(_number(item.get("arrival"))),
            "size": int(_number(item.get("size"))),
            "attempts": int(_number(item.get("attempts"))),
            "sender": redactor.line(str(item.get("sender") or "MAILER-DAEMON"), 200),
            "recipients": len(recipients) if isinstance(recipients, list) else 0,
            "why": redactor.line(why.get(queue_id, "(no answer from queue why)"), MAX_LINE_CHARS),
        })
    return {"messages": len(items), "counts": dict(sorted(counts.items())), "oldest": shown}


def queue_lines(summary: dict) -> list[str]:
    """The summary for a person: a count line, then two lines per message."""
    if not summary["messages"]:
        return ["the queue is empty"]
    counts = ", ".join(f"{state} {number}" for state, number in summary["counts"].items())
    lines = [f"{summary['messages']} message{'s' if summary['messages'] != 1 else ''} in the queue: {counts}"]
    if summary["oldest"]:
        lines.append(f"the oldest {len(summary['oldest'])}:")
    for item in summary["oldest"]:
        lines.append(f"{item['id']}  {item['state']}  {item['size']} bytes  arrived {item['arrival']}  "
                     f"from <{item['sender']}>  {item['recipients']} recipient(s)  {item['attempts']} attempt(s)")
        lines.append(f"  why: {item['why'].partition(': ')[2] or item['why']}")
    return lines


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class Report:
    data: dict
    text: str           # printable ASCII, CRLF
    json: str           # ASCII


class Diagnostics:
    """Collects the report (see the module docstring)."""

    def __init__(self, config_path: str, relay: RelayCli, log_source, now: Callable[[], float] = time.time,
                 redactor: Callable[[], Redactor] | None = None, timedatectl: str = "timedatectl") -> None:
        self.config_path, self.relay, self.log_source, self.now = config_path, relay, log_source, now
        self.redactor_for = redactor or (lambda: Redactor.for_config(config_path))
        self.timedatectl = timedatectl

    def build(self) -> Report:
        redactor = self.redactor_for()
        data = self.collect(redactor)
        return Report(data, render_text(data, redactor), render_json(data, redactor))

    def collect(self, redactor: Redactor) -> dict:
        when = self.now()
        config = self._section(redactor, self._config)
        data = {
            "report": "mta-lite diagnostics", "format": REPORT_FORMAT, "generated": utc(when),
            "version": self._section(redactor, self._version),
            "clock": self._section(redactor, lambda r: self._clock(when)),
            "disk": self._section(redactor, lambda r: self._disk(config.get("spool_dir"))),
            "status": self._section(redactor, self._status),
            "queue": self._section(redactor, lambda r: queue_summary(self.relay, r, QUEUE_OLDEST)),
            "relay_tests": self._section(redactor, lambda r: self._relay_tests(r, config)),
            "config": {key: value for key, value in config.items() if key != "spool_dir"},
            "log": self._section(redactor, self._log),
            "notes": [] if redactor.complete else
                     ["the config's own passwords could not be read: masking relies on the relay's"],
        }
        return fit(data, redactor)

    def _section(self, redactor: Redactor, collect: Callable[[Redactor], dict]) -> dict:
        try:
            return collect(redactor)
        except (RelayCliError, LogUnavailableError, OSError, ValueError) as exc:
            return {"error": redactor.line(str(exc), MAX_LINE_CHARS)}

    def _version(self, redactor: Redactor) -> dict:
        uname = platform.uname()
        return {"mta-lite": __version__, "python": platform.python_version(),
                "system": redactor.line(f"{uname.system} {uname.release} {uname.machine}", 200)}

    def _clock(self, when: float) -> dict:
        clock = {"utc": utc(when), "local": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(when)),
                 "synchronized": self._synchronized()}
        try:
            with open("/proc/uptime") as handle:
                clock["uptime_s"] = int(float(handle.read().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        return clock

    def _synchronized(self) -> str:
        """timedatectl's NTPSynchronized, "yes" or "no"; "unknown" where there is no timedated."""
        try:
            done = run_command([self.timedatectl, "show", "--property=NTPSynchronized", "--value"], timeout_s=10,
                               limit_bytes=100, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
        except CommandError:
            return "unknown"
        answer = done.stdout.strip().decode("ascii", "replace")
        return answer if done.returncode == 0 and answer in ("yes", "no") else "unknown"

    def _disk(self, spool_dir: str | None) -> dict:
        places = {"config": os.path.dirname(os.path.abspath(self.config_path))}
        if spool_dir:
            places["spool"] = spool_dir
        disk = {}
        for name, path in places.items():
            try:
                usage = shutil.disk_usage(path)
                disk[name] = {"path": printable(path), "total_bytes": usage.total, "free_bytes": usage.free}
            except OSError as exc:
                disk[name] = {"path": printable(path), "error": exc.strerror or type(exc).__name__}
        return disk

    def _status(self, redactor: Redactor) -> dict:
        lines = [redactor.line(line, MAX_LINE_CHARS) for line in self.relay.status_text().splitlines()]
        return {"lines": lines}

    def _config(self, redactor: Redactor) -> dict:
        text = self.relay.config_show()
        parsed = tomllib.loads(text)
        return {"lines": [redactor.line(line, MAX_LINE_CHARS) for line in text.splitlines()],
                "relays": [printable(name) for name in parsed.get("relays", {})],
                "spool_dir": parsed.get("spool_dir")}

    def _relay_tests(self, redactor: Redactor, config: dict) -> dict:
        if "error" in config:
            return {"error": "no relay names: the config did not load"}
        names = config.get("relays", [])
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_TESTS) as pool:
            results = list(pool.map(lambda name: self.relay.relay_test(name, timeout_s=REPORT_RELAY_TEST_TIMEOUT_S),
                                    names))
        return {"relays": [{"name": printable(result.name), "ok": result.ok,
                            "lines": [redactor.line(line, MAX_LINE_CHARS) for line in result.lines],
                            **({"problem": redactor.line(result.problem, MAX_LINE_CHARS)} if result.problem else {})}
                           for result in results]}

    def _log(self, redactor: Redactor) -> dict:
        tail = self.log_source.tail(LOG_LINES)
        return {"source": printable(tail.source), "left_out": 0,
                "lines": [redactor.line(line, MAX_LINE_CHARS) for line in tail.lines]}


def fit(data: dict, redactor: Redactor) -> dict:
    """Leave out the oldest log lines until text and JSON fit MAX_REPORT_BYTES."""
    log = data.get("log", {})
    while max(len(render_text(data, redactor)), len(render_json(data, redactor))) > MAX_REPORT_BYTES:
        lines = log.get("lines") or []
        if not lines:
            break
        cut = max(1, len(lines) // 10)
        log["lines"], log["left_out"] = lines[cut:], log.get("left_out", 0) + cut
    return data


def render_json(data: dict, redactor: Redactor | None = None) -> str:
    text = json.dumps(data, indent=1, ensure_ascii=True) + "\n"
    return redactor.mask(text) if redactor else text


def render_text(data: dict, redactor: Redactor | None = None) -> str:
    lines = [f"{data['report']} (format {data['format']}), generated {data['generated']}", ""]
    for title, key, body in _SECTIONS:
        lines.append(f"== {title} ==")
        section = data.get(key, {})
        lines += [f"not available: {section['error']}"] if "error" in section else body(section)
        lines.append("")
    lines += [f"note: {note}" for note in data.get("notes", [])]
    text = TEXT_EOL.join(lines) + TEXT_EOL
    return redactor.mask(text) if redactor else text


def _pairs(section: dict) -> list[str]:
    return [f"{key}: {value}" for key, value in section.items()]


def _disk_lines(section: dict) -> list[str]:
    lines = []
    for name, place in section.items():
        if "error" in place:
            lines.append(f"{name} {place['path']}: {place['error']}")
        else:
            lines.append(f"{name} {place['path']}: {place['free_bytes'] // 2**20} MiB free of "
                         f"{place['total_bytes'] // 2**20} MiB")
    return lines


def _relay_lines(section: dict) -> list[str]:
    lines = []
    for test in section.get("relays", []):
        lines.append(f"-- relay test {test['name']}: {'ok' if test['ok'] else 'FAILED'} --")
        lines += test["lines"] + ([f"could not finish: {test['problem']}"] if test.get("problem") else [])
    return lines or ["no [relays] configured"]


def _log_lines(section: dict) -> list[str]:
    head = [f"the last {len(section['lines'])} lines from {section['source']}"
            + (f" ({section['left_out']} older lines left out to fit)" if section.get("left_out") else "")]
    return head + section["lines"]


_SECTIONS = (
    ("Version", "version", _pairs),
    ("Clock", "clock", _pairs),
    ("Disk", "disk", _disk_lines),
    ("Status", "status", lambda section: section["lines"]),
    ("Queue", "queue", queue_lines),
    ("Relay tests", "relay_tests", _relay_lines),
    ("Config (secrets masked)", "config", lambda section: section["lines"]),
    ("Log", "log", _log_lines),
)
