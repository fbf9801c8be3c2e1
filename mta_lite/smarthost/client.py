"""client — SmarthostPool: relays queued mail to the smarthosts over pooled SMTP sessions.

deliver(route, sender, recipients, content) relays one message as the route's account and
returns a DeliveryResult with one status per recipient. probe(route, progress) opens and
closes one session without a transaction (`mta-lite relay test`), naming each step. A session serves one transaction
at a time; idle sessions are kept per account, probed with RSET before reuse (a dead one
is replaced by a fresh connection, once) and sent QUIT after idle_timeout_s. Concurrent
deliver() calls are safe: each takes its own session. How many run at once is the
caller's business (qmgr limits them to relay.concurrency per account).

Guarantees:
  G3  a recipient is "sent" only after a 2xx reply to end of DATA. A timeout or a lost
      connection once DATA has started is transient ("message may be sent more than
      once"), never permanent; so is every failure before MAIL FROM (DNS, connect,
      greeting, EHLO, TLS, AUTH). What each reply means is decided in replies.py.
  S3  certificates are always verified, against relay.host, with relay.ca_file or the
      system store. With tls = "starttls", STARTTLS is required: a smarthost that stops
      offering it gets no AUTH and the mail is deferred (4.7.5). AUTH is only ever sent
      inside TLS, whatever the config says.
  S5  a refused login is transient with auth_failed=True. One mechanism (PLAIN, else
      LOGIN) is tried once per connection, so a wrong password costs one failed login per
      attempt (aiosmtplib's login() would try every mechanism in turn).
SECURITY: faces smarthosts over the network. Their reply texts go through
replies.clean_text (one line, capped, password forms masked) before they reach a Reply.
Must never: log, return or put into an exception the password or an AUTH payload; send
AUTH in clear; bounce a recipient whose fate is unknown; run two transactions at once on
one connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import time
from typing import Awaitable, Callable, NamedTuple, TypeVar

from aiosmtplib import SMTP
from aiosmtplib.errors import SMTPAuthenticationError, SMTPException, SMTPResponseException

from mta_lite.config.schema import Route
from mta_lite.maillog import secret_forms
from mta_lite.reply import Reply
from mta_lite.smarthost import replies
from mta_lite.smarthost.result import DeliveryResult
from mta_lite.smarthost.transaction import Transaction, refusal

log = logging.getLogger("mta_lite.smtp")

# A polite QUIT to a retiring session must not hold anything up for the full command
# timeout; a server copes with a client that closes without it.
QUIT_TIMEOUT_S = 5.0
# A pooled session that does not answer RSET within this is presumed dead: a fresh
# connection is cheaper than waiting out relay.timeout_s (300 s by default).
PROBE_TIMEOUT_S = 30.0
# Addresses of one smarthost name tried per attempt (Postfix smtp_mx_address_limit is 5;
# a smarthost name rarely has more than an IPv4 and an IPv6 address).
MAX_ADDRESSES_TRIED = 4
R451_INTERNAL = Reply(451, "4.3.0", "internal error in the smarthost client; will try again later")
R451_CLOSED = Reply(451, "4.3.0", "smarthost client is shutting down; will try again later")

Resolver = Callable[[str, int], Awaitable[list[tuple[int, tuple]]]]
T = TypeVar("T")


async def system_resolver(host: str, port: int) -> list[tuple[int, tuple]]:
    """(family, sockaddr) for each address of host; IP literals without a lookup."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]


class _Failure(NamedTuple):
    """Why no usable session could be had: a transient Reply, and how far we got."""

    reply: Reply
    relay: str = "none"
    auth_failed: bool = False


