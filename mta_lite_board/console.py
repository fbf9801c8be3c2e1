"""console — the serial console's I/O edge: a serial port, asyncio, and the protocol.

    actions = FileActions(config_path)
    console = SerialConsole("/dev/ttyS0", lambda: ConsoleProtocol(actions), actions.children)
    await console.run()         # until cancelled

The port is opened with pyserial (115200 8N1, exclusive lock, non-blocking) and read with
loop.add_reader() on its file descriptor. Bytes go to a ConsoleProtocol (one per opening of
the port) in a worker thread of that opening's own, one call at a time and in order, so that
a slow command (a relay test, a report: the relay's command line, board/relaycli.py) never
stops the event loop and the LEDs beside it; replies come back to the loop and go to the port
through a bounded output buffer, lines a relay test streams as soon as they are ready.
FileActions is the protocol's view of the box: the status file, the config and configgen,
and the relay's command line, log and report, every line masked (board/redact.py).

Guarantees: the console survives the port going away (USB serial unplugged, a pty closed:
EIO, EOF, SerialException): it logs one line, closes the port and reopens it with backoff
(REOPEN_MIN_S doubling to REOPEN_MAX_S) until it is back, and logs one line then. A port
needs a file descriptor (a tty or a pty; pyserial's loop:// has none).
SECURITY: the bytes read are untrusted; only the protocol looks at them, and the log never
shows them, nor a reply. An unexpected error in the protocol is logged as its type and
place, never its message, and the console goes on.
Input waiting for the worker is capped at MAX_PENDING_INPUT_BYTES (beyond it, bytes are
dropped, as line noise would be); the relay commands a session started are killed when its
port goes away.
Must never: block the event loop on a port nobody reads (writes are non-blocking and the
buffer is capped) or on a slow command, crash, or log a secret.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import threading
from typing import Callable

import serial
import tomli_w

from mta_lite.config import generations as configgen
from mta_lite.config.load import effective_dict, load_config
from mta_lite.status import format_status, read_status

from mta_lite_board.command import Children
from mta_lite_board.console_protocol import ConsoleProtocol, error_location
from mta_lite_board.logsource import LogTail, default_source
from mta_lite_board.redact import Redactor
from mta_lite_board.relaycli import DEFAULT_COMMAND, RelayCli, RelayTest
from mta_lite_board.report import Diagnostics, Report, queue_lines, queue_summary

BAUDRATE = 115200
READ_CHUNK_BYTES = 4096
# Replies are at most a few dozen KiB (CONFIG SHOW of the largest config); a port that nobody
# reads (a USB gadget port without a host) must not make the buffer grow without end.
MAX_PENDING_OUTPUT_BYTES = 256 * 1024
# Reopen quickly after an unplug (an operator is waiting at the other end), then back off:
# a failed open is cheap, but a port that is gone for hours needs no busy loop.
REOPEN_MIN_S = 0.1
REOPEN_MAX_S = 2.0
# A port that opens but fails at once (a USB gadget without a host reads EOF) is not "back"
# until it has delivered a byte or stayed up this long; until then it is one outage, one line.
STABLE_S = 5.0
# How often the protocol's tick() runs (the upload idle timeout needs no finer grain).
TICK_S = 1.0
# Bytes read but not yet handled by the worker: a person types a few lines while a relay test
# runs; a flood of noise beyond this is dropped rather than held.
MAX_PENDING_INPUT_BYTES = 64 * 1024
# A console line from the relay or its log is cut here (a screen is ~200 columns at most).
CONSOLE_LINE_CHARS = 300
# QUEUE shows why this many of the oldest messages wait.
CONSOLE_QUEUE_OLDEST = 5

log = logging.getLogger("board")


class FileActions:
    """The console's actions on the real files: `config_path`, and the spool from --spool or
    from the config (read each time: an upload may move it); the relay's command line and log
    for the slow ones."""

    def __init__(self, config_path: str, spool_dir: str | None = None, relay: RelayCli | None = None,
                 log_source=None) -> None:
        self.config_path, self.spool_dir = config_path, spool_dir
        self.relay = relay or RelayCli(config_path, DEFAULT_COMMAND)
        self.children: Children = self.relay.children
        self.log_source = log_source or default_source(children=self.children)
        self.diagnostics = Diagnostics(config_path, self.relay, self.log_source)

    def status(self) -> str:
        spool = self.spool_dir or load_config(self.config_path, secrets=False).spool_dir
        return format_status(read_status(spool))

    def config_show(self) -> str:
        return tomli_w.dumps(effective_dict(load_config(self.config_path, secrets=True)))

    def generations(self) -> list[configgen.Generation]:
        return configgen.generations(self.config_path)

    def apply(self, data: bytes, source: str) -> configgen.ApplyResult:
        return configgen.apply_config(self.config_path, data, source)

    def rollback(self, number: int | None) -> configgen.ApplyResult:
        return configgen.rollback(self.config_path, number)

    def relay_names(self) -> list[str]:
        return list(load_config(self.config_path, secrets=False).relays)

    def relay_test(self, name: str, on_line: Callable[[str], None]) -> RelayTest:
        redactor = Redactor.for_config(self.config_path)
        result = self.relay.relay_test(name, lambda line: on_line(redactor.line(line, CONSOLE_LINE_CHARS)))
        return RelayTest(result.name, result.ok, [redactor.line(line, CONSOLE_LINE_CHARS) for line in result.lines],
                         redactor.line(result.problem, CONSOLE_LINE_CHARS))

    def oauth_names(self) -> list[str]:
        return list(load_config(self.config_path, secrets=False).oauth)

    def oauth_login(self, name: str, on_line: Callable[[str], None]) -> RelayTest:
        redactor = Redactor.for_config(self.config_path)
        result = self.relay.oauth_login(name, lambda line: on_line(redactor.line(line, CONSOLE_LINE_CHARS)))
        return RelayTest(result.name, result.ok, [redactor.line(line, CONSOLE_LINE_CHARS) for line in result.lines],
                         redactor.line(result.problem, CONSOLE_LINE_CHARS))

    def log(self, count: int) -> LogTail:
        redactor = Redactor.for_config(self.config_path)
        tail = self.log_source.tail(count)
        return LogTail(tail.source, [redactor.line(line, CONSOLE_LINE_CHARS) for line in tail.lines])

    def queue(self) -> list[str]:
        return queue_lines(queue_summary(self.relay, Redactor.for_config(self.config_path), CONSOLE_QUEUE_OLDEST))

    def flush(self) -> str:
        return Redactor.for_config(self.config_path).line(self.relay.flush(), CONSOLE_LINE_CHARS)

    def report(self) -> Report:
        return self.diagnostics.build()


def open_port(port: str) -> serial.Serial:
    """pyserial's port for a device path or URL, non-blocking, locked against a second user."""
    return serial.serial_for_url(port, baudrate=BAUDRATE, timeout=0, write_timeout=0, exclusive=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)) + f" ({exc.strerror})"
    return str(exc) or type(exc).__name__


