"""connection — one SMTP connection to a smarthost as one account, and how one is opened.

Opener.open(route, progress) resolves relay.host, connects, reads the greeting, sends EHLO,
starts TLS (STARTTLS, or implicit TLS from the first byte) and logs in, and returns either a
Connection ready for MAIL FROM or a Failure: the transient Reply, the relay= reached, whether
the login was refused, and which `relay test` step failed (DNS, TCP, greeting, TLS, EHLO,
AUTH). progress(step, what), if given, hears each step that passed. The step under way is
passed along explicitly, never kept in a field. What the opener needs from its pool (the
verifying TLS context per CA file, a way to QUIT a connection in the background) is handed
to it, so this module never imports the pool.

Guarantees:
  S3  certificates are always verified: the TLS context comes from the pool's cache, which
      builds every context with check_hostname and CERT_REQUIRED, against relay.host, with
      relay.ca_file or the system store. With tls = "starttls", STARTTLS is required: a
      smarthost that stops offering it gets no AUTH and the mail is deferred (4.7.5). AUTH
      is only ever sent inside TLS, whatever the config says.
  S5  a refused login is a Failure with auth_failed=True. One mechanism (PLAIN, else LOGIN)
      is tried once per connection, so a wrong password costs one failed login per attempt
      (aiosmtplib's login() would try every mechanism in turn).
  G3  every failure to open is transient: nothing was sent yet, and a 5xx during set-up is
      softened to its 4xx twin, so a misbehaving smarthost cannot bounce the queue.
SECURITY: faces smarthosts over the network. Their texts go through replies.clean_text (one
line, capped, password forms masked) before they reach a Reply or the progress report.
  OAuth2 (auth = "xoauth2" | "oauthbearer"): the access token is had before connecting
      (relay test step "token"); a 535, bare or after a 334 challenge, gets one new token
      and one retry, then the login counts as refused (S5). A token endpoint that fails is
      a Failure at step "token": refused by the provider counts as a refused login, down or
      garbled as a smarthost that did not answer (both pause the account: never a storm).
Must never: log, return or put into an exception the password, a token or an AUTH payload;
send AUTH in clear; send QUIT on a connection whose opening was cancelled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable, NamedTuple, TypeVar

from aiosmtplib import SMTP
from aiosmtplib.errors import SMTPAuthenticationError, SMTPException, SMTPResponseException

from mta_lite import maillog
from mta_lite.config.schema import Route
from mta_lite.errors import TokenError
from mta_lite.maillog import secret_forms
from mta_lite.reply import Reply
from mta_lite.smarthost.oauth import sasl
from mta_lite.smarthost.oauth.tokens import TokenManager
from mta_lite.smarthost.replies import (AUTH, EHLO, GREETING, STARTTLS, Step, auth_failed, auth_needs_tls,
                                        clean_text, connect_failure, dns_failure, failure_reply,
                                        no_sasl_mechanism, relay_label, reply_for, soften, starttls_missing,
                                        token_failure, token_refused)

log = logging.getLogger("mta_lite.smtp")

# A polite QUIT to a retiring connection must not hold anything up for the full command
# timeout; a server copes with a client that closes without it.
QUIT_TIMEOUT_S = 5.0
# The first reply on a pooled connection (RSET, or MAIL FROM when it was reused without RSET)
# is awaited this long at most: a dead connection should cost a fresh one, not relay.timeout_s
# (300 s by default).
REUSE_CHECK_TIMEOUT_S = 30.0
# Addresses of one smarthost name tried per attempt (Postfix smtp_mx_address_limit is 5;
# a smarthost name rarely has more than an IPv4 and an IPv6 address).
MAX_ADDRESSES_TRIED = 4

Resolver = Callable[[str, int], Awaitable[list[tuple[int, tuple]]]]
Progress = Callable[[str, str], None]
T = TypeVar("T")


async def system_resolver(host: str, port: int) -> list[tuple[int, tuple]]:
    """(family, sockaddr) for each address of host; IP literals without a lookup."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]


class Failure(NamedTuple):
    """Why no usable connection could be had. Always transient."""

    step: str                   # the `relay test` step that failed: DNS, TCP, greeting, TLS, EHLO, AUTH
    reply: Reply
    relay: str = "none"         # Postfix's relay=: "host[ip]:port" once connected
    auth_failed: bool = False   # the smarthost refused our login (S5)


