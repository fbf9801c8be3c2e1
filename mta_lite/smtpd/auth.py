"""auth — SMTP AUTH on submission listeners (RFC 4954): PLAIN and LOGIN, under TLS only.

SessionAuth is the pure part, one per session: it answers the AUTH command and the client's
responses to 334 challenges and decodes the credentials. Once it has them the session
returns an AuthRequest instead of a Reply; the SMTP engine hands that to the listener's
Authenticator, which checks the password hash off the event loop, counts failures per
client IP and returns an AuthResult; the engine feeds that back through
Session.auth_checked() -> SessionAuth.settle() for the reply. Both are plain data; the session keeps no credentials.
Guarantees: AUTH is advertised and accepted only on a listener with auth = "required" and
only once TLS is active (538 5.7.11 otherwise); after MAX_AUTH_FAILURES failures (in one
session, or from one IP within AUTH_FAILURE_WINDOW_S) the next AUTH gets 421 4.7.0 and the
connection closes; an unknown user costs the same hash check as a known one; at most
MAX_PARALLEL_CHECKS checks run at once (16 MiB each: G5).
SECURITY: faces untrusted input. AUTH payloads, their base64 and the decoded password are
never logged, never echoed in a reply and dropped right after the check (S3). Log lines
name the mechanism and the client and, after a success only, the user name as configured.
Must never: accept a login without TLS, or log anything the client sent during AUTH.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass, field
from typing import Callable

from mta_lite.passhash import parse_hash, verify
from mta_lite.reply import (R235_AUTH_OK, R421_AUTH_FAILURES, R501_AUTH_ABORTED, R501_AUTH_BASE64,
                     R501_AUTH_SYNTAX, R503_AUTH_DISABLED, R503_AUTH_DONE, R503_IN_TRANSACTION,
                     R503_NEED_HELO, R504_AUTH_MECHANISM, R535_AUTH_FAILED, R538_ENCRYPTION_REQUIRED,
                     Reply)

log = logging.getLogger("mta_lite.smtpd")

MECHANISMS = ("PLAIN", "LOGIN")
# Two typos are human; a third failure in a row is a guesser (the figure).
MAX_AUTH_FAILURES = 3
# How long a client's failures count: 3 guesses per 10 minutes is at most 432 a day, while
# a user who mistyped three times waits 10 minutes at worst.
AUTH_FAILURE_WINDOW_S = 600.0
# Memory bound for the failure table (G5): past it the least recently failed client goes.
MAX_TRACKED_CLIENTS = 10_000
# The Pi's two cores; each scrypt check holds 16 MiB while it runs.
MAX_PARALLEL_CHECKS = 2
USERNAME_CHALLENGE = "VXNlcm5hbWU6"     # base64("Username:"), what every LOGIN server sends
PASSWORD_CHALLENGE = "UGFzc3dvcmQ6"     # base64("Password:")


@dataclass(frozen=True)
class Challenge(Reply):
    """`334 <base64>`: the space stays when the challenge is empty (RFC 4954 section 4)."""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: bytes = field(repr=False)


@dataclass(frozen=True)
class AuthRequest:
    """The session's request to check a login: returned by Session.handle_line() instead of
    a Reply; the engine answers it with Session.auth_checked(AuthResult)."""

    client_ip: str
    mechanism: str                  # PLAIN or LOGIN, for the log line
    credentials: Credentials


@dataclass(frozen=True)
class AuthResult:
    """The outcome of a check: the user now logged in, or None; `blocked`: the client is over
    the failure limit and is not even checked."""

    user: str | None
    blocked: bool = False


# A malformed PLAIN message is checked like an unknown user: same cost, counts as a failure.
NO_CREDENTIALS = Credentials("", b"")


def decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4648 alphabet, padding required); None for anything else."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_plain(message: bytes) -> Credentials | None:
    """RFC 4616 `authzid NUL authcid NUL passwd`; an authzid other than the authcid (acting
    for another user) is not offered, so it fails like a wrong password."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    authzid, authcid, password = parts
    if authzid and authzid != authcid:
        return None
    try:
        return Credentials(authcid.decode("utf-8"), password)
    except UnicodeDecodeError:
        return None


def too_many_failures(hostname: str) -> Reply:
    return R421_AUTH_FAILURES.with_text(f"{hostname} {R421_AUTH_FAILURES.text}")


