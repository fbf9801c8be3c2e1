"""console_protocol — the serial console's line protocol, as a pure state machine.

    proto = ConsoleProtocol(actions, clock, log)
    proto.greeting()        the lines to send when the port opens
    proto.feed(data)        bytes as they arrive (any chunking) -> response lines
    proto.tick()            call about once a second: drops a stalled upload
    proto.stream = send     optional: lines a slow command has ready go out at once

115200 8N1, ASCII, one command per line; CR, LF or CRLF ends a line; keywords are
case-insensitive. Every reply ends with one line `OK ...` or `ERR ...`; data lines before it
start with `| `. Commands:

    HELLO                     OK mta-lite console 1  (also sent when the port opens; drops an upload)
    HELP                      | the commands; OK
    STATUS                    | mta_lite.status lines; OK
    QUEUE                     | counts, the oldest messages and why each waits; OK N messages
    LOG [N]                   | the last N log lines (default 20, at most 200), secrets masked; OK
    TEST RELAY <name>         | each step of `relay test`, as it happens; OK ... passed | ERR ... failed
    OAUTH LOGIN <name>        | `oauth login`'s URL and code at once, then its result; OK ... done | ERR ...
    FLUSH                     OK flush: N messages  (deferred mail is tried again now)
    REPORT [JSON]             | the diagnostics report (board/report.py) as text, or the same as JSON; OK
    CONFIG SHOW               | the effective config as TOML, secrets masked; OK
    CONFIG GENERATIONS        | one line per kept generation, newest first; OK
    CONFIG BEGIN <size>       OK send <size> bytes as base64 lines
    DATA <base64>             OK <received> of <size> bytes
    CONFIG COMMIT <sha256>    OK generation N installed (config DIGEST) | OK generation N already installed
    CONFIG ABORT              OK upload dropped
    CONFIG ROLLBACK [N]       OK generation N installed (config DIGEST)

Guarantees: the same bytes give the same replies however they are chunked. Every reply line
is printable ASCII ended by CRLF (board/console_lines.py frames the lines). An upload is
installed only after its size and SHA-256 match what the sender declared
(board/console_upload.py has the upload's own rules), and then only through configgen (C1),
which changes nothing unless the config validates. A line other than DATA, CONFIG COMMIT,
CONFIG ABORT or HELLO during an upload drops the upload; so does UPLOAD_IDLE_S without a line.
Slow commands (QUEUE, LOG, TEST RELAY, OAUTH LOGIN, FLUSH, REPORT) ask the relay through its
command line (board/relaycli.py); the I/O edge runs the protocol off the event loop
(board/console.py), and TEST RELAY and OAUTH LOGIN hand each line to `stream` as it comes
(OAUTH LOGIN then waits, up to the provider code's 15 minutes, for the person to approve). A relay is tested at most once per
RELAY_TEST_INTERVAL_S and a report made at most once per REPORT_INTERVAL_S, so that the
console cannot make the box hammer a smarthost with logins; REPORT JSON sends the report
REPORT made in this session (or makes one).
Noise: a line that is too long, holds a control or non-ASCII byte, or names no command is
answered `ERR ...`, but of consecutive such lines at most one per NOISE_ERR_INTERVAL_S is
answered, so that line noise cannot make the box talk without end. Any other reply resets
this; HELLO is always answered.
SECURITY: every byte is untrusted (GUARANTEES C3): lines are capped at MAX_LINE_BYTES, an
upload at its declared size (at most configgen.MAX_CONFIG_BYTES), arguments to fixed forms
(a relay name must be one the config has, a count a number in range), and no input makes
feed() raise. A reply never includes the line it answers, and never a secret: CONFIG SHOW
masks passwords, configgen's errors never show one, and every line from the relay or its log
comes through the actions already masked (board/redact.py) (S3).
Must never: do I/O itself (files go through the injected ConsoleActions), echo input, or let
an exception out of feed() or tick().
"""

from __future__ import annotations