class Session:
    """One SMTP connection as one account; `stage` and `where` name the step under way."""

    def __init__(self, smtp: SMTP, route: Route, relay: str) -> None:
        self.smtp, self.route, self.relay = smtp, route, relay
        self.timeout_s = route.relay.timeout_s
        self.stage, self.where = "receiving the initial server greeting", "at the initial greeting"
        self.reusable, self.idle_since = True, 0.0
        password = route.password.reveal() if route.password else ""
        self.secrets = tuple(secret_forms(password, [route.username])) if password else ()

    def __repr__(self) -> str:
        return f"<smarthost session {self.relay} account={self.route.account}>"

    @property
    def alive(self) -> bool:
        return self.reusable and self.smtp.is_connected

    def abort(self) -> None:
        self.reusable = False
        self.smtp.close()

    async def run(self, step: Awaitable[T], timeout_s: float | None = None) -> T:
        """Await one aiosmtplib step under asyncio.timeout (aiosmtplib itself gets timeout=None):
        on Python 3.11 its wait_for can swallow a cancellation that races with a reply, and a
        qmgr shutting down must not wait out relay.timeout_s for a delivery it cancelled."""
        async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
            return await step

    async def rset(self, timeout_s: float) -> bool:
        """RSET: clears the transaction and proves the session alive; aborts it if not."""
        ok = False
        try:
            ok = (await self.run(self.smtp.execute_command(b"RSET"), timeout_s)).code == 250
        except (OSError, SMTPException):
            pass    # dead or confused: a fresh connection will do
        finally:
            if not ok:      # also when cancelled: a half-probed session is never pooled
                self.abort()
        return ok

    async def quit(self) -> None:
        try:
            await self.run(self.smtp.quit(), min(self.timeout_s, QUIT_TIMEOUT_S))
        except (OSError, SMTPException):
            pass    # the session is being thrown away; how it ends changes nothing
        self.abort()


