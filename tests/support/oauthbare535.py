"""An OAuth2 smarthost that refuses a token the way Microsoft 365 is reported to: AUTH XOAUTH2 or
OAUTHBEARER answered with a bare ``535 5.7.8`` at once, with no ``334`` status challenge first
(Dovecot, tests/support/oauthsmarthost.py, always sends that challenge).

aiosmtpd in the test's own process (an event loop in a daemon thread: tests/support/faults.py
LoopThread), STARTTLS with a trustme certificate for 127.0.0.1, AUTH offered only inside TLS
(XOAUTH2 and OAUTHBEARER only, no PLAIN/LOGIN) and required before MAIL. A token is accepted
when the test's authorization server (tests/support/oauthserver.py), asked in-process as its
introspection endpoint would be, knows it as an active access token of the very user the SASL
string names; anything else is a bare 535.

Guarantees: ``__enter__`` returns once the port is bound; ``__exit__`` closes the listener and
every open connection (a relay's pooled one too) and stops the loop. The CA file is world-
readable, in a 0755 directory, so a relay that dropped to its own user can read it.
``attempts`` lists every AUTH (mechanism, SASL user, accepted), ``logins()`` gives (succeeded,
failed) as OAuthSmarthost does, ``delivered()`` the accepted mail.
Never: sends a 334 refusal challenge, keeps or logs a token, listens beyond 127.0.0.1.
Does not import pytest.
"""
from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.smtp import SMTP as AiosmtpdSMTP, AuthResult

from tests.support.faults import LoopThread
from tests.support.oauthserver import OAuthServer, loopback_tls_context

LOOPBACK = "127.0.0.1"
REFUSAL = "535 5.7.8 Authentication unsuccessful"


@dataclass(frozen=True)
class Delivery:
    """One accepted message: its Message-ID and who logged in to send it."""

    message_id: str
    sasl_username: str
    mechanism: str
    mail_from: str
    rcpt_tos: tuple[str, ...]


@dataclass(frozen=True)
class OAuthLogin:
    """What a successful AUTH leaves on the aiosmtpd session (``login`` as aiosmtpd reads it)."""

    login: str
    mechanism: str


def _unescape_saslname(name: str) -> str:
    return name.replace("=2C", ",").replace("=3D", "=")


def parse_sasl(mechanism: str, raw: bytes) -> tuple[str, str] | None:
    """(user, token) from an XOAUTH2 or OAUTHBEARER (RFC 7628) client message, or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    head, _, rest = text.partition("\x01")
    if mechanism == "XOAUTH2":
        user = head[len("user="):] if head.startswith("user=") else None
    else:       # gs2 header "n,a=USER," then key=value pairs
        parts = head.split(",")
        user = _unescape_saslname(parts[1][2:]) if len(parts) >= 2 and parts[1].startswith("a=") else None
    fields = dict(p.split("=", 1) for p in rest.split("\x01") if "=" in p)
    auth = fields.get("auth", "")
    if not user or not auth.startswith("Bearer "):
        return None
    return user, auth[len("Bearer "):]


class Bare535Smarthost:
    """See the module docstring; use as a context manager."""

    def __init__(self, server: OAuthServer) -> None:
        self.server = server
        self.port = 0
        self.attempts: list[tuple[str, str, bool]] = []
        self._delivered: list[Delivery] = []
        self._lock = threading.Lock()
        self._loop: LoopThread | None = None
        self._listener = None
        self._protocols: list[AiosmtpdSMTP] = []
        self.root = Path(tempfile.mkdtemp(prefix="mta-bare535-", dir="/tmp"))
        self.root.chmod(0o755)
        self.ca_file = self.root / "smarthost-ca.pem"
        self._context = loopback_tls_context(self.ca_file)

    # -- aiosmtpd handler hooks -------------------------------------------------------------

    async def auth_XOAUTH2(self, server: AiosmtpdSMTP, args: list[str]) -> AuthResult:
        return await self._auth(server, "XOAUTH2", args)

    async def auth_OAUTHBEARER(self, server: AiosmtpdSMTP, args: list[str]) -> AuthResult:
        return await self._auth(server, "OAUTHBEARER", args)

    async def _auth(self, server: AiosmtpdSMTP, mechanism: str, args: list[str]) -> AuthResult:
        if len(args) > 1:
            try:
                raw = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                return AuthResult(success=False, handled=False, message="501 5.5.2 Can't decode base64")
        else:       # no initial response: the empty 334 that asks for it (no refusal challenge)
            raw = await server.challenge_auth("")
            if not isinstance(raw, bytes):
                return AuthResult(success=False, handled=True)
        parsed = parse_sasl(mechanism, raw)
        user = parsed[0] if parsed else "?"
        accepted = parsed is not None and self._token_of(parsed[1]) == user
        with self._lock:
            self.attempts.append((mechanism, user, accepted))
        if not accepted:
            return AuthResult(success=False, handled=False, message=REFUSAL)
        return AuthResult(success=True, auth_data=OAuthLogin(user, mechanism))

    def _token_of(self, token: str) -> str | None:
        """The user of an active access token, as the server's introspection would answer."""
        store = self.server.store
        with store.lock:
            record = store.tokens.get(token)
            if record is None or record.kind != "access_token" or not record.active(time.time()):
                return None
            return record.user

    async def handle_DATA(self, server, session, envelope) -> str:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(envelope.content)
        login = session.auth_data
        with self._lock:
            self._delivered.append(Delivery(str(headers.get("Message-ID", "")).strip(), login.login,
                                            login.mechanism, envelope.mail_from, tuple(envelope.rcpt_tos)))
        return "250 2.0.0 Ok: queued"

    # -- what the test reads ----------------------------------------------------------------

    def delivered(self) -> list[Delivery]:
        with self._lock:
            return list(self._delivered)

    def logins(self) -> tuple[int, int]:
        """(succeeded, failed) AUTH attempts since start."""
        with self._lock:
            ok = sum(1 for attempt in self.attempts if attempt[2])
            return ok, len(self.attempts) - ok

    # -- life cycle -------------------------------------------------------------------------

    def _protocol(self) -> AiosmtpdSMTP:
        protocol = AiosmtpdSMTP(self, hostname="bare535.example.test", tls_context=self._context,
                                require_starttls=True, auth_require_tls=True, auth_required=True,
                                auth_exclude_mechanism=["PLAIN", "LOGIN"], loop=self._loop.loop)
        self._protocols.append(protocol)
        return protocol

    def __enter__(self) -> Bare535Smarthost:
        self._loop = LoopThread()

        async def listen():
            return await self._loop.loop.create_server(self._protocol, LOOPBACK, 0)
        self._listener = self._loop.call(listen())
        self.port = self._listener.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc_info) -> None:
        async def close():
            self._listener.close()
            for protocol in self._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
        if self._loop is not None:
            self._loop.call(close())
            self._loop.close()
            self._loop = None
        shutil.rmtree(self.root, ignore_errors=True)
