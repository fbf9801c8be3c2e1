"""arrival — accept connections and hold them as bare sockets until they speak, leave or a wait ends.

A listener whose pre-greeting hook can decide at connect time, without awaiting, "send these
bytes and wait up to S seconds for the client's first bytes" (postscreen's pregreet test)
accepts through a Doorway instead of asyncio's server. A client held that way costs its
socket, one Held object and a place in its listener's Waiting: an epoll set of its own
(one loop reader for all held clients) and Deadlines (one loop timer): no asyncio reader
registration, transport, TimerHandle, protocol, task, coroutine frames, StreamReader,
StreamWriter or timeout context (about 8 KiB more each, with thousands of idle clients
held). When the socket becomes readable (bytes, EOF or an error: nothing is read here, only
peeked at) or the wait ends, the owner gets the socket back (a client that hung up without
a word needs no streams: the owner just closes it) and starts the session task, which wraps
it in asyncio streams (streams_on) and reads what the client sent from there, as if it had
waited itself.
The owner (the listener) provides arrived(sock, ip), which answers, admits or refuses the
client (Held.start() to hold it), and resume(token, sock, event).
Guarantees: nothing a client sends is read or dropped before the session's streams have it;
a held client is resumed exactly once, or aborted; accept errors (out of file descriptors)
pause accepting for a second, as asyncio's server does, and never end the listener.
Must never: run a session itself, or hold a client without a deadline.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import select
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("mta_lite.smtpd")

# What resume() is told: the client sent something (bytes, or an error, waiting on the
# socket), it hung up without a word (EOF, seen by peeking), or the wait ended with nothing;
# None: there was no wait.
INPUT = "input"
HANGUP = "hangup"
TIMEOUT = "timeout"
# asyncio.start_server's StreamReader limit (its _DEFAULT_LIMIT), so both paths read alike.
STREAM_LIMIT = 64 * 1024
# asyncio's defaults: the listen backlog, and accepts per readiness event.
BACKLOG = 100
# Clients are held only where the kernel has epoll (Linux, the box's); elsewhere a listener
# runs its pre-greeting hook in the session task instead (Listener.start).
EPOLL = hasattr(select, "epoll")
# Out of file descriptors or memory: stop accepting this long (asyncio's ACCEPT_RETRY_DELAY).
ACCEPT_RETRY_DELAY_S = 1.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True, slots=True)
class Hold:
    """Send `teaser` at once, then wait up to `wait_s` for the client's first bytes."""

    wait_s: float
    teaser: bytes


