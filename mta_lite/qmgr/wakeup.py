"""wakeup — the queue manager's doorbell: a unix datagram socket at spool/public/qmgr.

Other processes (sendmail, `queue flush`, `queue release`, the SMTP listener in its own
process) send one byte: W new mail in incoming/, F flush (retry everything deferred now),
R rescan (a message was held, released or deleted). A poke is only a hint: the queue manager
also rescans its directories periodically, so a lost datagram delays mail, never loses it.

Guarantees: poke() never blocks and never fails because no queue manager is listening.
listen() refuses to steal the socket of a queue manager that is still running. The socket
is mode 0660: the mail group may poke it, other local users may not.
SECURITY: a datagram is untrusted local input; only the three known bytes mean anything.
Must never: act on a payload it does not know, or deliver anything itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Callable

from ..errors import SpoolError

WAKE, FLUSH, RESCAN = b"W", b"F", b"R"
POKES = (WAKE, FLUSH, RESCAN)
SOCKET_MODE = 0o660
# "Nobody listens" or "the doorbell is already ringing" (buffer full): both are fine to ignore.
_QUIET_ERRNOS = {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ENOBUFS}

log = logging.getLogger("mta_lite.qmgr")


def socket_path(spool_root_or_path: str) -> str:
    """A spool root (a directory) -> its public/qmgr; anything else is taken as the socket itself."""
    if os.path.isdir(spool_root_or_path):
        return os.path.join(spool_root_or_path, "public", "qmgr")
    return spool_root_or_path


def poke(spool_root_or_path: str, what: bytes = WAKE) -> bool:
    """Ring the doorbell; True if a queue manager got it. Other OSErrors (EACCES) propagate:
    the caller logs them, and the periodic rescan picks the mail up anyway."""
    if what not in POKES:
        raise ValueError(f"unknown poke {what!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(what, socket_path(spool_root_or_path))
        except OSError as exc:
            if exc.errno in _QUIET_ERRNOS:
                return False
            raise
    return True


def _someone_listens(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


class _Doorbell(asyncio.DatagramProtocol):
    def __init__(self, on_poke: Callable[[bytes], None]) -> None:
        self.on_poke = on_poke

    def datagram_received(self, data: bytes, addr) -> None:
        if data in POKES:
            self.on_poke(data)
        else:
            log.warning("wake-up socket: ignored unknown datagram of %d bytes", len(data))

    def error_received(self, exc: Exception) -> None:
        log.warning("wake-up socket: %s", exc)


class WakeupSocket:
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


async def listen(path: str, on_poke: Callable[[bytes], None]) -> WakeupSocket:
    """Bind the doorbell at `path`, replacing a stale socket left by a crash."""
    if os.path.exists(path):
        if _someone_listens(path):
            raise SpoolError(errno.EADDRINUSE, f"{path}: another queue manager is running")
        os.unlink(path)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Doorbell(on_poke), local_addr=path, family=socket.AF_UNIX)
    os.chmod(path, SOCKET_MODE)
    return WakeupSocket(path, transport)
