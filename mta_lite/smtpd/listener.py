"""listener — the asyncio SMTP listener: sockets, connection limits, graceful close.

A Listener accepts connections on one Listen entry, enforces the connection limits, gives
each client one SmtpStream, runs an optional pre-greeting hook (postscreen) on it, then
hands the client to its engine.SmtpEngine, which runs the session. A hook that can say at
connect time how long to wait for the client's first bytes (PreGreetStaged: postscreen) has
its listener accept through an arrival.Doorway and hold idle clients as bare sockets, with
no transport, task or stream each, until they speak or the wait ends. With tls = "implicit"
the TLS handshake comes before anything else (port 465); with auth = "required" the logins
sessions ask for are checked by the listener's auth.Authenticator (failures count across
sessions). close() stops accepting, answers 421 to idle sessions and lets DATA finish.
Guarantees: at most max_connections sessions, and max_connections_per_client from one
client outside mynetworks; every session has the session time limit. One client's bad
luck, timeout or our own bug ends that session only (421 or 451 4.3.0, the traceback in
the log): the listener keeps serving everyone else.
SECURITY: faces the network. Peers get SMTP replies only, never exception text.
Must never: die from one client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
import warnings
from dataclasses import asdict
from typing import Any, Awaitable, Callable, Protocol

from mta_lite.config.schema import Config, Listen
from mta_lite.errors import ConfigError
from mta_lite.reply import R421_PORTS_BUSY, R421_SHUTDOWN, R421_TIMEOUT, R421_TOO_MANY_CONNECTIONS, R451_INTERNAL, Reply
from mta_lite.smtpd.arrival import EPOLL, HANGUP, Doorway, Held, Hold, Waiting, streams_on
from mta_lite.smtpd.auth import Authenticator
from mta_lite.smtpd.conversation import with_host
from mta_lite.smtpd.engine import Client, ListenerCounters, SmtpEngine
from mta_lite.smtpd.handoff import Handoff
from mta_lite.smtpd.stream import HANGUP_WAIT_S, SmtpStream

log = logging.getLogger("mta_lite.smtpd")

# Listen.tls_min_version -> the oldest protocol the listener's TLS context allows.
TLS_VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
                "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
# What TLS 1.0/1.1 clients need from OpenSSL 3: its default cipher list at security level 0.
OLD_TLS_CIPHERS = "DEFAULT:@SECLEVEL=0"
# close(): how long sessions in DATA may take to finish before they are cut off.
DEFAULT_CLOSE_GRACE_S = 60.0

# Runs on the connection's own stream before the banner (postscreen), with the client's IP.
# True: serve; False: the hook dealt with the client, close; a Handoff: serve, stricter.
PreGreet = Callable[[SmtpStream, str], Awaitable["bool | Handoff"]]


class PreGreetStaged(Protocol):
    """A PreGreet in two stages: begin() at connect, without awaiting, gives its state and
    the Hold to wait in (None: no wait); finish() then runs on the stream, told what ended
    the wait (arrival.INPUT or arrival.TIMEOUT), or None when there was none; hung_up()
    instead when the client closed without a word while held (no stream is made for it)."""

    def begin(self, ip: str) -> tuple[Any, Hold | None]: ...

    async def finish(self, stream: SmtpStream, state: Any, waited: str | None) -> "bool | Handoff": ...

    def hung_up(self, state: Any) -> None: ...


def server_tls_context(listen: Listen, config_path: str = "") -> ssl.SSLContext | None:
    """TLS for STARTTLS from listen.tls_cert/tls_key; None when not configured."""
    if not (listen.tls_cert and listen.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; the admin chose them for old LAN devices (RFC 8996's
        # risk, accepted in the config and refused where passwords could cross the Internet).
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = TLS_VERSIONS[listen.tls_min_version]
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        # OpenSSL 3 refuses TLS 1.0/1.1 (their handshake signs with SHA-1/MD5) above
        # security level 0. The trade-off, taken for old LAN devices only: this listener
        # also accepts weak ciphers; config checks keep it off a submission port open to all.
        context.set_ciphers(OLD_TLS_CIPHERS)
    try:
        context.load_cert_chain(listen.tls_cert, listen.tls_key)
    except OSError as exc:          # ssl.SSLError included: wrong key, encrypted, not PEM
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(config_path, f"listen {listen.host}:{listen.port}",
                          f"cannot use tls_cert {listen.tls_cert} with tls_key {listen.tls_key}: {reason}") from None
    return context


def peer_ip(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class Listener:
    """SMTP listener for one Listen entry. start(), then close() (graceful)."""

    def __init__(self, cfg: Config, listen: Listen, spool: Any, ring: Callable[[], None], *,
                 clock: Callable[[], float] = time.time, pre_greet: PreGreet | None = None) -> None:
        self.cfg, self.listen, self.pre_greet = cfg, listen, pre_greet
        self.ssl_context = server_tls_context(listen, cfg.path)
        # A submission listener checks logins (auth.py); its failure counts span sessions.
        self.auth = Authenticator(cfg.users, clock) if listen.auth != "none" else None
        self.counters = ListenerCounters()
        self.engine = SmtpEngine(cfg, listen, spool, ring, clock=clock, ssl_context=self.ssl_context,
                                 auth=self.auth, counters=self.counters, stopping=lambda: self._closing)
        self._server: asyncio.base_events.Server | None = None
        self._closing = False
        self._active: dict[int, Client] = {}
        self._per_ip: dict[str, int] = {}          # open connections by client IP
        self._waiting = Waiting()                  # clients held before their task starts
        self._next_id = 0

    async def start(self, sock=None) -> None:
        """Listen on `listen`, or on an already bound socket handed over by the master."""
        # Implicit TLS (port 465): the handshake is done before _accept() sees the client, so
        # the ClientHello never lands in a plaintext buffer.
        tls = ({"ssl": self.ssl_context, "ssl_handshake_timeout": self.cfg.smtpd.timeout_s}
               if self.listen.tls == "implicit" else {})
        if hasattr(self.pre_greet, "begin") and not tls and EPOLL:
            await self._open_doorway(sock)
        elif sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=sock, **tls)
        else:
            self._server = await asyncio.start_server(self._accept, self.listen.host, self.listen.port, **tls)
        mode = (" (implicit TLS)" if tls else " (STARTTLS)") if self.ssl_context else ""
        log.info("listening on %s:%d%s%s", *self.address, mode, ", AUTH required" if self.auth else "")

    async def _open_doorway(self, sock: socket.socket | None) -> None:
        """Accept through a Doorway; the asyncio Server (never serving) keeps the socket for
        address and close(), which also stops the Doorway's accepting."""
        if sock is None:
            family = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
            sock = socket.create_server((self.listen.host, self.listen.port), family=family)
        self._server = await asyncio.get_running_loop().create_server(asyncio.Protocol, sock=sock, start_serving=False)
        Doorway(self, sock).open()

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
        for held in self._waiting.held():
            sid = held.token[0]
            held.abort(with_host(R421_SHUTDOWN, self.cfg.hostname).to_bytes())
            log.info("disconnect from [%s] commands=0", self._unregister(sid).ip)
        self._waiting.close()
        for client in list(self._active.values()):
            if not client.in_data and client.task is not None:
                client.task.cancel()
        tasks = [c.task for c in self._active.values() if c.task is not None]
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
        same = self._per_ip.get(ip, 0)
        # As Postfix's smtpd_client_event_limit_exceptions = $mynetworks: the LAN's own
        # devices are trusted to open parallel sessions; the global limit still holds.
        if same >= limits.max_connections_per_client and not self.cfg.in_mynetworks(ip):
            log.warning("warning: too many connections from [%s]: %d", ip, same)
            return R421_TOO_MANY_CONNECTIONS
        return None

    def _register(self, ip: str, task: asyncio.Task | None) -> tuple[int, Client]:
        self._next_id += 1
        self._active[self._next_id] = client = Client(task, ip)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self.counters.connections += 1
        log.info("connect from [%s]", ip)
        return self._next_id, client

    def _unregister(self, sid: int) -> Client:
        client = self._active.pop(sid)
        left = self._per_ip.pop(client.ip) - 1
        if left:
            self._per_ip[client.ip] = left
        return client

    # The Doorway's owner: connections of a listener with a PreGreetStaged hook start here.

    def arrived(self, sock: socket.socket, peer: Any) -> None:
        ip = peer_ip(peer)
        refusal = self._admission(ip)
        if refusal is not None:
            self.counters.refused += 1
            try:
                sock.send(refusal.to_bytes())
            except OSError:
                pass  # the client is gone already
            sock.close()
            return
        started = asyncio.get_running_loop().time()
        sid, client = self._register(ip, None)
        state, hold = self.pre_greet.begin(ip)
        token = (sid, client, state, started)
        if hold is None:
            self.resume(token, sock, None)
            return
        Held(self, sock, token).start(hold, self._waiting)

    def resume(self, token: tuple, sock: socket.socket, event: str | None) -> None:
        sid, client, state, started = token
        if event == HANGUP:
            self.pre_greet.hung_up(state)
            sock.close()
            log.info("disconnect from [%s] commands=0", client.ip)
            self._unregister(sid)
            return
        client.task = asyncio.get_running_loop().create_task(self._resumed(sid, client, sock, state, event, started))

    async def _resumed(self, sid: int, client: Client, sock: socket.socket, state: Any, event: str | None,
                       started: float) -> None:
        try:
            reader, writer = await streams_on(sock)
        except (OSError, asyncio.CancelledError):
            sock.close()                    # reset before we got to it, or cancelled by close()
            log.info("disconnect from [%s] commands=0", client.ip)
            self._unregister(sid)
            return
        conn = SmtpStream(reader, writer, self.cfg.smtpd.timeout_s)
        greet = lambda: self.pre_greet.finish(conn, state, event)  # noqa: E731
        await self._session(sid, client, conn, greet, started)

    # The streams path: every other listener.

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip = peer_ip(writer.get_extra_info("peername"))
        refusal = self._admission(ip)
        conn = SmtpStream(reader, writer, self.cfg.smtpd.timeout_s)
        conn.tls = self.listen.tls == "implicit"
        if refusal is not None:
            self.counters.refused += 1
            conn.queue(refusal)
            await conn.close()
            return
        started = asyncio.get_running_loop().time()
        sid, client = self._register(ip, asyncio.current_task())
        greet = None if self.pre_greet is None else (lambda: self.pre_greet(conn, ip))
        await self._session(sid, client, conn, greet, started)

    async def _session(self, sid: int, client: Client, conn: SmtpStream,
                       greet: Callable[[], Awaitable["bool | Handoff"]] | None, started: float) -> None:
        try:
            await self._run(sid, client, conn, greet, started)
        except asyncio.CancelledError:
            conn.writer.close()        # cancelled while already hanging up: just drop it
        finally:
            self._unregister(sid)

    async def _run(self, sid: int, client: Client, conn: SmtpStream,
                   greet: Callable[[], Awaitable["bool | Handoff"]] | None, started: float) -> None:
        ip, session, cancelled = client.ip, None, False
        try:
            # The session time limit counts from the accept, a held client's wait included.
            async with asyncio.timeout_at(started + self.cfg.smtpd.session_limit_s):
                verdict = True if greet is None else await greet()
                if verdict:
                    session = self.engine.new_session(conn, ip, verdict if isinstance(verdict, Handoff) else None)
                    await self.engine.serve(conn, session, client)
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