class _Worker:
    """Runs a protocol's calls one at a time, in order, in a thread of its own; hands each
    call's reply lines to `deliver` on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[bytes]], None]) -> None:
        self.loop, self.deliver = loop, deliver
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending_bytes = 0
        self._thread = threading.Thread(target=self._run, name="console-worker", daemon=True)
        self._thread.start()

    def submit(self, call: Callable, *args, size: int = 0) -> bool:
        """Queue call(*args); False (nothing queued) if `size` more bytes would pass the cap."""
        with self._lock:
            if self._pending_bytes + size > MAX_PENDING_INPUT_BYTES:
                return False
            self._pending_bytes += size
        self._tasks.put((call, args, size))
        return True

    def send_soon(self, lines: list[bytes]) -> None:
        """From the worker thread: lines to the port, through the loop."""
        try:
            self.loop.call_soon_threadsafe(self.deliver, lines)
        except RuntimeError:
            pass                    # the loop is closed: the daemon is stopping

    def stop(self) -> None:
        self._tasks.put(None)

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            call, args, size = task
            try:
                lines = call(*args)
            except Exception as exc:        # a bug in the protocol must not end the console
                log.error("console: internal error: %s", error_location(exc))
                lines = []
            with self._lock:
                self._pending_bytes -= size
            if lines:
                self.send_soon(lines)


class _Link:
    """One open port: reads into the protocol (through its worker), writes its replies,
    reports the end."""

    def __init__(self, port: serial.Serial, proto: ConsoleProtocol, loop: asyncio.AbstractEventLoop,
                 on_first_bytes: Callable[[], None], children: Children | None = None) -> None:
        self.port, self.proto, self.loop, self.on_first_bytes = port, proto, loop, on_first_bytes
        self.children = children
        self.fd = port.fileno()
        self.gone: asyncio.Future[str] = loop.create_future()
        self.got_bytes = False
        self._pending = bytearray()
        self._writing = False
        self._overflow_logged = False
        self._drop_logged = False
        self.worker: _Worker | None = None

    def start(self) -> None:
        if self.children is not None:
            self.children.reset()
        self.worker = _Worker(self.loop, self.send)
        self.proto.stream = self.worker.send_soon
        self.loop.add_reader(self.fd, self._readable)
        self.send(self.proto.greeting())

    def close(self) -> None:
        if self.children is not None:
            self.children.cancel()      # a relay test or report of this session: killed
        if self.worker is not None:
            self.worker.stop()
        self.loop.remove_reader(self.fd)
        if self._writing:
            self.loop.remove_writer(self.fd)
        try:
            self.port.close()
        except (serial.SerialException, OSError):
            pass                        # the device is gone already; nothing left to release

    def _fail(self, reason: str) -> None:
        if not self.gone.done():
            self.gone.set_result(reason)
        self.loop.remove_reader(self.fd)
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(_reason(exc))
            return
        if not data:
            self._fail("end of file")
            return
        if not self.got_bytes:
            self.got_bytes = True
            self.on_first_bytes()
        if not self.worker.submit(self.proto.feed, data, size=len(data)) and not self._drop_logged:
            log.warning("console: input dropped while a command runs (more than %d bytes waiting)",
                        MAX_PENDING_INPUT_BYTES)
            self._drop_logged = True

    def tick(self) -> None:
        self.worker.submit(self.proto.tick)

    def send(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        if not data or self.gone.done():
            return
        if len(self._pending) + len(data) > MAX_PENDING_OUTPUT_BYTES:
            if not self._overflow_logged:
                log.warning("console: nobody reads the port; replies are dropped")
                self._overflow_logged = True
            return
        self._pending += data
        self._flush()

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self._pending)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._pending.clear()
            self._fail(_reason(exc))
            return
        del self._pending[:written]
        self._overflow_logged = self._overflow_logged and bool(self._pending)
        if self._pending and not self._writing:
            self.loop.add_writer(self.fd, self._flush)
        elif not self._pending and self._writing:
            self.loop.remove_writer(self.fd)
        self._writing = bool(self._pending)


class SerialConsole:
    """The console on `port` (device path or pyserial URL), reopened whenever it goes away.
    `children`: the relay commands the protocol's actions run, killed when a port goes away."""

    def __init__(self, port: str, make_protocol: Callable[[], ConsoleProtocol],
                 opener: Callable[[str], serial.Serial] = open_port, children: Children | None = None) -> None:
        self.port, self.make_protocol, self.opener, self.children = port, make_protocol, opener, children
        self._down = False              # an outage has been logged and has not ended yet
        self._delay = REOPEN_MIN_S

    async def run(self) -> None:
        log.info("console: on %s", self.port)
        while True:
            handle = self._open()
            if handle is not None:
                reason = await self._serve(handle)
                self._outage(f"{self.port} gone: {reason}")
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, REOPEN_MAX_S)

    def _open(self) -> serial.Serial | None:
        try:
            handle = self.opener(self.port)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._outage(f"cannot open {self.port}: {_reason(exc)}")
            return None
        try:
            handle.fileno()
        except (OSError, AttributeError):   # io.UnsupportedOperation is an OSError
            handle.close()
            self._outage(f"{self.port} has no file descriptor to wait on")
            return None
        return handle

    def _outage(self, what: str) -> None:
        if not self._down:
            log.warning("console: %s; retrying", what)
            self._down = True

    def _stable(self) -> None:
        if self._down:
            log.info("console: %s back", self.port)
        self._down = False
        self._delay = REOPEN_MIN_S

    async def _serve(self, handle: serial.Serial) -> str:
        loop = asyncio.get_running_loop()
        link = _Link(handle, self.make_protocol(), loop, self._stable, self.children)
        opened = loop.time()
        try:
            link.start()
            while not link.gone.done():
                await asyncio.wait([link.gone], timeout=TICK_S)
                if loop.time() - opened >= STABLE_S:
                    self._stable()
                link.tick()
            return link.gone.result()
        finally:
            link.close()
