"""listener — the asyncio SMTP listener: sockets, limits, pipelining, STARTTLS, DATA to queue.

A Listener accepts connections on one Listen entry, enforces the connection limits, runs
an optional pre-greeting hook (postscreen), then drives a pure session.Session with one
command line at a time and streams DATA through dotreader into the queue writer. With
tls = "implicit" the TLS handshake comes before anything else (port 465); with auth =
"required" the credentials a session collects are checked by an auth.Authenticator.
Guarantees: `250 ... queued as ID` is sent only after writer.commit() returned (G1); a
failed write or commit aborts the queue file and answers 451 4.3.0. Messages are never
held in memory: content goes to the queue file chunk by chunk (G5). Replies are flushed
only when the client's input is drained (Postfix pipelining behaviour). Input pipelined
before PIPELINING was advertised gets 554 5.5.0 and a hang-up; input buffered before a
STARTTLS handshake is discarded (CVE-2011-0411 class). One client's bad luck, timeout or
our own bug ends that session only: the listener keeps serving everyone else.
SECURITY: faces the network. Peers get SMTP replies only, never exception text; peer
bytes reach the log only through text.printable().
Must never: send 250 for a message that is not durably queued, or die from one client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from mta_lite.config.schema import Config, Listen
from mta_lite.errors import ConfigError
from mta_lite.reply import (R250_OK, R354_DATA, R421_PORTS_BUSY, R421_SHUTDOWN, R421_TIMEOUT,
                     R421_TOO_MANY_CONNECTIONS, R451_INTERNAL, R451_LOCAL_ERROR, R552_LINE_TOO_LONG,
                     R552_TOO_BIG, R554_SYNC, Reply)
from mta_lite.smtpd.auth import Authenticator, AuthRequest
from mta_lite.smtpd.dotreader import Content, DotReader, End, ProtocolError
from mta_lite.smtpd.handoff import Handoff
from mta_lite.smtpd.conversation import line_error, with_host
from mta_lite.smtpd.session import Session, SessionContext
from mta_lite.smtpd.stream import HANGUP_WAIT_S, MAX_PENDING_OUTPUT_BYTES, ConnectionLost, SmtpStream
from mta_lite.text import printable

log = logging.getLogger("mta_lite.smtpd")

# close(): how long sessions in DATA may take to finish before they are cut off.
DEFAULT_CLOSE_GRACE_S = 60.0

# Runs on the connection's own stream before the banner (postscreen), with the client's IP.
# True: serve; False: the hook dealt with the client, close; a Handoff: serve, stricter.
PreGreet = Callable[[SmtpStream, str], Awaitable["bool | Handoff"]]


def server_tls_context(listen: Listen, config_path: str = "") -> ssl.SSLContext | None:
    """TLS for STARTTLS from listen.tls_cert/tls_key; None when not configured."""
    if not (listen.tls_cert and listen.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(listen.tls_cert, listen.tls_key)
    except OSError as exc:          # ssl.SSLError included: wrong key, encrypted, not PEM
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(config_path, f"listen {listen.host}:{listen.port}",
                          f"cannot use tls_cert {listen.tls_cert} with tls_key {listen.tls_key}: {reason}") from None
    return context


class _Sink:
    """The queue writer of one message; a failed write or commit becomes a flag (G1)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
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
            # fsync has no non-blocking form: in a worker thread it keeps the other sessions
            # moving while the disk flushes, and concurrent commits share journal flushes.
            # The 250 still waits for it (G1); the thread touches only this message's file.
            queue_id = await asyncio.to_thread(self.writer.commit)
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


@dataclass
class _Active:
    task: asyncio.Task | None
    ip: str
    in_data: bool = False


