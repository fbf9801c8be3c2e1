"""The state of the loopback OAuth2 authorization server (tests/support/oauthserver.py): clients,
access and refresh tokens, device codes, and the oauthlib ``RequestValidator`` that reads and
writes them.

Guarantees: a token is active only while it is known, unrevoked, unexpired and (for a refresh
token) not yet rotated away; a device code gives tokens once, only to the client it was issued
to, only after ``approve``; client secrets are compared in constant time; every method takes
the store's lock, so the HTTP threads and the test see one consistent state. Time comes from
the injected ``clock`` (``time.time`` by default).
Never: accepts an unknown token, refresh token or device code; lets a client use a grant or a
scope it was not registered for; keeps a rotated refresh token usable when rotation is on.
This module does no I/O and does not import pytest.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import unquote_plus

from oauthlib.oauth2.rfc8628.request_validator import RequestValidator
from oauthlib.oauth2.rfc8628.grant_types import DeviceCodeGrant

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_REFRESH = "refresh_token"
GRANT_DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
ALL_GRANTS = frozenset({GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH, GRANT_DEVICE})
# The letters of RFC 8628 section 6.1's example: no vowels, no look-alikes.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
ACCESS_LIFETIME_S = 3600      # Microsoft's and Google's usual access-token lifetime
DEVICE_EXPIRES_S = 900        # Microsoft's device codes last 15 minutes
DEVICE_INTERVAL_S = 1         # short, so tests poll quickly; RFC 8628's default is 5
# What a refresh grant answers: "rotate" a new refresh token, the old one dead after its use
# (strict rotation); "rotate_keep" a new one, the old one still valid (Microsoft's way);
# "same" the same one back; "omit" no refresh_token in the answer (Google's way).
REFRESH_POLICIES = ("rotate", "rotate_keep", "same", "omit")


@dataclasses.dataclass
class Client:
    """A registered OAuth client. ``secret`` None is a public client (device flow from a box);
    ``mailbox`` is the user its client-credentials tokens act as (Exchange's mailbox permission
    for the service principal); ``introspect`` marks a resource server (Dovecot)."""

    client_id: str
    secret: str | None
    scopes: list[str]
    mailbox: str | None = None
    grants: frozenset[str] = ALL_GRANTS
    introspect: bool = False


@dataclasses.dataclass
class TokenRecord:
    """An access or refresh token and what it grants."""

    kind: str                  # "access_token" or "refresh_token"
    client_id: str
    user: str
    scopes: list[str]
    grant_id: str              # every token of one authorisation shares it (RFC 7009 revocation)
    expires_at: float | None   # None: never (refresh tokens unless expired by the test)
    revoked: bool = False
    rotated: bool = False      # a refresh token replaced by a newer one

    def active(self, now: float) -> bool:
        if self.revoked or self.rotated:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclasses.dataclass
class DeviceRecord:
    """One device authorisation (RFC 8628 section 3.2) until it is used up."""

    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    expires_at: float
    user: str | None = None
    denied: bool = False
    used: bool = False
    last_poll: float | None = None


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _new_user_code() -> str:
    letters = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    return f"{letters[:4]}-{letters[4:]}"


def basic_credentials(headers: dict[str, str]) -> tuple[str, str] | None:
    """(client_id, secret) from an ``Authorization: Basic`` header (RFC 6749 section 2.3.1:
    both form-urlencoded before base64), None without a well-formed one."""
    value = headers.get("Authorization") or headers.get("authorization") or ""
    scheme, _, blob = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(blob.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, secret = decoded.partition(":")
    return (unquote_plus(name), unquote_plus(secret)) if sep else None


class Store(RequestValidator):
    """Clients, tokens and device codes, plus oauthlib's validator hooks over them."""

    def __init__(self, clock: Callable[[], float] = time.time, *,
                 refresh_policy: str = "rotate"):
        super().__init__()
        if refresh_policy not in REFRESH_POLICIES:
            raise ValueError(f"refresh_policy: one of {REFRESH_POLICIES}, got {refresh_policy!r}")
        self.clock = clock
        self.lock = threading.RLock()
        self.refresh_policy = refresh_policy
        self.access_lifetime_s: float = ACCESS_LIFETIME_S
        self.device_expires_s: float = DEVICE_EXPIRES_S
        self.device_interval_s: float = DEVICE_INTERVAL_S
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.devices: dict[str, DeviceRecord] = {}
        self.issued: Counter[str] = Counter()        # grant type -> token responses issued
        self.introspected: Counter[str] = Counter()  # resource server -> introspections

    # -- the test's side ---------------------------------------------------------------------

    def add_client(self, client: Client) -> Client:
        with self.lock:
            self.clients[client.client_id] = client
            return client

    def save_device(self, data: dict, client_id: str, scopes: list[str]) -> None:
        """Remember a device authorisation the endpoint just answered with."""
        with self.lock:
            self.devices[data["device_code"]] = DeviceRecord(
                device_code=data["device_code"], user_code=data["user_code"],
                client_id=client_id, scopes=list(scopes),
                expires_at=self.clock() + float(data["expires_in"]))

    def approve(self, user_code: str, username: str, *, deny: bool = False) -> None:
        """What the person does on the verification page: sign in as ``username`` and approve
        (or deny) the request shown for ``user_code``. KeyError for an unknown code."""
        with self.lock:
            record = next((d for d in self.devices.values()
                           if d.user_code == user_code.strip().upper()), None)
            if record is None:
                raise KeyError(f"no pending device authorisation with user code {user_code!r}")
            record.user, record.denied = username, deny

    def issue(self, client_id: str, user: str, scopes: list[str], *,
              refresh: bool, lifetime_s: float | None = None) -> dict:
        """Tokens for ``user`` as if a grant had just succeeded (the token response's dict)."""
        with self.lock:
            grant_id = _new_token()
            lifetime = self.access_lifetime_s if lifetime_s is None else lifetime_s
            response = {"access_token": _new_token(), "token_type": "Bearer",
                        "expires_in": int(lifetime), "scope": " ".join(scopes)}
            self._remember(response["access_token"], "access_token", client_id, user, scopes,
                           grant_id, self.clock() + lifetime)
            if refresh:
                response["refresh_token"] = _new_token()
                self._remember(response["refresh_token"], "refresh_token", client_id, user,
                               scopes, grant_id, None)
            return response

    def revoke(self, token: str) -> None:
        """Revoke ``token``; a refresh token takes its grant's access tokens with it."""
        with self.lock:
            record = self.tokens[token]
            record.revoked = True
            if record.kind == "refresh_token":
                for other in self.tokens.values():
                    if other.grant_id == record.grant_id:
                        other.revoked = True

    def expire(self, token: str) -> None:
        """Make ``token`` (access token, refresh token or device code) expired as of now."""
        with self.lock:
            record = self.tokens.get(token) or self.devices[token]
            record.expires_at = self.clock() - 1

    def active(self, token: str) -> bool:
        with self.lock:
            record = self.tokens.get(token)
            return record is not None and record.active(self.clock())

    def _remember(self, token: str, kind: str, client_id: str, user: str, scopes: list[str],
                  grant_id: str, expires_at: float | None) -> None:
        self.tokens[token] = TokenRecord(kind=kind, client_id=client_id, user=user,
                                         scopes=list(scopes), grant_id=grant_id,
                                         expires_at=expires_at)

    # -- client authentication (RFC 6749 section 2.3.1) --------------------------------------

    def _presented(self, request) -> tuple[str | None, str | None]:
        basic = basic_credentials(dict(request.headers or {}))
        if basic is not None:
            return basic
        return request.client_id, getattr(request, "client_secret", None)

    def client_authentication_required(self, request, *args, **kwargs) -> bool:
        client_id, secret = self._presented(request)
        client = self.clients.get(client_id or "")
        return secret is not None or client is None or client.secret is not None

    def authenticate_client(self, request, *args, **kwargs) -> bool:
        client_id, secret = self._presented(request)
        client = self.clients.get(client_id or "")
        if client is None or client.secret is None or secret is None:
            return False
        if not hmac.compare_digest(client.secret.encode(), secret.encode()):
            return False
        request.client, request.client_id = client, client.client_id
        return True

    def authenticate_client_id(self, client_id, request, *args, **kwargs) -> bool:
        client = self.clients.get(client_id or "")
        if client is None or client.secret is not None:
            return False
        request.client = client
        return True

    def validate_client_id(self, client_id, request, *args, **kwargs) -> bool:
        return client_id in self.clients

    def validate_grant_type(self, client_id, grant_type, client, request, *args, **kwargs):
        return grant_type in client.grants

    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs) -> bool:
        return all(scope in client.scopes for scope in scopes)

    def get_default_scopes(self, client_id, request, *args, **kwargs) -> list[str]:
        return list(self.clients[client_id].scopes)

    # -- refresh tokens -------------------------------------------------------------------

    def validate_refresh_token(self, refresh_token, client, request, *args, **kwargs) -> bool:
        record = self.tokens.get(refresh_token)
        if record is None or record.kind != "refresh_token":
            return False
        if record.client_id != client.client_id or not record.active(self.clock()):
            return False
        request.user = record.user
        return True

    def get_original_scopes(self, refresh_token, request, *args, **kwargs) -> list[str]:
        return list(self.tokens[refresh_token].scopes)

    def rotate_refresh_token(self, request) -> bool:
        return self.refresh_policy in ("rotate", "rotate_keep")

    def omit_refresh(self, token, token_handler=None, request=None):
        """oauthlib token modifier for the refresh grant: drop refresh_token ("omit")."""
        if self.refresh_policy == "omit":
            token.pop("refresh_token", None)
        return token

    # -- device codes (RFC 8628 section 3.5) -------------------------------------------------

    def validate_device_code(self, client_id, code, request, *args, **kwargs):
        record = self.devices.get(code)
        now = self.clock()
        if record is None or record.used or record.client_id != client_id:
            return None
        too_soon = record.last_poll is not None and now - record.last_poll < self.device_interval_s
        record.last_poll = now
        if now >= record.expires_at:
            return DeviceCodeGrant.DEVICE_CODE_EXPIRED
        if record.denied:
            return DeviceCodeGrant.DEVICE_CODE_DENIED
        if record.user is None:
            return DeviceCodeGrant.DEVICE_CODE_SLOW_DOWN if too_soon else \
                DeviceCodeGrant.DEVICE_CODE_PENDING
        record.used = True
        request.user, request.scopes = record.user, list(record.scopes)
        return DeviceCodeGrant.DEVICE_CODE_AUTHORIZED

    # -- issuing ---------------------------------------------------------------------------

    def save_bearer_token(self, token, request, *args, **kwargs) -> None:
        client = request.client
        user = request.user or client.mailbox or client.client_id
        scopes = list(request.scopes or [])
        old = self.tokens.get(request.refresh_token or "")
        grant_id = old.grant_id if old is not None else _new_token()
        self._remember(token["access_token"], "access_token", client.client_id, user, scopes,
                       grant_id, self.clock() + float(token["expires_in"]))
        new_refresh = token.get("refresh_token")
        if new_refresh and new_refresh not in self.tokens:
            self._remember(new_refresh, "refresh_token", client.client_id, user, scopes,
                           grant_id, None)
            if old is not None and self.refresh_policy == "rotate":
                old.rotated = True
        self.issued[request.grant_type] += 1

    # -- introspection (RFC 7662) and revocation (RFC 7009) ---------------------------------

    def introspect_token(self, token, token_type_hint, request, *args, **kwargs):
        if not getattr(request.client, "introspect", False):
            return None
        self.introspected[request.client.client_id] += 1
        record = self.tokens.get(token)
        if record is None or not record.active(self.clock()):
            return None
        # A refresh token is no bearer credential for a resource server (Dovecot would take
        # any active answer as a login): it is only described when asked for by its type.
        if record.kind == "refresh_token" and token_type_hint != "refresh_token":
            return None
        claims = {"username": record.user, "scope": " ".join(record.scopes),
                  "client_id": record.client_id}
        if record.kind == "access_token":
            claims["token_type"] = "Bearer"
        if record.expires_at is not None:
            claims["exp"] = int(record.expires_at)
        return claims

    def revoke_token(self, token, token_type_hint, request, *args, **kwargs) -> None:
        record = self.tokens.get(token)
        if record is not None and record.client_id == request.client.client_id:
            self.revoke(token)