import re
import time
import traceback
from typing import Callable, Protocol

from mta_lite.config.generations import MAX_CONFIG_BYTES, ApplyResult, Generation
from mta_lite.errors import ConfigError

from mta_lite_board import console_upload
from mta_lite_board.console_lines import MAX_LINE_BYTES, LineReader, ascii_line, printable
from mta_lite_board.console_upload import UPLOAD_IDLE_S, UPLOAD_SOURCE, Upload
from mta_lite_board.logsource import LogTail, LogUnavailableError
from mta_lite_board.relaycli import RelayCliError, RelayTest
from mta_lite_board.report import Report

PROTOCOL_VERSION = 1
GREETING = f"OK mta-lite console {PROTOCOL_VERSION}"
# Line noise on an open UART can be continuous; one ERR per second of it is enough to show
# that the link is bad, and keeps the box from flooding a slow line with replies.
NOISE_ERR_INTERVAL_S = 1.0
# LOG without N shows a screenful; more than 200 lines is ~40 KiB, 3.5 s at 115200 baud, and a
# report (REPORT, or a stick's EXPORT) is the way to take 500 away.
LOG_DEFAULT_LINES = 20
MAX_LOG_LINES = 200
# A smarthost may lock an account that logs in too often (S5 is our side of the same care).
RELAY_TEST_INTERVAL_S = 10.0
REPORT_INTERVAL_S = 30.0

_GENERATION = re.compile(r"[0-9]{1,6}")
_COUNT = re.compile(r"[0-9]{1,4}")
# Relay names are TOML keys; one a person can type on the console is a bare key.
_RELAY_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
COMMANDS = ("HELLO", "HELP", "STATUS", "QUEUE", "LOG", "TEST RELAY", "OAUTH LOGIN", "FLUSH", "REPORT",
            "CONFIG SHOW", "CONFIG GENERATIONS", "CONFIG BEGIN", "DATA", "CONFIG COMMIT", "CONFIG ABORT", "CONFIG ROLLBACK")
HELP = (
    "Type a command and press Enter; every answer ends with a line OK ... or ERR ...",
    "HELLO                     check the link (drops an upload)",
    "HELP                      this list",
    "STATUS                    is the relay running, is mail waiting, are the accounts ok",
    "QUEUE                     mail waiting, and why the oldest messages wait",
    f"LOG [N]                   the last N log lines (default {LOG_DEFAULT_LINES}, at most {MAX_LOG_LINES}), "
    "passwords masked",
    "TEST RELAY <name>         log in to that smarthost without sending mail, step by step",
    "OAUTH LOGIN <name>        authorise the relay at [oauth.<name>]: a URL and a code to enter on a phone",
    "FLUSH                     try deferred mail again now",
    "REPORT [JSON]             everything a helper needs (as the stick's EXPORT), as text or JSON",
    "CONFIG SHOW               the config in use, passwords masked",
    "CONFIG GENERATIONS        kept config generations, newest first",
    "CONFIG ROLLBACK [N]       install generation N (default: the one before)",
    "Uploads (mta-lite-provision apply FILE does these for you):",
    f"CONFIG BEGIN <size>       upload a config of <size> bytes (1..{MAX_CONFIG_BYTES})",
    f"DATA <base64>             one part of the upload (lines up to {MAX_LINE_BYTES} bytes)",
    "CONFIG COMMIT <sha256>    check the upload's size and SHA-256, validate, install",
    "CONFIG ABORT              drop the upload",
)


class ConsoleActions(Protocol):
    """What the console may do to the box; the real one works on files (board.console)."""

    def status(self) -> str: ...                                  # format_status() text
    def config_show(self) -> str: ...                             # TOML, secrets masked
    def generations(self) -> list[Generation]: ...
    def apply(self, data: bytes, source: str) -> ApplyResult: ...
    def rollback(self, number: int | None) -> ApplyResult: ...
    # The slow ones: every line they return or hand to on_line is masked already.
    def relay_names(self) -> list[str]: ...
    def relay_test(self, name: str, on_line: Callable[[str], None]) -> RelayTest: ...
    def oauth_names(self) -> list[str]: ...
    def oauth_login(self, name: str, on_line: Callable[[str], None]) -> RelayTest: ...
    def log(self, count: int) -> LogTail: ...
    def queue(self) -> list[str]: ...
    def flush(self) -> str: ...
    def report(self) -> Report: ...