class SmarthostPool:
    """Outbound SMTP sessions, pooled per account (see the module docstring)."""

    def __init__(self, *, helo_name: str, clock: Callable[[], float] = time.monotonic,
                 idle_timeout_s: float = 30.0, resolver: Resolver | None = None) -> None:
        if not helo_name or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in helo_name):
            raise ValueError(f"helo_name must be one word without control characters, got {helo_name!r}")
        self.helo_name, self.resolve = helo_name, resolver or system_resolver
        self._clock, self._idle_timeout_s = clock, idle_timeout_s
        # Keyed by the whole Route, i.e. by account plus the settings it logs in with, so
        # that a reloaded config never reuses a session opened with the old host or password.
        self._idle: dict[Route, list[Session]] = {}
        self._retiring: set[asyncio.Task] = set()
        self._contexts: dict[str, tuple[object, ssl.SSLContext]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def deliver(self, route: Route, sender: str, recipients: list[str], content: bytes,
                      smtputf8: bool = False) -> DeliveryResult:
        """Relay one message; never raises for a delivery problem, every outcome is a result."""
        recipients = list(recipients)
        if not recipients:
            return DeliveryResult("none", ())
        if self._closed:
            return DeliveryResult.transient(recipients, R451_CLOSED)
        try:
            session = await self._checkout(route)
            if isinstance(session, _Failure):
                return DeliveryResult.transient(recipients, *session)
            return await self._run(session, sender, recipients, content, smtputf8)
        except Exception:   # a bug here must defer the mail, not crash the qmgr or bounce
            log.exception("smarthost client error while relaying via %s", route.relay.name)
            return DeliveryResult.transient(recipients, R451_INTERNAL)

    async def probe(self, route: Route, progress: Callable[[str, str], None]) -> tuple[str, Reply] | None:
        """Connect, TLS, EHLO and AUTH as `route` without sending mail; progress(step, what)
        hears each step that passed. None if all did, else (the step that failed, why)."""
        opener = _Opener(self, route, progress)
        session = await opener.open()
        if isinstance(session, _Failure):
            return opener.step, session.reply
        await session.quit()
        return None

    async def close(self) -> None:
        """QUIT and close every pooled connection; sessions in use close when released."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sessions in self._idle.values():
            for session in sessions:
                self.retire(session)
        self._idle.clear()
        self._closed = True
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _run(self, session: Session, sender: str, recipients: list[str], content: bytes,
                   smtputf8: bool) -> DeliveryResult:
        released = False
        try:
            result = await Transaction(session, sender, recipients, content, smtputf8).run()
            self._release(session)
            released = True
            return result
        finally:
            if not released:        # cancelled or crashed mid-transaction: never pool it
                session.abort()

    async def _checkout(self, route: Route) -> Session | _Failure:
        session = self._take(route)
        if session is not None and await session.rset(min(session.timeout_s, PROBE_TIMEOUT_S)):
            return session
        return await _Opener(self, route).open()

    def _take(self, route: Route) -> Session | None:
        self._expire_idle()
        sessions = self._idle.get(route, [])
        while sessions:
            session = sessions.pop()        # the most recently used: least likely timed out
            if session.alive:
                return session
            session.abort()
        return None

    def _release(self, session: Session) -> None:
        if self._closed:            # close() has returned: nobody would await a QUIT now
            session.abort()
        elif not session.alive:
            self.retire(session)
        else:
            session.idle_since = self._clock()
            self._idle.setdefault(session.route, []).append(session)
            self._arm_timer()

    def retire(self, session: Session) -> None:
        """QUIT and close in the background; close() awaits what is still under way."""
        if self._closed or not session.smtp.is_connected:
            session.abort()
            return
        task = asyncio.get_running_loop().create_task(session.quit())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _expire_idle(self) -> None:
        now = self._clock()
        for route, sessions in list(self._idle.items()):
            keep = [s for s in sessions if s.alive and now - s.idle_since < self._idle_timeout_s]
            for session in sessions:
                if session not in keep:
                    self.retire(session)
            if keep:
                self._idle[route] = keep
            else:
                del self._idle[route]

    def _arm_timer(self) -> None:
        """Expire idle sessions even when no further mail comes along to do it."""
        if self._timer is not None or not self._idle:
            return
        oldest = min(s.idle_since for sessions in self._idle.values() for s in sessions)
        # A little slack, so that the timer never fires a hair before the session is due.
        delay = max(oldest + self._idle_timeout_s - self._clock(), 0.0) + 0.01
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire_idle()
        self._arm_timer()

    def tls_context(self, ca_file: str) -> ssl.SSLContext | Reply:
        """A verifying client context per CA file, rebuilt when the file changes on disk.
        One loaded before the privilege drop stays in use if the file can no longer be
        looked at (an admin's root-only CA file): a reload, which starts a new queue
        manager as root, picks up a change then."""
        cached = self._contexts.get(ca_file)
        try:
            stamp = None
            if ca_file:
                try:
                    st = os.stat(ca_file)
                except PermissionError:
                    if cached is not None:
                        return cached[1]
                    raise
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            context = ssl.create_default_context(cafile=ca_file or None)
        except OSError as exc:      # ssl.SSLError is an OSError too
            return replies.ca_file_unusable(ca_file, exc)
        context.check_hostname = True           # the defaults, stated: S3 rests on them
        context.verify_mode = ssl.CERT_REQUIRED
        self._contexts[ca_file] = (stamp, context)
        return context


class _Opener:
    """Connect, greeting, EHLO, TLS and AUTH: a new session for one route, or why not."""

    def __init__(self, pool: SmarthostPool, route: Route,
                 progress: Callable[[str, str], None] | None = None) -> None:
        self.pool, self.route, self.relay = pool, route, route.relay
        self.step, self.progress = "TLS", progress      # step: under way, named for probe()

    def _passed(self, step: str, what: str, next_step: str) -> None:
        if self.progress is not None:
            self.progress(step, what)
        self.step = next_step

    async def open(self) -> Session | _Failure:
        if self.route.username and self.relay.tls == "none":
            self.step = "AUTH"
            return _Failure(replies.auth_needs_tls(self.relay.host))
        context = self.pool.tls_context(self.relay.ca_file) if self.relay.tls != "none" else None
        if isinstance(context, Reply):
            return _Failure(context)
        connected = await self._connect_tcp()
        if isinstance(connected, Reply):
            return _Failure(connected)
        sock, label = connected
        smtp = SMTP(hostname=self.relay.host, sock=sock, local_hostname=self.pool.helo_name,
                    timeout=None, use_tls=self.relay.tls == "implicit",
                    start_tls=False, tls_context=context)
        session = Session(smtp, self.route, label)
        failure: _Failure | None = _Failure(R451_INTERNAL, label)     # if cancelled or crashed
        try:
            failure = await self._handshake(session)
        except SMTPResponseException as exc:    # before OSError: some are both
            failure = _Failure(replies.soften(refusal(session, exc)), label)
        except OSError as exc:                  # aiosmtplib's timeouts and disconnects too
            failure = _Failure(replies.failure_reply(exc, label, session.stage), label)
        finally:
            if failure is not None:
                self._discard(session, sock, polite=failure.reply is not R451_INTERNAL)
        return session if failure is None else failure

    def _discard(self, session: Session, sock: socket.socket, polite: bool) -> None:
        """A session that failed to open: QUIT if it can still talk, never when cancelled."""
        if session.smtp.transport is None:      # connect() failed: no transport owns the socket
            session.abort()
            sock.close()
        elif polite:
            self.pool.retire(session)           # QUIT in the background, awaited by close()
        else:
            session.abort()                     # the transport closes the socket

    async def _connect_tcp(self) -> tuple[socket.socket, str] | Reply:
        relay = self.relay
        self.step = "DNS"
        try:    # asyncio.timeout, not wait_for: see Session.run
            async with asyncio.timeout(relay.timeout_s):
                addresses = await self.pool.resolve(relay.host, relay.port)
        except OSError as exc:                  # socket.gaierror and TimeoutError included
            return replies.dns_failure(relay.host, exc)
        failure = replies.dns_failure(relay.host, None)
        if addresses:
            self._passed("DNS", f"{relay.host} is {', '.join(str(a[1][0]) for a in addresses)}", "TCP")
        for family, sockaddr in addresses[:MAX_ADDRESSES_TRIED]:
            sock, connected = socket.socket(family, socket.SOCK_STREAM), False
            try:
                sock.setblocking(False)
                async with asyncio.timeout(relay.timeout_s):
                    await asyncio.get_running_loop().sock_connect(sock, sockaddr)
                connected = True
            except OSError as exc:
                failure = replies.connect_failure(relay.host, sockaddr[0], relay.port, exc)
            finally:
                if not connected:
                    sock.close()
            if connected:
                label = replies.relay_label(relay.host, sockaddr[0], relay.port)
                self._passed("TCP", f"connected to {label}", "TLS" if relay.tls == "implicit" else "greeting")
                return sock, label
        return failure

    async def _handshake(self, s: Session) -> _Failure | None:
        greeting = await s.run(s.smtp.connect())
        self._passed("greeting", replies.clean_text(f"{greeting.code} {greeting.message}"), "EHLO")
        s.stage, s.where = "performing the EHLO handshake", "in reply to EHLO command"
        await s.run(s.smtp.ehlo())
        if self.relay.tls == "starttls":
            self.step = "TLS"
            # Checked here rather than left to aiosmtplib, so the S3 decision stays visible.
            if not s.smtp.supports_extension("starttls"):
                return _Failure(replies.starttls_missing(s.relay), s.relay)
            s.stage, s.where = "performing the STARTTLS handshake", "in reply to STARTTLS command"
            await s.run(s.smtp.starttls())
            s.stage, s.where = "performing the EHLO handshake", "in reply to EHLO command"
            await s.run(s.smtp.ehlo())
        if self.relay.tls != "none":
            cipher = s.smtp.get_transport_info("cipher") or ("unknown", "unknown", 0)
            log.info("Verified TLS connection established to %s: %s with cipher %s",
                     s.relay, cipher[1], cipher[0])
            self._passed("TLS", f"certificate verified for {self.relay.host}, {cipher[1]} {cipher[0]}", "EHLO")
        offered = " ".join(sorted(s.smtp.esmtp_extensions)).upper()
        self._passed("EHLO", replies.clean_text(f"offers {offered}"), "AUTH")
        return await self._login(s) if self.route.username else None

    async def _login(self, s: Session) -> _Failure | None:
        if s.smtp.get_transport_info("sslcontext") is None:
            return _Failure(replies.auth_needs_tls(s.relay), s.relay)
        mechanisms = s.smtp.server_auth_methods
        s.stage, s.where = "performing SASL authentication", "in reply to AUTH command"
        if "plain" in mechanisms:
            login = s.smtp.auth_plain
        elif "login" in mechanisms:
            login = s.smtp.auth_login
        else:
            return _Failure(replies.no_sasl_mechanism(s.relay, mechanisms), s.relay)
        try:
            await s.run(login(self.route.username, self.route.password.reveal() if self.route.password else ""))
        except SMTPAuthenticationError as exc:  # carries the server's reply, never our payload
            reply = replies.auth_failed(exc.code, exc.message, s.relay, s.secrets)
            return _Failure(reply, s.relay, auth_failed=exc.code != 421)
        self._passed("AUTH", f"logged in as {self.route.username}", "")
        return None
