"""pool — SmarthostPool: relays queued mail to the smarthosts over connections kept per account.

deliver(route, sender, recipients, content) relays one message (bytes, or a content.Content
read from its queue file in chunks) as the route's account and returns a DeliveryResult
with one status per recipient. check_route(route, progress) opens
and closes one connection without a transaction (`mta-lite relay test`), naming each step.
A connection serves one transaction at a time; idle ones are kept per account and sent QUIT
after idle_timeout_s. Postfix checks every cached connection with RSET before reusing it; here
a connection whose last transaction ended with the reply to the final dot, idle for less than
RSET_AFTER_IDLE_S, is reused without (one round trip less per message); any other is checked
with RSET. Either way a dead one is replaced by a fresh connection, once: a server that hung
up on an unchecked connection is met at MAIL FROM (no reply, or 421), before anything of the
message was sent, and the transaction is run again on a new connection. Concurrent deliver()
calls are safe: each takes its own connection. How many run at once is the caller's
business (qmgr limits them to relay.concurrency per account).
The verifying TLS contexts are built once per CA file and kept (TlsContexts).

Guarantees:
  G3  deliver() never raises for a delivery problem and never bounces on its own: a closed
      pool or an internal error defers (451 4.3.0). What each reply means is decided in
      replies.py, the transaction in transaction.py, the set-up in connection.py.
  S3  every TLS context verifies the certificate against relay.host (check_hostname,
      CERT_REQUIRED), with relay.ca_file or the system store, and never below TLS 1.2
      (SMARTHOST_MIN_TLS), whatever old TLS a LAN listener allows; AUTH only inside TLS.
  A connection is reused only for the same Route (account, host, password and the other
  settings it logged in with), and only right after a completed transaction or after a 250
  to RSET; one that was cancelled or failed mid-transaction is never pooled. A transaction
  is run again on a fresh connection only when its reused one failed at MAIL FROM.
Must never: run two transactions at once on one connection; log or return a password.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from typing import Callable, NamedTuple

from mta_lite.config.schema import Route
from mta_lite.reply import R451_INTERNAL, Reply
from mta_lite.smarthost.connection import (REUSE_CHECK_TIMEOUT_S, Connection, Failure, Opener, Progress, Resolver,
                                           system_resolver)
from mta_lite.smarthost.content import Content
from mta_lite.smarthost.oauth.tokens import TokenManager
from mta_lite.smarthost.replies import ca_file_unusable
from mta_lite.smarthost.result import DeliveryResult
from mta_lite.smarthost.transaction import Transaction

log = logging.getLogger("mta_lite.smtp")

# A pooled connection idle for longer than this is checked with RSET before it is reused
# (servers drop idle clients after 10 s to 5 min: Postfix's smtpd_timeout is 300 s).
RSET_AFTER_IDLE_S = 2.0
# RFC 8996: TLS 1.0 and 1.1 are deprecated; the smarthost side is modern TLS only (S3).
SMARTHOST_MIN_TLS = ssl.TLSVersion.TLSv1_2
# Not an error: mail handed over while the queue manager stops; its log line must not read
# like one (an internal error is reply.R451_INTERNAL).
R451_CLOSED = Reply(451, "4.3.0", "smarthost client is shutting down; will try again later")


class TlsContexts:
    """A verifying client context per CA file (S3), rebuilt when the file changes on disk.
    One loaded before the privilege drop stays in use if the file can no longer be looked at
    (an admin's root-only CA file): a reload, which starts a new queue manager as root,
    picks up a change then."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[object, ssl.SSLContext]] = {}

    def get(self, ca_file: str) -> ssl.SSLContext | Reply:
        """The context for `ca_file` ("" for the system store), or the transient Reply why not."""
        cached = self._cache.get(ca_file)
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
            return ca_file_unusable(ca_file, exc)
        context.check_hostname = True           # the defaults, stated: S3 rests on them
        context.verify_mode = ssl.CERT_REQUIRED
        context.minimum_version = SMARTHOST_MIN_TLS   # whatever a LAN listener allows
        self._cache[ca_file] = (stamp, context)
        return context


class _Idle(NamedTuple):
    conn: Connection
    since: float        # on the pool's clock


class SmarthostPool:
    """Outbound SMTP connections, pooled per account (see the module docstring)."""

    def __init__(self, *, helo_name: str, clock: Callable[[], float] = time.monotonic,
                 idle_timeout_s: float = 30.0, resolver: Resolver | None = None,
                 tokens: TokenManager | None = None) -> None:
        if not helo_name or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in helo_name):
            raise ValueError(f"helo_name must be one word without control characters, got {helo_name!r}")
        self.helo_name = helo_name
        self._contexts = TlsContexts()
        self.tokens = tokens or TokenManager()     # OAuth2 access tokens, one manager per process
        self._opener = Opener(helo_name, resolver or system_resolver, self._contexts.get, self.retire, self.tokens)
        self._clock, self._idle_timeout_s = clock, idle_timeout_s
        # Keyed by the whole Route, i.e. by account plus the settings it logs in with, so
        # that a reloaded config never reuses a connection opened with the old host or password.
        self._idle: dict[Route, list[_Idle]] = {}
        self._retiring: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def tls_context(self, ca_file: str) -> ssl.SSLContext | Reply:
        """The verifying context for `ca_file`; qmgr loads each once while still root."""
        return self._contexts.get(ca_file)

    async def deliver(self, route: Route, sender: str, recipients: list[str], content: bytes | Content,
                      smtputf8: bool = False) -> DeliveryResult:
        """Relay one message; never raises for a delivery problem, every outcome is a result."""
        recipients = list(recipients)
        if not recipients:
            return DeliveryResult("none", ())
        if self._closed:
            return DeliveryResult.transient(recipients, R451_CLOSED)
        try:
            result = await self._attempt(route, sender, recipients, content, smtputf8, reuse=True)
            if result is None:      # a reused connection the server had closed: nothing was sent
                result = await self._attempt(route, sender, recipients, content, smtputf8, reuse=False)
            return result
        except Exception:   # a bug here must defer the mail, not crash the qmgr or bounce
            log.exception("smarthost client error while relaying via %s", route.relay.name)
            return DeliveryResult.transient(recipients, R451_INTERNAL)

    async def _attempt(self, route: Route, sender: str, recipients: list[str], content: bytes | Content,
                       smtputf8: bool, reuse: bool) -> DeliveryResult | None:
        """One transaction on a pooled (reuse) or a new connection; None if it was stale."""
        conn = await self._checkout(route) if reuse else await self._opener.open(route)
        if isinstance(conn, Failure):
            return DeliveryResult.transient(recipients, conn.reply, conn.relay, conn.auth_failed)
        return await self._transact(conn, sender, recipients, content, smtputf8)

    async def check_route(self, route: Route, progress: Progress) -> Failure | None:
        """Connect, TLS, EHLO and AUTH as `route` without sending mail; progress(step, what)
        hears each step that passed. None if all did, else the Failure (its step failed)."""
        opened = await self._opener.open(route, progress)
        if isinstance(opened, Failure):
            return opened
        await opened.quit()
        return None

    async def close(self) -> None:
        """QUIT and close every pooled connection; connections in use close when released."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for idle in self._idle.values():
            for item in idle:
                self.retire(item.conn)
        self._idle.clear()
        self._closed = True
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def retire(self, conn: Connection) -> None:
        """QUIT and close in the background; close() awaits what is still under way."""
        if self._closed or not conn.smtp.is_connected:
            conn.abort()
            return
        task = asyncio.get_running_loop().create_task(conn.quit())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _transact(self, conn: Connection, sender: str, recipients: list[str], content: bytes | Content,
                        smtputf8: bool) -> DeliveryResult | None:
        released = False
        try:
            transaction = Transaction(conn, sender, recipients, content, smtputf8)
            result = await transaction.run()
            if transaction.stale:
                log.info("connection to %s was closed by the server while idle; opening a new one", conn.relay)
                return None         # `released` stays False: the connection is aborted
            self._release(conn)
            released = True
            return result
        finally:
            if not released:        # stale, cancelled or crashed mid-transaction: never pool it
                conn.abort()

    async def _checkout(self, route: Route) -> Connection | Failure:
        idle = self._take(route)
        if idle is not None:
            conn = idle.conn
            if conn.between_transactions and self._clock() - idle.since < RSET_AFTER_IDLE_S:
                conn.unverified = True
                return conn
            if await conn.reset_ok(min(conn.timeout_s, REUSE_CHECK_TIMEOUT_S)):
                return conn
        return await self._opener.open(route)

    def _take(self, route: Route) -> _Idle | None:
        self._expire_idle()
        idle = self._idle.get(route, [])
        while idle:
            item = idle.pop()               # the most recently used: least likely timed out
            if item.conn.alive:
                return item
            item.conn.abort()
        return None

    def _release(self, conn: Connection) -> None:
        if self._closed:            # close() has returned: nobody would await a QUIT now
            conn.abort()
        elif not conn.alive:
            self.retire(conn)
        else:
            self._idle.setdefault(conn.route, []).append(_Idle(conn, self._clock()))
            self._arm_timer()

    def _expire_idle(self) -> None:
        now = self._clock()
        for route, idle in list(self._idle.items()):
            keep = [item for item in idle if item.conn.alive and now - item.since < self._idle_timeout_s]
            for item in idle:
                if item not in keep:
                    self.retire(item.conn)
            if keep:
                self._idle[route] = keep
            else:
                del self._idle[route]

    def _arm_timer(self) -> None:
        """Expire idle connections even when no further mail comes along to do it."""
        if self._timer is not None or not self._idle:
            return
        oldest = min(item.since for idle in self._idle.values() for item in idle)
        # A little slack, so that the timer never fires a hair before the connection is due.
        delay = max(oldest + self._idle_timeout_s - self._clock(), 0.0) + 0.01
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire_idle()
        self._arm_timer()