def error_location(exc: BaseException) -> str:
    """`KeyError at console.py:123`: where an unexpected error happened, without its message,
    which could hold anything the failing code had in hand."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rpartition('/')[2]}:{frames[-1].lineno}" if frames else ""
    return type(exc).__name__ + where


class ConsoleProtocol:
    """One console session (see the module docstring); a reopened port gets a new one."""

    def __init__(self, actions: ConsoleActions, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda message: None) -> None:
        self._actions, self._clock, self._log = actions, clock, log
        self._lines = LineReader()
        self._upload: Upload | None = None
        self._noise_at: float | None = None     # when the last reply, a noise ERR, went out
        self._out: list[bytes] = []             # reply lines of the current feed()
        self._last_run: dict[str, float] = {}   # rate-limited command -> when it last ran
        self._report: Report | None = None
        self.stream: Callable[[list[bytes]], None] | None = None

    def greeting(self) -> list[bytes]:
        return [ascii_line(GREETING)]

    def feed(self, data: bytes) -> list[bytes]:
        for line in self._lines.feed(data):     # None: a line over MAX_LINE_BYTES
            self._emit(self._end_line(line))
        out, self._out = self._out, []
        return out

    def _emit(self, texts: list[str]) -> None:
        """Reply lines, in order: with a stream, out at once (with any that wait before them)."""
        self._out += [ascii_line(text) for text in texts]
        if self.stream is not None and self._out:
            lines, self._out = self._out, []
            self.stream(lines)

    def tick(self) -> list[bytes]:
        if self._upload is None or not self._upload.idle(self._clock()):
            return []
        self._drop_upload(f"no data for {UPLOAD_IDLE_S:.0f}s")
        return [ascii_line(f"ERR upload dropped after {UPLOAD_IDLE_S:.0f}s without data")]

    # ------------------------------------------------------------------ lines

    def _end_line(self, line: bytes | None) -> list[str]:
        now = self._clock()
        if self._upload is not None and self._upload.idle(now):
            self._drop_upload(f"no data for {UPLOAD_IDLE_S:.0f}s")
        if line is None:
            return self._noise(f"line too long (limit {MAX_LINE_BYTES} bytes)", now)
        if not printable(line):
            return self._noise("control or non-ASCII byte in line", now)
        words = line.decode("ascii").split()
        if not words:
            return []                   # empty lines are ignored
        verb, args = _verb(words)
        if verb not in COMMANDS:
            return self._noise("unknown command; try HELP", now)
        self._noise_at = None
        if self._upload is not None and verb not in ("DATA", "CONFIG COMMIT", "CONFIG ABORT", "HELLO"):
            self._drop_upload(f"{verb} during the upload")
            return ["ERR upload dropped: expected DATA, CONFIG COMMIT or CONFIG ABORT"]
        return self._run(verb, args, now)

    def _noise(self, problem: str, now: float) -> list[str]:
        if self._upload is not None:
            self._noise_at = None
            self._drop_upload(problem)
            return [f"ERR upload dropped: {problem}"]
        if self._noise_at is not None and now - self._noise_at < NOISE_ERR_INTERVAL_S:
            return []
        self._noise_at = now
        return [f"ERR {problem}"]

    def _run(self, verb: str, args: list[str], now: float) -> list[str]:
        handler = getattr(self, "cmd_" + verb.replace(" ", "_"))
        try:
            return handler(args, now)
        except ConfigError as exc:
            self._log(f"console: {verb}: {exc}")
            return [f"ERR {exc}"]
        except (RelayCliError, LogUnavailableError) as exc:
            return [f"ERR {verb}: {exc}"]
        except OSError as exc:
            self._log(f"console: {verb}: {exc.strerror or type(exc).__name__}")
            return [f"ERR {verb}: {exc.strerror or type(exc).__name__}"]
        except Exception as exc:        # the console must outlive a bug (STYLE, Errors 2)
            self._log(f"console: {verb}: internal error: {error_location(exc)}")
            return [f"ERR {verb}: internal error (logged)"]

    def _drop_upload(self, why: str) -> None:
        if self._upload is not None:
            self._log(f"console: upload of {self._upload.size} bytes dropped: {why}")
        self._upload = None

    # ------------------------------------------------------------------ commands

    def cmd_HELLO(self, args: list[str], now: float) -> list[str]:
        self._drop_upload("HELLO")
        return [GREETING]

    def cmd_HELP(self, args: list[str], now: float) -> list[str]:
        return [f"| {line}" for line in HELP] + ["OK"]

    def cmd_STATUS(self, args: list[str], now: float) -> list[str]:
        return _block(self._actions.status())

    def cmd_CONFIG_SHOW(self, args: list[str], now: float) -> list[str]:
        return _block(self._actions.config_show())

    def cmd_CONFIG_GENERATIONS(self, args: list[str], now: float) -> list[str]:
        lines = [f"| {_generation_line(g)}" for g in self._actions.generations()]
        return (lines or ["| no generations kept yet"]) + ["OK"]

    def cmd_CONFIG_BEGIN(self, args: list[str], now: float) -> list[str]:
        self._upload, reply = console_upload.begin(args, now)
        return [reply]

    def cmd_DATA(self, args: list[str], now: float) -> list[str]:
        if self._upload is None:
            return ["ERR no upload in progress"]
        dropped, reply = console_upload.add(self._upload, args, now)
        if dropped:
            self._drop_upload(dropped)
        return [reply]

    def cmd_CONFIG_COMMIT(self, args: list[str], now: float) -> list[str]:
        upload, self._upload = self._upload, None
        if upload is None:
            return ["ERR no upload in progress"]
        refusal = console_upload.verify(upload, args)
        if refusal is not None:
            self._log(refusal.log)
            return [refusal.reply]
        return self._installed(self._actions.apply(bytes(upload.data), UPLOAD_SOURCE), UPLOAD_SOURCE)

    def cmd_CONFIG_ABORT(self, args: list[str], now: float) -> list[str]:
        if self._upload is None:
            return ["ERR no upload in progress"]
        self._drop_upload("CONFIG ABORT")
        return ["OK upload dropped"]

    def cmd_CONFIG_ROLLBACK(self, args: list[str], now: float) -> list[str]:
        if len(args) > 1 or args and not _GENERATION.fullmatch(args[0]):
            return ["ERR usage: CONFIG ROLLBACK [N]"]
        number = int(args[0]) if args else None
        return self._installed(self._actions.rollback(number), "rollback")

    def cmd_QUEUE(self, args: list[str], now: float) -> list[str]:
        if args:
            return ["ERR usage: QUEUE"]
        return [f"| {line}" for line in self._actions.queue()] + ["OK"]

    def cmd_LOG(self, args: list[str], now: float) -> list[str]:
        if len(args) > 1 or args and not _COUNT.fullmatch(args[0]):
            return ["ERR usage: LOG [N]"]
        count = int(args[0]) if args else LOG_DEFAULT_LINES
        if not 1 <= count <= MAX_LOG_LINES:
            return [f"ERR N must be 1 to {MAX_LOG_LINES} (REPORT has the last 500)"]
        tail = self._actions.log(count)
        return [f"| {line}" for line in tail.lines] + [f"OK {len(tail.lines)} lines from {tail.source}"]

    def cmd_TEST_RELAY(self, args: list[str], now: float) -> list[str]:
        name, refusal = self._one_name(args, "TEST RELAY <name> (CONFIG SHOW lists the [relays.NAME])",
                                       self._actions.relay_names, "no relay of that name")
        if refusal:
            return refusal
        wait = self._too_soon(f"TEST RELAY {name}", now, RELAY_TEST_INTERVAL_S)
        if wait:
            return [f"ERR wait {wait} s before testing {name} again (a smarthost may lock an account "
                    "that logs in too often)"]
        return self._streamed("relay test", self._actions.relay_test, name, "passed")

    def cmd_OAUTH_LOGIN(self, args: list[str], now: float) -> list[str]:
        name, refusal = self._one_name(args, "OAUTH LOGIN <name> (CONFIG SHOW lists the [oauth.NAME])",
                                       self._actions.oauth_names, "no [oauth] of that name")
        if refusal:
            return refusal
        wait = self._too_soon(f"OAUTH LOGIN {name}", now, RELAY_TEST_INTERVAL_S)
        if wait:
            return [f"ERR wait {wait} s before logging in to {name} again"]
        return self._streamed("oauth login", self._actions.oauth_login, name, "done")

    @staticmethod
    def _one_name(args: list[str], usage: str, names, unknown: str) -> tuple[str, list[str]]:
        """The one NAME argument if the config has it (names() lists them); else "" and the
        ERR line to answer."""
        if len(args) != 1 or not _RELAY_NAME.fullmatch(args[0]):
            return "", [f"ERR usage: {usage}"]
        known = names()
        if args[0] not in known:
            return "", [f"ERR {unknown}; the config has: {', '.join(known) or 'none'}"]
        return args[0], []

    def _streamed(self, what: str, run, name: str, done: str) -> list[str]:
        """Run a relay command whose output lines go out as they come ("| ..."), then its verdict."""
        result = run(name, lambda line: self._emit([f"| {line}"]))
        if result.problem:
            return [f"ERR {what} of {name} did not finish: {result.problem}"]
        return [f"OK {what} of {name} {done}" if result.ok else f"ERR {what} of {name} failed"]

    def cmd_FLUSH(self, args: list[str], now: float) -> list[str]:
        if args:
            return ["ERR usage: FLUSH"]
        return [f"OK {self._actions.flush()} (deferred mail is tried again now)"]

    def cmd_REPORT(self, args: list[str], now: float) -> list[str]:
        if len(args) > 1 or args and args[0].upper() != "JSON":
            return ["ERR usage: REPORT [JSON]"]
        if not args or self._report is None:
            wait = self._too_soon("REPORT", now, REPORT_INTERVAL_S)
            if wait:
                return [f"ERR wait {wait} s: a report was made just now (REPORT JSON sends it again)"]
            self._report = self._actions.report()
        text = self._report.json if args else self._report.text
        lines = text.splitlines()
        return [f"| {line}" for line in lines] + [f"OK report: {len(lines)} lines"]

    def _too_soon(self, key: str, now: float, interval_s: float) -> int:
        """Seconds to wait before `key` may run again (0: now, and it counts as run)."""
        last = self._last_run.get(key)
        if last is not None and now - last < interval_s:
            return max(1, round(interval_s - (now - last)))
        self._last_run[key] = now
        return 0

    def _installed(self, result: ApplyResult, source: str) -> list[str]:
        if not result.changed:
            return [f"OK generation {result.generation} already installed"]
        self._log(f"console: {source}: {result.describe()}")
        return [f"OK {result.describe()}"]


def _verb(words: list[str]) -> tuple[str, list[str]]:
    first = words[0].upper()
    if first in ("CONFIG", "TEST", "OAUTH") and len(words) > 1:
        return f"{first} {words[1].upper()}", words[2:]
    return first, words[1:]


def _block(text: str) -> list[str]:
    return [f"| {line}" for line in text.splitlines()] + ["OK"]


def _generation_line(gen: Generation) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(gen.mtime))
    return (f"{gen.number}  {when}  {gen.size} bytes  config {gen.digest}"
            + ("  (installed)" if gen.current else ""))