class Connection:
    """One SMTP connection as one account: the aiosmtplib client, its route and relay= label."""

    def __init__(self, smtp: SMTP, route: Route, relay: str) -> None:
        self.smtp, self.route, self.relay = smtp, route, relay
        self.timeout_s = route.relay.timeout_s
        self.reusable = True
        # The last transaction ended with the server's reply to the final dot, so the server
        # is between transactions (RFC 5321 4.1.1.4): a reuse soon after needs no RSET.
        self.between_transactions = False
        # Reused without RSET: a server that hung up meanwhile is met at MAIL FROM, and the
        # transaction is then tried on a fresh connection (transaction.py, stale).
        self.unverified = False
        password = route.password.reveal() if route.password else ""
        self.secrets = tuple(secret_forms(password, [route.username])) if password else ()

    def __repr__(self) -> str:
        return f"<smarthost connection {self.relay} account={self.route.account}>"

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

    async def reset_ok(self, timeout_s: float) -> bool:
        """RSET: clears any transaction and proves the connection alive; aborts it if not."""
        ok = False
        try:
            ok = (await self.run(self.smtp.execute_command(b"RSET"), timeout_s)).code == 250
        except (OSError, SMTPException):
            pass    # dead or confused: a fresh connection will do
        finally:
            if not ok:      # also when cancelled: a half-checked connection is never pooled
                self.abort()
        return ok

    async def quit(self) -> None:
        try:
            await self.run(self.smtp.quit(), min(self.timeout_s, QUIT_TIMEOUT_S))
        except (OSError, SMTPException):
            pass    # the connection is being thrown away; how it ends changes nothing
        self.abort()


@dataclass(frozen=True)
class Opener:
    """Opens connections for a pool; what it needs from the pool is injected."""

    helo_name: str
    resolve: Resolver
    tls_context: Callable[[str], ssl.SSLContext | Reply]    # per CA file, always verifying (S3)
    retire: Callable[[Connection], None]                    # QUIT in the background
    tokens: TokenManager | None = None                      # OAuth2 access tokens (auth = "xoauth2"...)

    async def open(self, route: Route, progress: Progress | None = None) -> Connection | Failure:
        """A Connection past greeting, EHLO, TLS and AUTH for `route`, or why not."""
        return await _Opening(self, route, progress).run()