class Deadlines:
    """When held clients' waits end, with one loop timer: clients wait one of a few durations
    (postscreen: the greet wait, or its stress value), so each duration's clients are due in
    the order they came, a deque each. A client woken early stays in its deque, emptied of
    its socket, until its turn (expire() then does nothing)."""

    def __init__(self) -> None:
        self.queues: dict[float, deque[tuple[float, Held]]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.next_due = math.inf

    def add(self, held: Held, wait_s: float) -> None:
        due = asyncio.get_running_loop().time() + wait_s
        self.queues.setdefault(wait_s, deque()).append((due, held))
        if due < self.next_due:
            self._arm(due)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.queues.clear()

    def _arm(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_at(due, self._fire)
        self.next_due = due

    def _fire(self) -> None:
        self.timer, self.next_due = None, math.inf
        now = asyncio.get_running_loop().time()
        for queue in self.queues.values():
            while queue and queue[0][0] <= now:
                queue.popleft()[1].expire()
        due = min((queue[0][0] for queue in self.queues.values() if queue), default=None)
        if due is not None:
            self._arm(due)


class Waiting:
    """Where one listener's held clients wait: their sockets in an epoll set of their own,
    which the loop watches as one reader, and their Deadlines. Holding a client costs an
    epoll_ctl() to add it and one to take it out, and its wake-up a dict lookup; asyncio's
    add_reader()/remove_reader() per socket added a handle, a selector key and their
    bookkeeping each time, the largest part of smtpd's own work for a client that is held
    and hangs up (docs/benchmark.md, "Postscreen"). Needs epoll (Linux): see EPOLL."""

    def __init__(self) -> None:
        self.deadlines = Deadlines()
        self._by_fd: dict[int, Held] = {}
        self._epoll: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, held: Held, wait_s: float) -> None:
        if self._epoll is None:
            self._loop = asyncio.get_running_loop()
            self._epoll = select.epoll()        # close-on-exec, like every descriptor here
            self._loop.add_reader(self._epoll.fileno(), self._ready)
        fd = held.sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._by_fd[fd] = held
        self.deadlines.add(held, wait_s)

    def unwatch(self, held: Held) -> None:
        fd = held.sock.fileno()
        if self._by_fd.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def held(self) -> list[Held]:
        """The clients waiting now (a copy: aborting one takes it out)."""
        return list(self._by_fd.values())

    def _ready(self) -> None:
        for fd, _ in self._epoll.poll(0):
            held = self._by_fd.get(fd)
            if held is not None:
                held.wake()

    def close(self) -> None:
        """After every held client was resumed or aborted: the timer and the set go."""
        self.deadlines.close()
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


class Held:
    """One client held before its session task (see the module docstring)."""

    __slots__ = ("owner", "sock", "token", "waiting")

    def __init__(self, owner: Any, sock: socket.socket, token: Any) -> None:
        self.owner, self.sock, self.token = owner, sock, token
        self.waiting: Waiting | None = None

    def start(self, hold: Hold, waiting: Waiting) -> None:
        try:
            if hold.teaser:
                self.sock.send(hold.teaser)     # a fresh socket's buffer takes a short line
        except OSError:
            self._resume(INPUT)                 # reset already: the session's read will tell
            return
        self.waiting = waiting
        waiting.watch(self, hold.wait_s)

    def expire(self) -> None:
        if self.owner is not None:
            self._stop()
            self._resume(TIMEOUT)

    def wake(self) -> None:
        """The socket is readable: bytes, EOF or an error."""
        try:
            peeked = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return                              # not readable after all: keep waiting
        except OSError:
            peeked = b"!"                       # reset: the session's read will tell
        self._stop()
        self._resume(INPUT if peeked else HANGUP)

    def _stop(self) -> None:
        self.waiting.unwatch(self)

    def _resume(self, event: str) -> None:
        owner, sock, token = self.owner, self.sock, self.token
        self.owner = self.sock = self.token = self.waiting = None   # the deadline's entry keeps only this
        owner.resume(token, sock, event)

    def abort(self, last_words: bytes) -> None:
        """The owner shuts down: send `last_words` (if the socket takes them), close."""
        self._stop()
        sock, self.owner, self.sock, self.token = self.sock, None, None, None
        try:
            sock.send(last_words)
        except OSError:
            pass  # gone or not reading: closing is all that is left
        sock.close()


class Doorway:
    """Accepts on one listening socket and hands each connection to the owner."""

    def __init__(self, owner: Any, sock: socket.socket) -> None:
        self.owner, self.sock = owner, sock

    def open(self) -> None:
        self.sock.setblocking(False)
        self.sock.listen(BACKLOG)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(BACKLOG):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._pause(exc)
                    return
                log.warning("warning: accept: %s", exc.strerror)   # that client only
                continue
            conn.setblocking(False)
            self.owner.arrived(conn, addr)

    def _pause(self, exc: OSError) -> None:
        log.warning("warning: cannot accept connections for %.0f s: %s", ACCEPT_RETRY_DELAY_S, exc.strerror)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.sock.fileno())
        loop.call_later(ACCEPT_RETRY_DELAY_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self.sock.fileno() >= 0:            # not closed meanwhile
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)


async def streams_on(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams on an accepted socket, as asyncio.start_server would make them."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
