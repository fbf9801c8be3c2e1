"""stream — buffered input and deferred output for one SMTP connection (asyncio streams).

SmtpStream reads command lines with a hard length limit, hands DATA over in chunks, and
holds replies until the client's input is drained, the way Postfix flushes only when it
would otherwise block on a read (RFC 2920 pipelining). pending() tells whether the client
has sent more than was processed: our buffer, asyncio's buffer and, before TLS, the
kernel's socket buffer (Postfix peekfd()). discard_input() drops all of it (STARTTLS).
Guarantees: buffered input never exceeds MAX_COMMAND_LINE_BYTES + READ_CHUNK_BYTES while
reading commands; an over-long line is discarded to its end, keeping only its last bytes
so the caller can still tell a bare LF. Every read and drain that can block has the command
timeout, kept by one Watchdog timer per connection (watchdog.py); one that cannot block
(input already buffered, output all sent) is not guarded.
SECURITY: handles untrusted bytes but interprets none of them beyond finding LF.
Must never: block on a read while replies are still held back.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import termios

from mta_lite.reply import Reply
from mta_lite.smtpd.watchdog import Watchdog
from mta_lite.text import printable

# Postfix line_length_limit: RFC 5321 section 4.5.3.1.4 allows 512 octets for a command
# line; 2048 leaves room for long addresses plus ESMTP parameters.
MAX_COMMAND_LINE_BYTES = 2048
# One read from the socket; also the most command input we look ahead at.
READ_CHUNK_BYTES = 64 * 1024
# A client that pipelines without reading could make us buffer replies without end;
# past this we flush (and block on drain) even with more input waiting.
MAX_PENDING_OUTPUT_BYTES = 64 * 1024
# How long a hang-up may wait for the last reply to drain; the peer may not be reading.
HANGUP_WAIT_S = 5.0


class ConnectionLost(ConnectionError):
    """The client closed the connection (EOF) or the TLS handshake failed."""


def reader_buffered(reader: asyncio.StreamReader) -> int:
    # StreamReader has no public "bytes available" call; _buffer has been its bytearray
    # since Python 3.4. Without it we could neither flush only when input is drained nor
    # discard what a client pipelined behind STARTTLS.
    return len(getattr(reader, "_buffer", b""))


def kernel_pending(writer: asyncio.StreamWriter) -> int:
    """Bytes the kernel holds for us that asyncio has not read yet (FIONREAD; EOF is 0)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except (OSError, ValueError):
        return 0
    return count[0]


class SmtpStream:
    """Buffered input and deferred output for one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self.reader, self.writer, self.timeout_s = reader, writer, timeout_s
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.tls = False
        # A whole command line must arrive within this (Postfix smtpd_per_request_deadline,
        # on under stress): a client that sends one byte every few seconds never trips the
        # per-read timeout. None: per-read timeouts only.
        self.command_deadline_s: float | None = None
        self.watchdog = Watchdog()          # the per-read and per-drain timeout

    def queue(self, reply: Reply) -> None:
        data = reply.to_bytes()
        self.out.append(data)
        self.out_bytes += len(data)

    async def flush(self) -> None:
        if self.out:
            data, self.out, self.out_bytes = b"".join(self.out), [], 0
            self.writer.write(data)
            if not self.writer.transport.get_write_buffer_size():
                # All sent at once (the usual case): drain() cannot block, since a transport
                # that holds nothing has resumed writing; nothing to guard.
                await self.writer.drain()
                return
            await self.watchdog.guard(self.writer.drain(), self.timeout_s)

    def pending(self) -> bool:
        """Has the client sent more than we have processed?"""
        if self.buf or reader_buffered(self.reader):
            return True
        # Raw socket bytes mean nothing once TLS is on (records, not commands).
        return not self.tls and kernel_pending(self.writer) > 0

    def preview(self) -> str:
        """The start of unprocessed input, for a log line; cut at AUTH, whose payload and
        the responses after it must never be logged (S3)."""
        data = bytes(self.buf[:100])
        cut = data.upper().find(b"AUTH")
        if cut >= 0:
            data = data[:cut] + b"AUTH [not logged]"
        return printable(data.decode("ascii", "replace"), 100)

    async def fill(self) -> None:
        if not reader_buffered(self.reader) or self.out_bytes > MAX_PENDING_OUTPUT_BYTES:
            await self.flush()
        if reader_buffered(self.reader):
            data = await self.reader.read(READ_CHUNK_BYTES)     # there already: cannot block
        else:
            data = await self.watchdog.guard(self.reader.read(READ_CHUNK_BYTES), self.timeout_s)
        if not data:
            raise ConnectionLost("end of input")
        self.buf += data

    async def read_line(self) -> tuple[bytes, bool]:
        """(line up to and including LF, False), or (its last two bytes, True) when over-long."""
        if self.command_deadline_s is None:
            return await self._read_line()
        async with asyncio.timeout(self.command_deadline_s):
            return await self._read_line()

    async def _read_line(self) -> tuple[bytes, bool]:
        while True:
            nl = self.buf.find(b"\n", 0, MAX_COMMAND_LINE_BYTES)
            if nl >= 0:
                line = bytes(self.buf[: nl + 1])
                del self.buf[: nl + 1]
                return line, False
            if len(self.buf) >= MAX_COMMAND_LINE_BYTES:
                return await self._discard_line(), True
            await self.fill()

    async def _discard_line(self) -> bytes:
        last = b""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                tail = (last + bytes(self.buf[: nl + 1]))[-2:]
                del self.buf[: nl + 1]
                return tail
            last = bytes(self.buf[-1:]) or last
            self.buf.clear()
            await self.fill()

    async def read_chunk(self) -> bytes:
        if not self.buf:
            await self.fill()
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def unread(self, data: bytes) -> None:
        self.buf[:0] = data

    async def discard_input(self) -> int:
        """Drop everything received so far; returns the number of bytes dropped."""
        dropped = len(self.buf)
        self.buf.clear()
        while (waiting := reader_buffered(self.reader)):
            dropped += len(await self.reader.read(waiting))  # does not block: data is there
        return dropped

    def hang_up_now(self, reply: Reply) -> None:
        """Without awaiting (we may be cancelled): send what is held plus `reply`, close."""
        self.queue(reply)
        self.watchdog.stop()
        data, self.out, self.out_bytes = b"".join(self.out), [], 0
        try:
            self.writer.write(data)
            self.writer.close()        # the transport flushes what it holds, then closes
        except (OSError, RuntimeError):
            pass  # already closing or gone: there is nobody left to tell

    async def close(self) -> None:
        """Flush what is held (briefly), then close."""
        # asyncio.timeout rather than wait_for: no extra task per wait (every connection ends here).
        try:
            async with asyncio.timeout(HANGUP_WAIT_S):
                await self.flush()
        except (OSError, TimeoutError):
            pass  # the peer is gone or not reading; nothing more we can tell it
        self.watchdog.stop()
        self.writer.close()
        try:
            async with asyncio.timeout(HANGUP_WAIT_S):
                await self.writer.wait_closed()
        except (OSError, TimeoutError):
            pass  # same: closing a dead or stuck connection is all that is left
