"""arrival — hold a new connection without a task or a stream until it speaks, leaves or a wait ends.

A listener whose pre-greeting hook can decide at connect time, without awaiting, "send these
bytes and wait up to S seconds for the client's first bytes" (postscreen's pregreet test)
takes its connections through an Arrival protocol. While it waits, an idle client costs its
transport, this object and one timer: no asyncio task, coroutine frames, StreamReader,
StreamWriter or timeout context (about 8 KiB more each, with thousands held). When the
client's first bytes, its EOF or the loss of the connection arrive, or the wait ends, the
Arrival hands the transport to asyncio streams, delivering the event to the streams'
protocol as the transport would have, and the owner starts the session task, which reads
the same bytes from the same StreamReader it would have read them from itself.
The owner (the listener) provides admit(transport) -> (token, Hold | None) | None (None:
refused, the owner has answered and closed) and resume(token, reader, writer, event).
Guarantees: a client's bytes are all delivered to the streams, in order, none interpreted;
each admitted connection is resumed exactly once, unless abort() ends it first.
Must never: run a session itself, or leave a held connection without a deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

# What resume() is told: the client sent something (bytes, EOF or a lost connection, all
# waiting in the StreamReader), or the wait ended with nothing; None: there was no wait.
INPUT = "input"
TIMEOUT = "timeout"
# asyncio.start_server's StreamReader limit (its _DEFAULT_LIMIT), so both paths read alike.
STREAM_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Hold:
    """Send `teaser` at once, then wait up to `wait_s` for the client's first bytes."""

    wait_s: float
    teaser: bytes


class Arrival(asyncio.Protocol):
    """One connection from accept until it is handed to asyncio streams (see the docstring)."""

    __slots__ = ("owner", "transport", "token", "timer")

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.token: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]
        admitted = self.owner.admit(transport)
        if admitted is None:
            self.owner = None               # refused: nothing more to do
            return
        self.token, hold = admitted
        if hold is None:
            self._hand_over(None)
            return
        if hold.teaser:
            transport.write(hold.teaser)    # type: ignore[attr-defined]
        self.timer = asyncio.get_running_loop().call_later(hold.wait_s, self._hand_over, TIMEOUT)

    def data_received(self, data: bytes) -> None:
        self._hand_over(INPUT).data_received(data)

    def eof_received(self) -> bool | None:
        return self._hand_over(INPUT).eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner is not None:
            self._hand_over(INPUT).connection_lost(exc)

    def abort(self, last_words: bytes) -> None:
        """The owner shuts down: send `last_words`, close, resume nothing."""
        self._stop_timer()
        self.owner = None
        self.transport.write(last_words)    # type: ignore[union-attr]
        self.transport.close()              # type: ignore[union-attr]

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _hand_over(self, event: str | None) -> asyncio.StreamReaderProtocol:
        """Give the transport to a StreamReaderProtocol, resume the owner; returns the protocol
        so that the event that woke us is delivered to it."""
        self._stop_timer()
        owner, self.owner = self.owner, None
        transport = self.transport
        reader = asyncio.StreamReader(limit=STREAM_LIMIT)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport.set_protocol(protocol)                    # type: ignore[union-attr]
        protocol.connection_made(transport)                 # type: ignore[arg-type]
        writer = asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())  # type: ignore[arg-type]
        owner.resume(self.token, reader, writer, event)
        return protocol