class _OpenFailed(Exception):
    """Ends an opening half-way; carries the Failure to return."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.step)
        self.failure = failure


class _Opening:
    """One attempt to open a connection for one route."""

    def __init__(self, opener: Opener, route: Route, progress: Progress | None) -> None:
        self.opener, self.route, self.relay, self.progress = opener, route, route.relay, progress

    def _passed(self, step: str, what: str) -> None:
        if self.progress is not None:
            self.progress(step, what)

    async def run(self) -> Connection | Failure:
        context = self._tls_context()
        if isinstance(context, Failure):
            return context
        token = await self._token()         # before connecting: no token, no login to waste
        if isinstance(token, Failure):
            return token
        connected = await self._connect_tcp()
        if isinstance(connected, Failure):
            return connected
        sock, label = connected
        smtp = SMTP(hostname=self.relay.host, sock=sock, local_hostname=self.opener.helo_name,
                    timeout=None, use_tls=self.relay.tls == "implicit",
                    start_tls=False, tls_context=context)
        conn = Connection(smtp, self.route, label)
        try:
            await self._handshake(conn, token)
        except _OpenFailed as failed:
            self._discard(conn, sock, polite=True)
            return failed.failure
        except BaseException:       # cancelled or crashed: nobody waits for a QUIT
            self._discard(conn, sock, polite=False)
            raise
        return conn

    def _tls_context(self) -> ssl.SSLContext | None | Failure:
        """The verifying context (S3), None for tls = "none"; credentials never go in clear."""
        if self.route.username and self.relay.tls == "none":
            return Failure("AUTH", auth_needs_tls(self.relay.host))
        if self.relay.tls == "none":
            return None
        context = self.opener.tls_context(self.relay.ca_file)
        return Failure("TLS", context) if isinstance(context, Reply) else context

    async def _token(self, refused: str = "", relay: str = "none") -> str | Failure:
        """The OAuth2 access token ("" for a password login), or the Failure at step "token"."""
        provider = self.route.oauth
        if provider is None or self.route.auth not in (sasl.XOAUTH2, sasl.OAUTHBEARER):
            return ""
        if self.opener.tokens is None:
            return Failure("token", token_failure(provider.name, "this client keeps no tokens", False), relay)
        try:
            token = await self.opener.tokens.access_token(provider, refused)
        except TokenError as exc:
            return Failure("token", token_failure(provider.name, str(exc), exc.refused), relay,
                           auth_failed=exc.refused)
        forms = sasl.secret_forms(self.route.username, token)
        maillog.mask_also(f"account:{self.route.account}", forms)
        self._passed("token", f"access token from {provider.name} ({provider.grant.replace('_', ' ')})")
        return token

    def _discard(self, conn: Connection, sock: socket.socket, polite: bool) -> None:
        """A connection that failed to open: QUIT if it can still talk, never when cancelled."""
        if conn.smtp.transport is None:         # connect() failed: no transport owns the socket
            conn.abort()
            sock.close()
        elif polite:
            self.opener.retire(conn)            # QUIT in the background, awaited by the pool's close()
        else:
            conn.abort()                        # the transport closes the socket

    async def _resolve(self) -> list[tuple[int, tuple]] | Failure:
        relay = self.relay
        try:    # asyncio.timeout, not wait_for: see Connection.run
            async with asyncio.timeout(relay.timeout_s):
                addresses = await self.opener.resolve(relay.host, relay.port)
        except OSError as exc:                  # socket.gaierror and TimeoutError included
            return Failure("DNS", dns_failure(relay.host, exc))
        if not addresses:
            return Failure("DNS", dns_failure(relay.host, None))
        self._passed("DNS", f"{relay.host} is {', '.join(str(a[1][0]) for a in addresses)}")
        return addresses

    async def _connect_tcp(self) -> tuple[socket.socket, str] | Failure:
        """A connected socket to the first address that answers, and its relay= label."""
        addresses = await self._resolve()
        if isinstance(addresses, Failure):
            return addresses
        relay, refused = self.relay, None
        for family, sockaddr in addresses[:MAX_ADDRESSES_TRIED]:
            sock = await self._connect_to(family, sockaddr)
            if isinstance(sock, Reply):
                refused = sock
                continue
            label = relay_label(relay.host, sockaddr[0], relay.port)
            self._passed("TCP", f"connected to {label}")
            return sock, label
        return Failure("TCP", refused)

    async def _connect_to(self, family: int, sockaddr: tuple) -> socket.socket | Reply:
        relay = self.relay
        sock, connected = socket.socket(family, socket.SOCK_STREAM), False
        try:
            sock.setblocking(False)
            async with asyncio.timeout(relay.timeout_s):
                await asyncio.get_running_loop().sock_connect(sock, sockaddr)
            connected = True
        except OSError as exc:
            return connect_failure(relay.host, sockaddr[0], relay.port, exc)
        finally:
            if not connected:
                sock.close()
        return sock

    async def _handshake(self, conn: Connection, token: str = "") -> None:
        """Greeting, EHLO, TLS, AUTH; raises _OpenFailed at the first step that fails."""
        tls = self.relay.tls
        # With implicit TLS the handshake happens before the greeting can be read.
        greeting = await self._step(conn, "TLS" if tls == "implicit" else "greeting", GREETING, conn.smtp.connect())
        self._passed("greeting", clean_text(f"{greeting.code} {greeting.message}"))
        await self._step(conn, "EHLO", EHLO, conn.smtp.ehlo())
        if tls == "starttls":
            await self._starttls(conn)
        if tls != "none":
            cipher = conn.smtp.get_transport_info("cipher") or ("unknown", "unknown", 0)
            log.info("Verified TLS connection established to %s: %s with cipher %s",
                     conn.relay, cipher[1], cipher[0])
            self._passed("TLS", f"certificate verified for {self.relay.host}, {cipher[1]} {cipher[0]}")
        offered = " ".join(sorted(conn.smtp.esmtp_extensions)).upper()
        self._passed("EHLO", clean_text(f"offers {offered}"))
        if token:
            await self._login_oauth(conn, token)
        elif self.route.username:
            await self._login(conn)

    async def _starttls(self, conn: Connection) -> None:
        # Checked here rather than left to aiosmtplib, so the S3 decision stays visible.
        if not conn.smtp.supports_extension("starttls"):
            raise _OpenFailed(Failure("TLS", starttls_missing(conn.relay), conn.relay))
        await self._step(conn, "TLS", STARTTLS, conn.smtp.starttls())
        await self._step(conn, "TLS", EHLO, conn.smtp.ehlo())

    async def _login(self, conn: Connection) -> None:
        if conn.smtp.get_transport_info("sslcontext") is None:     # S3: AUTH only inside TLS
            raise _OpenFailed(Failure("AUTH", auth_needs_tls(conn.relay), conn.relay))
        mechanisms = conn.smtp.server_auth_methods
        if "plain" in mechanisms:
            login = conn.smtp.auth_plain
        elif "login" in mechanisms:
            login = conn.smtp.auth_login
        else:
            raise _OpenFailed(Failure("AUTH", no_sasl_mechanism(conn.relay, mechanisms), conn.relay))
        password = self.route.password.reveal() if self.route.password else ""
        await self._step(conn, "AUTH", AUTH, login(self.route.username, password))
        self._passed("AUTH", f"logged in as {self.route.username}")

    async def _login_oauth(self, conn: Connection, token: str) -> None:
        """XOAUTH2 or OAUTHBEARER; after a 535 that may mean an expired or revoked token, one
        new token and one retry (S5: at most two logins per attempt, then the account pauses)."""
        if conn.smtp.get_transport_info("sslcontext") is None:     # S3: a token only inside TLS
            raise _OpenFailed(Failure("AUTH", auth_needs_tls(conn.relay), conn.relay))
        mechanism = self.route.auth
        if mechanism not in conn.smtp.server_auth_methods:
            raise _OpenFailed(Failure("AUTH", no_sasl_mechanism(conn.relay, conn.smtp.server_auth_methods,
                                                                mechanism.upper()), conn.relay))
        code, message, challenge = await self._oauth_auth(conn, mechanism, token)
        if code != 235 and sasl.says_token_invalid(code, challenge):
            log.info("%s refused the token of %s (%s); asking for a new one", conn.relay, self.route.account,
                     clean_text(sasl.challenge_words(challenge) or f"{code} {message}", conn.secrets))
            token = await self._token(refused=token, relay=conn.relay)
            if isinstance(token, Failure):
                raise _OpenFailed(token)
            code, message, challenge = await self._oauth_auth(conn, mechanism, token)
        if code != 235:
            reply = token_refused(code, message, conn.relay, sasl.challenge_words(challenge), conn.secrets)
            raise _OpenFailed(Failure("AUTH", reply, conn.relay, auth_failed=code != 421))
        self._passed("AUTH", f"logged in as {self.route.username} with {mechanism.upper()}")

    async def _oauth_auth(self, conn: Connection, mechanism: str, token: str) -> tuple[int, str, dict | None]:
        """One AUTH exchange: (final code, its text, the decoded 334 challenge if one came)."""
        conn.secrets = (*conn.secrets, *sasl.secret_forms(self.route.username, token))
        initial = sasl.initial_response(mechanism, self.route.username, token)
        challenge = None
        try:
            answer = await conn.run(conn.smtp.execute_command(b"AUTH", mechanism.upper().encode(), initial))
            if answer.code == 334:      # a refusal with a status (RFC 7628 3.2.2): answer, then 535
                challenge = sasl.decode_challenge(answer.message)
                answer = await conn.run(conn.smtp.execute_command(sasl.CHALLENGE_ANSWER[mechanism]))
        except (OSError, SMTPException) as exc:         # aiosmtplib's timeouts and disconnects too
            raise _OpenFailed(Failure("AUTH", failure_reply(exc, conn.relay, AUTH.doing), conn.relay)) from None
        return answer.code, answer.message, challenge

    async def _step(self, conn: Connection, check: str, step: Step, op: Awaitable[T]) -> T:
        """Await one step of the handshake; a refusal or a failure ends the opening, worded
        for `step` and reported as the `relay test` step `check`."""
        refused_login = False
        try:
            return await conn.run(op)
        except SMTPAuthenticationError as exc:  # carries the server's reply, never our payload
            reply = auth_failed(exc.code, exc.message, conn.relay, conn.secrets)
            refused_login = exc.code != 421
        except SMTPResponseException as exc:    # before OSError: some are both
            reply = soften(reply_for(exc.code, exc.message, step.where, conn.secrets))
        except OSError as exc:                  # aiosmtplib's timeouts and disconnects too
            reply = failure_reply(exc, conn.relay, step.doing)
        raise _OpenFailed(Failure(check, reply, conn.relay, auth_failed=refused_login))