class Listener:
    """SMTP listener for one Listen entry. start(), then close() (graceful)."""

    def __init__(self, cfg: Config, listen: Listen, spool: Any, wakeup: Callable[[], None], *,
                 clock: Callable[[], float] = time.time, pre_greet: PreGreet | None = None) -> None:
        self.cfg, self.listen, self.spool, self.wakeup = cfg, listen, spool, wakeup
        self.clock, self.pre_greet = clock, pre_greet
        self.ssl_context = server_tls_context(listen, cfg.path)
        # A submission listener checks logins (auth.py); its failure counts span sessions.
        self.auth = Authenticator(cfg.users, clock) if listen.auth != "none" else None
        self.counters = ListenerCounters()
        self._server: asyncio.base_events.Server | None = None
        self._closing = False
        self._active: dict[int, _Active] = {}
        self._next_id = 0

    async def start(self, sock=None) -> None:
        """Listen on `listen`, or on an already bound socket handed over by the master."""
        # Implicit TLS (port 465): the handshake is done before _accept() sees the client, so
        # the ClientHello never lands in a plaintext buffer.
        tls = ({"ssl": self.ssl_context, "ssl_handshake_timeout": self.cfg.smtpd.timeout_s}
               if self.listen.tls == "implicit" else {})
        if sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=sock, **tls)
        else:
            self._server = await asyncio.start_server(self._accept, self.listen.host, self.listen.port, **tls)
        mode = (" (implicit TLS)" if tls else " (STARTTLS)") if self.ssl_context else ""
        log.info("listening on %s:%d%s%s", *self.address, mode, ", AUTH required" if self.auth else "")

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("Listener.address before start()")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def active(self) -> int:
        """Open connections, this listener's (postscreen's stress mode is measured on it)."""
        return len(self._active)

    def snapshot(self) -> dict[str, Any]:
        host, port = self.listen.host, self.listen.port
        if self._server is not None and self._server.sockets:
            host, port = self.address
        return {"listen": f"{host}:{port}", "active": len(self._active), **asdict(self.counters)}

    async def close(self, grace_s: float = DEFAULT_CLOSE_GRACE_S) -> None:
        """Stop accepting; 421 to idle sessions; sessions in DATA may finish within grace_s."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for active in list(self._active.values()):
            if not active.in_data and active.task is not None:
                active.task.cancel()
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=HANGUP_WAIT_S)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------ connections

    def _admission(self, ip: str) -> Reply | None:
        limits = self.cfg.smtpd
        if self._closing:
            return with_host(R421_SHUTDOWN, self.cfg.hostname)
        if len(self._active) >= limits.max_connections:
            log.warning("warning: all server ports busy; refused connection from [%s]", ip)
            return R421_PORTS_BUSY
        same = sum(1 for a in self._active.values() if a.ip == ip)
        # As Postfix's smtpd_client_event_limit_exceptions = $mynetworks: the LAN's own
        # devices are trusted to open parallel sessions; the global limit still holds.
        if same >= limits.max_connections_per_client and not self.cfg.in_mynetworks(ip):
            log.warning("warning: too many connections from [%s]: %d", ip, same)
            return R421_TOO_MANY_CONNECTIONS
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        refusal = self._admission(ip)
        conn = SmtpStream(reader, writer, self.cfg.smtpd.timeout_s)
        conn.tls = self.listen.tls == "implicit"
        if refusal is not None:
            self.counters.refused += 1
            conn.queue(refusal)
            await conn.close()
            return
        self._next_id += 1
        sid = self._next_id
        self._active[sid] = active = _Active(asyncio.current_task(), ip)
        self.counters.connections += 1
        try:
            await self._run(sid, active, conn)
        except asyncio.CancelledError:
            conn.writer.close()        # cancelled while already hanging up: just drop it
        finally:
            del self._active[sid]

    async def _run(self, sid: int, active: _Active, conn: SmtpStream) -> None:
        ip, session, cancelled = active.ip, None, False
        log.info("connect from [%s]", ip)
        try:
            async with asyncio.timeout(self.cfg.smtpd.session_limit_s):
                verdict = True if self.pre_greet is None else await self.pre_greet(conn, ip)
                if verdict:
                    session = self._new_session(ip, verdict if isinstance(verdict, Handoff) else None)
                    if isinstance(verdict, Handoff):
                        conn.timeout_s, conn.command_deadline_s = verdict.timeout_s, verdict.command_deadline_s
                    await self._serve(conn, session, active)
        except TimeoutError:
            log.info("timeout after %s from [%s]", session.last_verb if session else "CONNECT", ip)
            conn.queue(with_host(R421_TIMEOUT, self.cfg.hostname))
        except (ConnectionError, ssl.SSLError):
            log.info("lost connection after %s from [%s]", session.last_verb if session else "CONNECT", ip)
        except asyncio.CancelledError:
            # Only close() (or loop shutdown) cancels a session. The task is ours and ends
            # here normally: Python 3.11's start_server callback would log a cancelled
            # task as an error.
            cancelled = True
            conn.hang_up_now(with_host(R421_SHUTDOWN, self.cfg.hostname))
        except Exception:  # noqa: BLE001 - one session's bug must not take the listener down
            self.counters.errors += 1
            log.exception("session %d: unexpected error, client [%s]", sid, ip)
            conn.queue(R451_INTERNAL)
        finally:
            if not cancelled:
                await conn.close()
            log.info("disconnect from [%s] %s", ip, session.command_stats() if session else "commands=0")

    def _new_session(self, ip: str, handoff: Handoff | None = None) -> Session:
        ctx = SessionContext.from_config(self.cfg, ip, self.spool.free_bytes,
                                         starttls_available=self.ssl_context is not None, listen=self.listen)
        if handoff is not None:
            ctx = replace(ctx, hard_error_limit=min(ctx.hard_error_limit, handoff.hard_error_limit))
        return Session(ctx)

    # ------------------------------------------------------------ commands

    async def _serve(self, conn: SmtpStream, session: Session, active: _Active) -> None:
        conn.queue(session.greeting())
        while not session.closing:
            if self._closing:
                conn.queue(with_host(R421_SHUTDOWN, self.cfg.hostname))
                return
            limit = session.over_error_limit()
            if limit is not None:
                conn.queue(limit)
                return
            await self._command(conn, session, active)

    async def _command(self, conn: SmtpStream, session: Session, active: _Active) -> None:
        may_pipeline = session.pipelining_advertised
        line, overlong = await conn.read_line()
        if overlong:
            conn.queue(session.handle_overlong(line))
            return
        if not may_pipeline and line_error(line) is None and conn.pending():
            verb = printable(line[:20].split(b" ")[0].strip().decode("ascii", "replace").upper())
            log.info("improper command pipelining after %s from [%s]: %s", verb, active.ip, conn.preview())
            session.closing = True
            conn.queue(R554_SYNC)
            return
        outcome = session.handle_line(line)
        reply = await self._check_login(session, outcome) if isinstance(outcome, AuthRequest) else outcome
        self._note_reply(session, reply)
        if session.in_data:
            await self._data(conn, session, active)
        elif session.starttls_pending:
            conn.queue(reply)
            await self._starttls(conn, session, active.ip)
        else:
            conn.queue(reply)
            if conn.out_bytes > MAX_PENDING_OUTPUT_BYTES:
                await conn.flush()

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

    async def _data(self, conn: SmtpStream, session: Session, active: _Active) -> None:
        try:
            sink = _Sink(self.spool.begin(session.envelope()))
        except OSError as exc:
            log.warning("warning: queue file write error: %s", exc)
            self.counters.rejects += 1
            conn.queue(session.end_data(R451_LOCAL_ERROR))
            return
        log.info("%s: client=[%s]", sink.queue_id, active.ip)
        conn.queue(R354_DATA)
        active.in_data = True
        try:
            reply = await self._receive(conn, session, sink)
        finally:
            active.in_data = False
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
        reader = DotReader(self.cfg.message_size_limit)
        while True:
            for event in reader.feed(await conn.read_chunk()):
                if isinstance(event, Content):
                    sink.write(event.data)
                elif isinstance(event, ProtocolError):
                    log.info("%s: reject: DATA from [%s]: %s (%s)", sink.queue_id,
                             session.ctx.client_ip, event.reply, event.reason)
                    return session.end_data(event.reply, close=True)
                elif isinstance(event, End):
                    conn.unread(event.rest)
                    return await self._end_of_data(session, sink, reader)
            if not reader.accepting:
                sink.abort()           # over a limit: free the disk now, read on to the end

    async def _end_of_data(self, session: Session, sink: _Sink, reader: DotReader) -> Reply:
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
                log.info("%s: queued from=<%s> size=%d nrcpt=%d", queue_id, printable(session.tx.sender),
                         reader.size, len(session.tx.recipients))
        if reply.code >= 400:
            log.info("%s: reject: END-OF-MESSAGE from [%s]: %s", sink.queue_id, session.ctx.client_ip, reply)
        return session.end_data(reply)

    def _wake(self) -> None:
        try:
            self.wakeup()
        except Exception:  # noqa: BLE001 - the message is queued; qmgr finds it on its next scan
            log.exception("wakeup() failed; the queue manager will pick the message up later")
