"""console — the serial console's I/O edge: a serial port, asyncio, and the protocol.

    console = SerialConsole("/dev/ttyS0", lambda: ConsoleProtocol(FileActions(config_path)))
    await console.run()         # until cancelled

The port is opened with pyserial (115200 8N1, exclusive lock, non-blocking) and read with
loop.add_reader() on its file descriptor: no threads. Bytes go to a ConsoleProtocol (one per
opening of the port), its replies back to the port through a bounded output buffer.
FileActions is the protocol's view of the box: the status file, the config and configgen.

Guarantees: the console survives the port going away (USB serial unplugged, a pty closed:
EIO, EOF, SerialException): it logs one line, closes the port and reopens it with backoff
(REOPEN_MIN_S doubling to REOPEN_MAX_S) until it is back, and logs one line then. A port
needs a file descriptor (a tty or a pty; pyserial's loop:// has none).
SECURITY: the bytes read are untrusted; only the protocol looks at them, and the log never
shows them, nor a reply. An unexpected error in the protocol is logged as its type and
place, never its message, and the console goes on.
Must never: block the event loop on a port nobody reads (writes are non-blocking and the
buffer is capped), crash, or log a secret.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Callable

import serial
import tomli_w

from mta_lite.config import generations as configgen
from mta_lite.config.load import effective_dict, load_config
from mta_lite.status import format_status, read_status

from mta_lite_board.console_protocol import ConsoleProtocol, error_location

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

log = logging.getLogger("board")


class FileActions:
    """The console's actions on the real files: `config_path`, and the spool from --spool or
    from the config (read each time: an upload may move it)."""

    def __init__(self, config_path: str, spool_dir: str | None = None) -> None:
        self.config_path, self.spool_dir = config_path, spool_dir

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


def open_port(port: str) -> serial.Serial:
    """pyserial's port for a device path or URL, non-blocking, locked against a second user."""
    return serial.serial_for_url(port, baudrate=BAUDRATE, timeout=0, write_timeout=0, exclusive=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno)) + f" ({exc.strerror})"
    return str(exc) or type(exc).__name__


class _Link:
    """One open port: reads into the protocol, writes its replies, reports the end."""

    def __init__(self, port: serial.Serial, proto: ConsoleProtocol, loop: asyncio.AbstractEventLoop,
                 on_first_bytes: Callable[[], None]) -> None:
        self.port, self.proto, self.loop, self.on_first_bytes = port, proto, loop, on_first_bytes
        self.fd = port.fileno()
        self.gone: asyncio.Future[str] = loop.create_future()
        self.got_bytes = False
        self._pending = bytearray()
        self._writing = False
        self._overflow_logged = False

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._readable)
        self.send(self.proto.greeting())

    def close(self) -> None:
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
        self.send(self._guarded(self.proto.feed, data))

    def tick(self) -> None:
        self.send(self._guarded(self.proto.tick))

    def _guarded(self, call: Callable, *args) -> list[bytes]:
        try:
            return call(*args)
        except Exception as exc:        # a bug in the protocol must not end the console
            log.error("console: internal error: %s", error_location(exc))
            return []

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
    """The console on `port` (device path or pyserial URL), reopened whenever it goes away."""

    def __init__(self, port: str, make_protocol: Callable[[], ConsoleProtocol],
                 opener: Callable[[str], serial.Serial] = open_port) -> None:
        self.port, self.make_protocol, self.opener = port, make_protocol, opener
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
        link = _Link(handle, self.make_protocol(), loop, self._stable)
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
