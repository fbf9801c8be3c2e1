"""logsource — the last lines of the relay's log, from the journal or from a file.

    source = default_source()                    the journal, else /var/log/mta-lite/maillog
    source = default_source("/var/log/x.log")    that file only (--log-file)
    tail = source.tail(500)                      LogTail(source="journal (mta-lite*)", lines=[...])

On the box the relay logs to stderr and systemd keeps that in the journal, under the units
mta-lite (`mta-lite serve`) or mta-lite-smtpd and mta-lite-qmgr; the board's own units are
mta-lite-board and mta-lite-usbstick@DEVICE. `journalctl --unit=mta-lite*` reads all of them in
order. Where the journal cannot be read (no journalctl, no journal files, a user outside
systemd-journal), the image's copy of those lines on the data partition is read instead,
and anywhere else a file given with --log-file (the tests give the relay's stderr file).
Guarantees: a tail holds at most the lines asked for, each at most MAX_LINE_CHARS; no source
reads more than lines x MAX_LINE_BYTES, nor waits past JOURNAL_TIMEOUT_S. Lines come as
written: masking and escaping are the caller's (board/redact.py).
Must never: change, rotate or follow a log; run journalctl with anything but fixed words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from mta_lite.errors import MtaLiteError

from mta_lite_board.command import Children, CommandError, run_command

JOURNAL_UNITS = ("mta-lite*",)
DEFAULT_LOG_FILE = "/var/log/mta-lite/maillog"
# The journal answers in well under a second; on a full SD card it may take a few.
JOURNAL_TIMEOUT_S = 30.0
# A maillog line is ~200 bytes; a traceback line or a long reply can be longer.
MAX_LINE_BYTES = 2048
MAX_LINE_CHARS = 1000
READ_BLOCK_BYTES = 64 * 1024
JOURNAL_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "",
               "SYSTEMD_LESS": ""}


class LogUnavailableError(MtaLiteError, OSError):
    """This source has no lines to give (no journal, no file, no permission)."""


@dataclass(frozen=True)
class LogTail:
    source: str             # where the lines came from, for a person: "journal (mta-lite*)"
    lines: list[str]


class JournalLog:
    """`journalctl --unit=PATTERN... -n N -o short`."""

    def __init__(self, units: Sequence[str] = JOURNAL_UNITS, journalctl: str = "journalctl",
                 children: Children | None = None) -> None:
        self.units, self.journalctl, self.children = tuple(units), journalctl, children
        self.name = f"journal ({', '.join(self.units)})"

    def tail(self, count: int) -> LogTail:
        argv = [self.journalctl, "--no-pager", "--quiet", "-o", "short", "-n", str(count),
                *(f"--unit={unit}" for unit in self.units)]
        try:
            done = run_command(argv, timeout_s=JOURNAL_TIMEOUT_S, limit_bytes=count * MAX_LINE_BYTES + 4096,
                               env=JOURNAL_ENV, children=self.children)
        except CommandError as exc:
            raise LogUnavailableError(f"{self.name}: {exc}") from None
        if done.timed_out or done.cancelled:
            raise LogUnavailableError(f"{self.name}: journalctl did not answer")
        if done.returncode != 0:
            raise LogUnavailableError(f"{self.name}: {_first_line(done.stderr) or 'journalctl failed'}")
        # "-- No entries --" and "-- Boot 1a2b... --" are journalctl's markers, not log lines.
        lines = [line for line in _lines(done.stdout) if not (line.startswith("-- ") and line.endswith(" --"))]
        if not lines:
            reason = _first_line(done.stderr) or "no entries"
            raise LogUnavailableError(f"{self.name}: {reason}")
        return LogTail(self.name, lines[-count:])


class FileLog:
    """The end of a text file, read backwards in blocks."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"file {path}"

    def tail(self, count: int) -> LogTail:
        budget = count * MAX_LINE_BYTES
        try:
            with open(self.path, "rb") as handle:
                end = handle.seek(0, os.SEEK_END)
                data, start = b"", end
                while start > 0 and data.count(b"\n") <= count and end - start < budget:
                    step = min(READ_BLOCK_BYTES, start, budget - (end - start))
                    start -= step
                    handle.seek(start)
                    data = handle.read(step) + data
        except OSError as exc:
            raise LogUnavailableError(f"{self.name}: {exc.strerror or type(exc).__name__}") from None
        lines = _lines(data)
        if start > 0 and lines:
            lines = lines[1:]           # the first one read is probably the end of a longer line
        return LogTail(self.name, lines[-count:])


class FirstOf:
    """The first source that has lines; LogUnavailableError naming every reason otherwise."""

    def __init__(self, *sources) -> None:
        self.sources = sources
        self.name = " or ".join(source.name for source in sources)

    def tail(self, count: int) -> LogTail:
        reasons = []
        for source in self.sources:
            try:
                return source.tail(count)
            except LogUnavailableError as exc:
                reasons.append(str(exc))
        raise LogUnavailableError("; ".join(reasons))


def default_source(log_file: str | None = None, children: Children | None = None):
    """--log-file FILE: that file. Otherwise the journal, then the image's maillog file."""
    if log_file:
        return FileLog(log_file)
    return FirstOf(JournalLog(children=children), FileLog(DEFAULT_LOG_FILE))


def _lines(data: bytes) -> list[str]:
    return [line.rstrip("\r")[:MAX_LINE_CHARS] for line in data.decode("utf-8", "replace").split("\n") if line.strip()]


def _first_line(data: bytes) -> str:
    return next((line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()), "")[:200]
