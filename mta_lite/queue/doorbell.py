"""doorbell — the queue manager's doorbell: a unix datagram socket at spool/public/qmgr.

Other processes (sendmail, `queue flush`, `queue release`, the SMTP listener in its own
process) send one byte: W new mail in incoming/, F flush (retry everything deferred now),
R rescan (a message was held, released or deleted). The smtpd process also sends its
counters as `S{json}` every few seconds, so that the status file the queue manager writes
shows both halves without giving smtpd any write access to the spool's public/ directory. A ring is only a hint: the queue manager
also rescans its directories periodically, so a lost datagram delays mail, never loses it.

Guarantees: ring() never blocks and never fails because no queue manager is listening.
listen() refuses to steal the socket of a queue manager that is still running. The socket
is mode 0660: the mail group may ring it, other local users may not.
SECURITY: a datagram is untrusted local input; only the three known bytes and a small
JSON object of integer counters mean anything.
Must never: act on a payload it does not know, or deliver anything itself.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
from typing import Callable

from mta_lite.errors import SpoolError

NEW_MAIL, FLUSH, RESCAN, STATS = b"W", b"F", b"R", b"S"
RINGS = (NEW_MAIL, FLUSH, RESCAN)
# Counters are a handful of small integers; anything bigger is not ours.
MAX_STATS_BYTES = 2048
SOCKET_MODE = 0o660
# "Nobody listens" or "the doorbell is already ringing" (buffer full): both are fine to ignore.
_QUIET_ERRNOS = {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ENOBUFS}

log = logging.getLogger("mta_lite.qmgr")


def socket_path(spool_root_or_path: str) -> str:
    """A spool root (a directory) -> its public/qmgr; anything else is taken as the socket itself."""
    if os.path.isdir(spool_root_or_path):
        return os.path.join(spool_root_or_path, "public", "qmgr")
    return spool_root_or_path


def ring(spool_root_or_path: str, what: bytes = NEW_MAIL) -> bool:
    """Ring the doorbell; True if a queue manager got it. Other OSErrors (EACCES) propagate:
    the caller logs them, and the periodic rescan finds the mail anyway."""
    with Doorbell(spool_root_or_path) as bell:
        return bell.ring(what)


class Doorbell:
    """A sender for the doorbell that keeps its socket: the smtpd process rings once per
    accepted message, and a socket per ring would cost more than the ring."""

    def __init__(self, spool_root_or_path: str) -> None:
        self.path = socket_path(spool_root_or_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def _send(self, data: bytes) -> bool:
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno in _QUIET_ERRNOS:
                return False
            raise
        return True

    def ring(self, what: bytes = NEW_MAIL) -> bool:
        if what not in RINGS:
            raise ValueError(f"unknown ring {what!r}")
        return self._send(what)

    def stats(self, counters: dict[str, int]) -> bool:
        return self._send(STATS + json.dumps(counters, separators=(",", ":")).encode())

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Doorbell":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_stats(data: bytes) -> dict[str, int] | None:
    """`S{"connections": 3, ...}` -> the counters, or None for anything else."""
    if len(data) > MAX_STATS_BYTES or data[:1] != STATS:
        return None
    try:
        counters = json.loads(data[1:])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(counters, dict) or not all(
            isinstance(k, str) and len(k) < 40 and type(v) is int for k, v in counters.items()):
        return None
    return counters


def _someone_listens(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


class _DoorbellProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_ring: Callable[[bytes], None], on_stats: Callable[[dict], None] | None) -> None:
        self.on_ring = on_ring
        self.on_stats = on_stats

    def datagram_received(self, data: bytes, addr) -> None:
        counters = parse_stats(data) if self.on_stats else None
        if data in RINGS:
            self.on_ring(data)
        elif counters is not None:
            self.on_stats(counters)
        else:
            log.warning("doorbell: ignored unknown datagram of %d bytes", len(data))

    def error_received(self, exc: Exception) -> None:
        log.warning("doorbell: %s", exc)


class DoorbellSocket:
    """The listening doorbell; close() removes the socket file."""

    def __init__(self, path: str, transport: asyncio.DatagramTransport) -> None:
        self.path = path
        self._transport = transport

    def close(self) -> None:
        self._transport.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


async def listen(path: str, on_ring: Callable[[bytes], None],
                 on_stats: Callable[[dict], None] | None = None) -> DoorbellSocket:
    """Bind the doorbell at `path`, replacing a stale socket left by a crash."""
    if os.path.exists(path):
        if _someone_listens(path):
            raise SpoolError(errno.EADDRINUSE, f"{path}: another queue manager is running")
        os.unlink(path)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DoorbellProtocol(on_ring, on_stats), local_addr=path, family=socket.AF_UNIX)
    os.chmod(path, SOCKET_MODE)
    return DoorbellSocket(path, transport)
