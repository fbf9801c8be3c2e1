"""engine — the SMTP engine: one client's session driven over its stream, DATA into the queue.

SmtpEngine serves the clients of one listener once the listener has admitted them (and
postscreen, if any, has let them through): it sends the banner, feeds the pure
session.Session one command line at a time, flushes replies only when the client's input
is drained (Postfix pipelining behaviour), runs STARTTLS and the AUTH checks the session
asks for, and streams DATA through dotreader into the queue writer.
Guarantees: `250 ... queued as ID` is sent only after writer.commit() returned (G1); a
failed write or commit aborts the queue file and answers 451 4.3.0. Messages are never
held in memory: content goes to the queue file chunk by chunk (G5). Input pipelined
before PIPELINING was advertised gets 554 5.5.0 and a hang-up; input buffered before a
STARTTLS handshake is discarded (CVE-2011-0411 class). A LAN client's bare LF is taken as
CRLF only where its session says so (S2), and logged once per session. For LAN clients and
logged-in users a missing Date:, Message-ID: or From: is added on the way in (headers.py).
SECURITY: faces the network. Peers get SMTP replies only, never exception text; peer
bytes reach the log only through text.printable().
Must never: send 250 for a message that is not durably queued.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from mta_lite.config.schema import Config, Listen
from mta_lite.reply import (R250_OK, R354_DATA, R421_SHUTDOWN, R451_LOCAL_ERROR, R552_LINE_TOO_LONG, R552_TOO_BIG,
                            R554_SYNC, Reply)
from mta_lite.smtpd.auth import Authenticator, AuthRequest
from mta_lite.smtpd.conversation import line_error, with_host
from mta_lite.smtpd.dotreader import Content, DotReader, End, ProtocolError
from mta_lite.smtpd.handoff import Handoff
from mta_lite.smtpd.headers import MissingHeaders
from mta_lite.smtpd.session import Session, SessionContext
from mta_lite.smtpd.stream import MAX_PENDING_OUTPUT_BYTES, ConnectionLost, SmtpStream
from mta_lite.text import printable

log = logging.getLogger("mta_lite.smtpd")


class _Sink:
    """The queue writer of one message; a failed write or commit becomes a flag (G1)."""

    def __init__(self, writer: Any, commit: Callable[[Any], Awaitable[str]]) -> None:
        self.writer = writer
        self._commit = commit
        self.queue_id: str = writer.queue_id
        self.failed = False
        self.open = True

    def write(self, data: bytes) -> None:
        if not self.open:
            return
        try:
            self.writer.write(data)
        except OSError as exc:
            log.warning("%s: warning: queue file write error: %s", self.queue_id, exc)
            self.failed = True
            self.abort()

    async def commit(self) -> str | None:
        try:
            # fsync has no non-blocking form: the spool flushes in a worker thread, which keeps
            # the other sessions moving while the disk works, and sessions that finish
            # together share the flushes (queue/groupcommit.py). The 250 waits for it (G1).
            queue_id = await self._commit(self.writer)
        except OSError as exc:
            log.warning("%s: warning: queue file commit error: %s", self.queue_id, exc)
            self.failed = True
            self.abort()
            return None
        self.open = False
        return queue_id

    def abort(self) -> None:
        if not self.open:
            return
        self.open = False
        try:
            self.writer.abort()
        except Exception:  # noqa: BLE001 - abort() must not raise; if it does, log and go on
            log.exception("%s: queue file abort failed", self.queue_id)


@dataclass
class ListenerCounters:
    """Totals since start, for the status snapshot."""

    connections: int = 0   # connections admitted to a session
    refused: int = 0       # connections turned away by a connection limit or shutdown
    accepted: int = 0      # messages queued (250 after end of data)
    rejects: int = 0       # 4xx/5xx replies to MAIL, RCPT, DATA and end of data
    errors: int = 0        # sessions ended by an unexpected exception (a bug)

    def items(self):
        """Mapping view, so a status snapshot can sum the counters of all listeners."""
        return asdict(self).items()


@dataclass(slots=True)
class Client:
    """One connected client, as its listener keeps track of it."""

    task: asyncio.Task | None
    ip: str
    in_data: bool = False      # in DATA: a graceful close lets it finish


class SmtpEngine:
    """The SMTP engine of one listener; serve() runs one client's session to its end."""

    def __init__(self, cfg: Config, listen: Listen, spool: Any, ring: Callable[[], None], *,
                 clock: Callable[[], float], ssl_context: ssl.SSLContext | None,
                 auth: Authenticator | None, counters: ListenerCounters, stopping: Callable[[], bool]) -> None:
        self.cfg, self.listen, self.spool, self.ring, self.clock = cfg, listen, spool, ring, clock
        self.ssl_context, self.auth, self.counters = ssl_context, auth, counters
        self.stopping = stopping       # the listener is closing: 421 before the next command

    def new_session(self, conn: SmtpStream, ip: str, handoff: Handoff | None = None) -> Session:
        """The session for a client on `conn`; a Handoff makes both stricter."""
        ctx = SessionContext.from_config(self.cfg, ip, self.spool.free_bytes,
                                         starttls_available=self.ssl_context is not None, listen=self.listen)
        if handoff is not None:
            ctx = replace(ctx, hard_error_limit=min(ctx.hard_error_limit, handoff.hard_error_limit))
            conn.timeout_s, conn.command_deadline_s = handoff.timeout_s, handoff.command_deadline_s
        return Session(ctx)

    # ------------------------------------------------------------ commands

    async def serve(self, conn: SmtpStream, session: Session, client: Client) -> None:
        """The banner, then commands until the session closes or the listener stops."""
        conn.queue(session.greeting())
        while not session.closing:
            if self.stopping():
                conn.queue(with_host(R421_SHUTDOWN, self.cfg.hostname))
                return
            limit = session.over_error_limit()
            if limit is not None:
                conn.queue(limit)
                return
            await self._command(conn, session, client)

    async def _command(self, conn: SmtpStream, session: Session, client: Client) -> None:
        may_pipeline = session.pipelining_advertised
        line, overlong = await conn.read_line()
        if overlong:
            conn.queue(session.handle_overlong(line))
            self._note_bare_lf(session)
            return
        line = session.take_line(line)
        self._note_bare_lf(session)
        if not may_pipeline and line_error(line) is None and conn.pending():
            verb = printable(line[:20].split(b" ")[0].strip().decode("ascii", "replace").upper())
            log.info("improper command pipelining after %s from [%s]: %s", verb, client.ip, conn.preview())
            session.closing = True
            conn.queue(R554_SYNC)
            return
        outcome = session.handle_line(line)
        reply = await self._check_login(session, outcome) if isinstance(outcome, AuthRequest) else outcome
        self._note_reply(session, reply)
        if session.in_data:
            await self._data(conn, session, client)
        elif session.starttls_pending:
            conn.queue(reply)
            await self._starttls(conn, session, client.ip)
        else:
            conn.queue(reply)
            if conn.out_bytes > MAX_PENDING_OUTPUT_BYTES:
                await conn.flush()

    @staticmethod
    def _note_bare_lf(session: Session) -> None:
        """Once per session, name a client that ends lines with a bare LF (an admin wants
        to know which device does it)."""
        if session.bare_lf_seen and not session.bare_lf_logged:
            session.bare_lf_logged = True
            log.info("bare <LF> received from [%s], taken as <CR><LF>", session.ctx.client_ip)

    async def _check_login(self, session: Session, request: AuthRequest) -> Reply:
        """AUTH: the Authenticator checks the credentials, the session gives the reply."""
        if self.auth is None:       # cannot happen: a session answers AUTH with 503 here
            raise RuntimeError("AUTH request on a listener without authentication")
        return session.auth_checked(await self.auth.check(request))

    def _note_reply(self, session: Session, reply: Reply) -> None:
        if reply.code < 400 or session.last_verb not in ("MAIL", "RCPT", "DATA"):
            return
        self.counters.rejects += 1
        if not reply.enhanced[1:].startswith(".5."):   # x.5.y is protocol trouble, not policy
            log.info("NOQUEUE: reject: %s", session.reject_log(reply))

    async def _starttls(self, conn: SmtpStream, session: Session, ip: str) -> None:
        # Stop reading plaintext before the 220 goes out, then drop whatever came with or
        # after STARTTLS: it was sent before TLS and must not count as sent inside it.
        conn.writer.transport.pause_reading()
        await conn.flush()
        dropped = await conn.discard_input()
        if dropped:
            log.info("discarded %d bytes pipelined after STARTTLS from [%s]", dropped, ip)
        try:
            await conn.writer.start_tls(self.ssl_context, ssl_handshake_timeout=self.cfg.smtpd.timeout_s)
        except OSError as exc:
            session.closing = True
            raise ConnectionLost(f"TLS handshake failed: {exc}") from None
        conn.tls = True
        session.tls_started()
        tls = conn.writer.get_extra_info("ssl_object")
        log.info("TLS established from [%s]: %s with cipher %s", ip,
                 tls.version() if tls else "?", tls.cipher()[0] if tls and tls.cipher() else "?")

    # ------------------------------------------------------------ DATA

    async def _data(self, conn: SmtpStream, session: Session, client: Client) -> None:
        try:
            sink = _Sink(self.spool.begin(session.envelope()), self.spool.commit_async)
        except OSError as exc:
            log.warning("warning: queue file write error: %s", exc)
            self.counters.rejects += 1
            conn.queue(session.end_data(R451_LOCAL_ERROR))
            return
        log.info("%s: client=[%s]", sink.queue_id, client.ip)
        conn.queue(R354_DATA)
        client.in_data = True
        try:
            reply = await self._receive(conn, session, sink)
        finally:
            client.in_data = False
            sink.abort()               # no-op after a commit; removes the tmp file otherwise
        conn.queue(reply)
        if reply.code == 250:
            self.counters.accepted += 1
            self._wake()
        else:
            self.counters.rejects += 1

    async def _receive(self, conn: SmtpStream, session: Session, sink: _Sink) -> Reply:
        date = datetime.fromtimestamp(self.clock(), timezone.utc)
        sink.write(session.received_header(sink.queue_id, date))
        reader = DotReader(self.cfg.message_size_limit, normalize=session.normalize_bare_lf)
        fixer = MissingHeaders(queue_id=sink.queue_id, date=date, hostname=self.cfg.hostname,
                               sender=session.tx.sender) if session.completes_headers else None
        while True:
            events = reader.feed(await conn.read_chunk())
            if reader.bare_lf and not session.bare_lf_seen:
                session.bare_lf_seen = True
                self._note_bare_lf(session)
            for event in events:
                if isinstance(event, Content):
                    sink.write(fixer.feed(event.data) if fixer else event.data)
                elif isinstance(event, ProtocolError):
                    log.info("%s: reject: DATA from [%s]: %s (%s)", sink.queue_id,
                             session.ctx.client_ip, event.reply, event.reason)
                    return session.end_data(event.reply, close=True)
                elif isinstance(event, End):
                    conn.unread(event.rest)
                    if fixer is not None:
                        sink.write(fixer.finish())
                    return await self._end_of_data(session, sink, reader, fixer)
            if not reader.accepting:
                sink.abort()           # over a limit: free the disk now, read on to the end

    async def _end_of_data(self, session: Session, sink: _Sink, reader: DotReader,
                           fixer: MissingHeaders | None) -> Reply:
        if reader.oversize:
            reply = R552_TOO_BIG
        elif reader.line_too_long:
            reply = R552_LINE_TOO_LONG
        elif sink.failed:
            reply = R451_LOCAL_ERROR
        else:
            queue_id = await sink.commit()   # G1: durable before the 250 is even queued
            if queue_id is None:
                reply = R451_LOCAL_ERROR
            else:
                reply = R250_OK.with_text(f"Ok: queued as {queue_id}")
                for name in fixer.added if fixer else ():
                    log.info("%s: missing %s header added", queue_id, name)
                log.info("%s: queued from=<%s> size=%d nrcpt=%d", queue_id, printable(session.tx.sender),
                         reader.size, len(session.tx.recipients))
        if reply.code >= 400:
            log.info("%s: reject: END-OF-MESSAGE from [%s]: %s", sink.queue_id, session.ctx.client_ip, reply)
        return session.end_data(reply)

    def _wake(self) -> None:
        try:
            self.ring()
        except Exception:  # noqa: BLE001 - the message is queued; qmgr finds it on its next scan
            log.exception("ringing the doorbell failed; the queue manager will pick the message up later")
