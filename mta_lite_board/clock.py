"""clock — the owner's view of the box's clock: ask NTP servers how far off it is, and say so.

On the box systemd-timesyncd keeps the time; this check only measures. ClockCheck asks the
servers of `[board] ntp_servers` (ntplib, in a worker thread: the event loop never waits
on the network) at start and every CHECK_INTERVAL_S, every RETRY_INTERVAL_S while none
answers, and writes a small report that the status page (its own process and user) and
the LEDs read:

    REPORT_PATH  /run/mta-lite-board/clock.json   (--runtime-dir: the board unit's
                                                   RuntimeDirectory=mta-lite-board)
    {"checked": 1796600000.2,     when the check ended (this box's clock, epoch seconds)
     "server": "pool.ntp.org",    the server that answered; "" if none did
     "offset_s": 0.0132,          server time minus this box's time; null if none answered
     "error": "",                 why none answered ("" if one did); names servers only
     "alert": false,              the alert LED shows the clock (board.patterns WINK)
     "alert_after_s": 2.0}        |offset_s| beyond this raises the alert (OFFSET_ALERT_S)

The alert is raised when |offset_s| > OFFSET_ALERT_S, or when no server has answered for
NO_ANSWER_ALERT_S (counted on the monotonic clock, which an NTP step does not move).

Guarantees: the report is replaced atomically, mode 0644, and its directory is made
traversable, so the page's user can read it and nothing else; a failing server, a name that
does not resolve or garbage from the network ends in `error`, never in an exception out of
the loop. Must never: set the system clock, block the event loop, or put anything but host
names, numbers and error words in the report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import ntplib

from mta_lite import safeio

log = logging.getLogger("board.clock")

RUNTIME_DIR = "/run/mta-lite-board"
REPORT_NAME = "clock.json"
REPORT_PATH = os.path.join(RUNTIME_DIR, REPORT_NAME)
# Every 15 minutes: timesyncd keeps the clock, this only watches it; NTP pools ask clients
# not to poll more often than that without need.
CHECK_INTERVAL_S = 900.0
# While no server answers (no network yet after boot, DNS down), look again every minute:
# the owner sees the clock come good soon after the network does.
RETRY_INTERVAL_S = 60.0
# TLS certificates and Kerberos-like checks tolerate seconds, but mail headers and logs
# from a box more than 2 s off already confuse people reading them side by side with others;
# a healthy timesyncd keeps a Pi within milliseconds.
OFFSET_ALERT_S = 2.0
# No answer for an hour: one failed check is a blip, an hour is a box that cannot keep time.
NO_ANSWER_ALERT_S = 3600.0
NTP_TIMEOUT_S = 5.0
NTP_PORT = 123
NTP_VERSION = 3


@dataclass(frozen=True)
class ClockReport:
    """One check's result: exactly the keys of REPORT_PATH (the page relies on them)."""

    checked: float
    server: str
    offset_s: float | None
    error: str
    alert: bool
    alert_after_s: float = OFFSET_ALERT_S

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def judge(offset_s: float | None, silent_s: float, alert_after_s: float = OFFSET_ALERT_S,
          no_answer_alert_s: float = NO_ANSWER_ALERT_S) -> bool:
    """Alert for an offset beyond alert_after_s, or no answer for no_answer_alert_s."""
    if offset_s is None:
        return silent_s >= no_answer_alert_s
    return abs(offset_s) > alert_after_s


def ask(servers: Sequence[str], port: int = NTP_PORT, timeout_s: float = NTP_TIMEOUT_S) -> tuple[str, float | None, str]:
    """(server, offset_s, error) from the first server that answers; blocking (run in a thread)."""
    client = ntplib.NTPClient()
    errors = []
    for server in servers:
        try:
            stats = client.request(server, version=NTP_VERSION, port=port, timeout=timeout_s)
        except (ntplib.NTPException, OSError) as exc:
            errors.append(f"{server}: {_why(exc)}")
            continue
        if math.isfinite(stats.offset):
            return server, float(stats.offset), ""
        errors.append(f"{server}: an answer without a usable time")
    return "", None, "no NTP server answered (" + "; ".join(errors or ["none configured"]) + ")"


def _why(exc: Exception) -> str:
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    if isinstance(exc, ntplib.NTPException):
        return "no answer" if "No response" in str(exc) else "invalid answer"
    return exc.strerror or type(exc).__name__


def write_report(directory: str, report: ClockReport) -> str:
    """Replace directory/clock.json (0644) atomically; the directory is made traversable."""
    os.makedirs(directory, exist_ok=True)
    mode = os.stat(directory).st_mode & 0o7777
    if mode & 0o111 != 0o111:
        os.chmod(directory, mode | 0o111)
    path = os.path.join(directory, REPORT_NAME)
    safeio.atomic_write(path, report.to_json(), mode=0o644)
    return path


def read_alert(path: str) -> bool:
    """The report's alert, for the LEDs; False for a missing or garbled report."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("alert") is True


class ClockCheck:
    """The board daemon's clock part: check, report, wait, until cancelled."""

    def __init__(self, servers: Sequence[str], directory: str = RUNTIME_DIR, *, port: int = NTP_PORT,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep=asyncio.sleep) -> None:
        self.servers, self.directory, self.port = tuple(servers), directory, port
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self._answered_at = monotonic()         # counting from start: a box never reached alerts too
        self._last_error = ""

    async def check_once(self) -> ClockReport:
        server, offset, error = await asyncio.to_thread(ask, self.servers, self.port)
        now = self.monotonic()
        if offset is not None:
            self._answered_at = now
        report = ClockReport(self.clock(), server, offset, error, judge(offset, now - self._answered_at))
        self._log(report)
        return report

    def _log(self, report: ClockReport) -> None:
        if report.error and report.error != self._last_error:
            log.warning("clock check: %s", report.error)
        elif report.offset_s is not None and (report.alert or self._last_error):
            log.log(logging.WARNING if report.alert else logging.INFO, "clock check: %s says the clock is off by %+.3f s",
                    report.server, report.offset_s)
        self._last_error = report.error

    async def run(self) -> None:
        while True:
            report = await self.check_once()
            try:
                write_report(self.directory, report)
            except OSError as exc:
                log.warning("cannot write the clock report in %s: %s", self.directory, exc.strerror)
            await self.sleep(RETRY_INTERVAL_S if report.offset_s is None else CHECK_INTERVAL_S)