class SessionAuth:
    """The AUTH state of one session: the exchange in progress, the login, the failures."""

    def __init__(self, client_ip: str) -> None:
        self.client_ip = client_ip
        self.user: str | None = None
        self.mechanism = ""
        self.failures = 0
        self._step = ""                 # "", "plain", "login-user", "login-password"
        self._username = ""

    @property
    def in_exchange(self) -> bool:
        return bool(self._step)

    def cancel(self) -> None:
        self._step, self._username = "", ""

    @staticmethod
    def advertised(ctx) -> str | None:
        """The EHLO keyword line: only on an auth listener and only under TLS."""
        return "AUTH " + " ".join(MECHANISMS) if ctx.auth != "none" and ctx.tls_active else None

    def command(self, arg: str, ctx, greeted: bool, in_tx: bool) -> Reply | AuthRequest:
        """`AUTH <mechanism> [initial-response]`."""
        refusal = self._refusal(ctx, greeted, in_tx)
        if refusal is not None:
            return refusal
        mechanism, _, initial = arg.strip().partition(" ")
        self.mechanism = mechanism.upper()
        if not mechanism:
            return R501_AUTH_SYNTAX
        if self.mechanism not in MECHANISMS:
            return R504_AUTH_MECHANISM
        self._step = "plain" if self.mechanism == "PLAIN" else "login-user"
        if initial.strip():
            return self.respond(initial.strip().encode("utf-8"))
        return Challenge(334, "", "" if self._step == "plain" else USERNAME_CHALLENGE)

    def _refusal(self, ctx, greeted: bool, in_tx: bool) -> Reply | None:
        if ctx.auth == "none":
            return R503_AUTH_DISABLED
        if not greeted:
            return R503_NEED_HELO
        if not ctx.tls_active:
            return R538_ENCRYPTION_REQUIRED
        if self.user is not None:
            return R503_AUTH_DONE
        if in_tx:
            return R503_IN_TRANSACTION
        if self.failures >= MAX_AUTH_FAILURES:
            return too_many_failures(ctx.hostname)
        return None

    def respond(self, line: bytes) -> Reply | AuthRequest:
        """The client's answer (without CRLF) to the last 334."""
        step, self._step = self._step, ""
        if line == b"*":
            self._username = ""
            return R501_AUTH_ABORTED
        data = b"" if line == b"=" else decode_base64(line)
        if data is None:
            self._username = ""
            return R501_AUTH_BASE64
        if step == "login-user":
            # Undecodable bytes become U+FFFD, which no configured user name contains.
            self._username, self._step = data.decode("utf-8", "replace"), "login-password"
            return Challenge(334, "", PASSWORD_CHALLENGE)
        if step == "login-password":
            credentials = Credentials(self._username, data)
        else:
            credentials = decode_plain(data) or NO_CREDENTIALS
        self._username = ""
        return AuthRequest(self.client_ip, self.mechanism, credentials)

    def settle(self, result: AuthResult, hostname: str) -> Reply:
        """The check's outcome: 235 and the login, 535, or 421 for a client over the limit."""
        if result.blocked:
            return too_many_failures(hostname)
        if result.user is None:
            self.failures += 1
            return R535_AUTH_FAILED
        self.user = result.user
        return R235_AUTH_OK


class FailureLimit:
    """Authentication failures per client IP within a sliding window; the clock is injected."""

    def __init__(self, limit: int = MAX_AUTH_FAILURES, window_s: float = AUTH_FAILURE_WINDOW_S,
                 max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._times: dict[str, list[float]] = {}

    def blocked(self, ip: str, now: float) -> bool:
        times = [t for t in self._times.get(ip, ()) if now - t < self.window_s]
        if times:
            self._times[ip] = times
        else:
            self._times.pop(ip, None)
        return len(times) >= self.limit

    def failed(self, ip: str, now: float) -> None:
        times = self._times.pop(ip, [])     # re-inserted last: the dict is oldest-first
        self._times[ip] = (times + [now])[-self.limit:]
        while len(self._times) > self.max_clients:
            del self._times[next(iter(self._times))]

    def succeeded(self, ip: str) -> None:
        self._times.pop(ip, None)


class Authenticator:
    """The listener's side of AUTH: checks password hashes, counts failures per client IP."""

    def __init__(self, users: dict, clock: Callable[[], float], limit: FailureLimit | None = None) -> None:
        self.hashes = {name: parse_hash(user.password_hash) for name, user in users.items()}
        self.clock = clock
        self.limit = limit or FailureLimit()
        self._slots = asyncio.Semaphore(MAX_PARALLEL_CHECKS)

    async def check(self, request: AuthRequest) -> AuthResult:
        """Check a session's login; the session turns the result into its reply."""
        creds, ip = request.credentials, request.client_ip
        if self.limit.blocked(ip, self.clock()):
            log.warning("warning: [%s]: too many authentication failures; disconnecting", ip)
            return AuthResult(None, blocked=True)
        async with self._slots:
            # scrypt releases the GIL: in a worker thread (as the queue file's fsync) it costs
            # the other sessions nothing, where on the event loop it would stall them all.
            ok = await asyncio.to_thread(verify, self.hashes.get(creds.username), creds.password)
        if not ok:
            self.limit.failed(ip, self.clock())
            log.warning("warning: [%s]: SASL %s authentication failed", ip, request.mechanism)
            return AuthResult(None)
        self.limit.succeeded(ip)
        log.info("[%s]: sasl_method=%s, sasl_username=%s", ip, request.mechanism, creds.username)
        return AuthResult(creds.username)
