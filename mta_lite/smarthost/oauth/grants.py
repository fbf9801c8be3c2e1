"""grants — token requests built, and token responses read, with oauthlib (RFC 6749, RFC 8628).

    client_credentials_body(provider)        grant_type=client_credentials (app-only)
    refresh_body(provider, refresh_token)    grant_type=refresh_token
    device_code_body(provider, device_code)  the device grant's polling request
    device_authorization_body(provider)      the device authorization request (RFC 8628 3.1)
    read_token(status, body, now)            Tokens, or TokenError in plain words
    read_device_authorization(status, body)  DeviceAuthorization, or TokenError

The client authenticates in the request body (client_secret_post), which Microsoft's and
Google's endpoints both take; a public client (no secret) sends its client_id alone.
Guarantees: pure (the clock is a parameter); a provider's refusal (invalid_grant,
invalid_client, ...) is TokenError(refused=True) with the provider's error code and
description, cleaned; an error page, a non-JSON or an incomplete answer is a transient
TokenError that names the HTTP status, never the body.
Must never: put a token, a refresh token or the client secret into a TokenError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode

from oauthlib.oauth2 import BackendApplicationClient, DeviceClient, WebApplicationClient
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from oauthlib.oauth2.rfc6749.parameters import parse_token_response

from mta_lite.config.schema import OAuthProvider
from mta_lite.errors import TokenError
from mta_lite.smarthost.replies import clean_text

# Errors that mean the provider will keep saying no until a person acts (RFC 6749 5.2, RFC 8628 3.5).
REFUSALS = ("invalid_grant", "invalid_client", "unauthorized_client", "access_denied", "invalid_scope",
            "unsupported_grant_type", "expired_token", "invalid_request")
# An access token without expires_in is assumed to live this long (Microsoft's and Google's
# tokens live an hour; assuming less only costs an early refresh).
DEFAULT_LIFETIME_S = 3600
# A provider's error description is for a person: keep it to one readable line.
MAX_DESCRIPTION_CHARS = 200


@dataclass(frozen=True)
class Tokens:
    """What one token response gave."""

    access_token: str
    expires_at: float
    refresh_token: str = ""         # "" when the endpoint sent none (keep the old one)

    def __repr__(self) -> str:
        return f"<tokens expiring at {self.expires_at:.0f}>"


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: float
    interval: float

    def __repr__(self) -> str:
        return f"<device authorization {self.user_code} at {self.verification_uri}>"


def _secret(provider: OAuthProvider) -> str | None:
    return provider.client_secret.reveal() if provider.client_secret else None


def client_credentials_body(provider: OAuthProvider) -> str:
    client = BackendApplicationClient(provider.client_id)
    return client.prepare_request_body(scope=provider.scope, include_client_id=True,
                                       client_secret=_secret(provider))


def refresh_body(provider: OAuthProvider, refresh_token: str) -> str:
    client = WebApplicationClient(provider.client_id)
    extra = {"client_secret": _secret(provider)} if provider.client_secret else {}
    return client.prepare_refresh_body(refresh_token=refresh_token, scope=provider.scope,
                                       client_id=provider.client_id, **extra)


def device_code_body(provider: OAuthProvider, device_code: str) -> str:
    client = DeviceClient(provider.client_id, client_secret=_secret(provider))
    extra = {"client_secret": _secret(provider)} if provider.client_secret else {}
    return client.prepare_request_body(device_code, include_client_id=True, **extra)


def device_authorization_body(provider: OAuthProvider) -> str:
    """RFC 8628 3.1: client_id and scope (oauthlib builds only the token request of this grant)."""
    fields = {"client_id": provider.client_id, "scope": provider.scope}
    if provider.client_secret:
        fields["client_secret"] = provider.client_secret.reveal()
    return urlencode(fields)


def provider_error(exc: OAuth2Error) -> TokenError:
    """The provider's `error: description`, cleaned and capped; refused if it needs a person."""
    description = clean_text(exc.description or "")[:MAX_DESCRIPTION_CHARS]
    words = f"{exc.error}: {description}" if description else exc.error
    return TokenError(clean_text(words), refused=exc.error in REFUSALS, code=str(exc.error))


def _params(status: int, body: bytes) -> dict:
    """The JSON answer as a dict; TokenError for an error (the provider's words) or garbage."""
    try:
        text = body.decode("utf-8")
        if not isinstance(json.loads(text), dict):  # RFC 6749 5.1: a JSON object, nothing else
            raise ValueError("not a JSON object")
        params = parse_token_response(text)        # raises the provider's error as OAuth2Error
    except OAuth2Error as exc:
        if exc.error in ("missing_token", "invalid_token_type") and not 200 <= status < 300:
            raise TokenError(f"the token endpoint answered HTTP {status} without an OAuth error") from None
        if exc.error == "missing_token":
            raise TokenError(f"the token endpoint answered HTTP {status} without a token") from None
        raise provider_error(exc) from None
    except (UnicodeDecodeError, ValueError, TypeError, Warning):
        raise TokenError(f"the token endpoint answered HTTP {status} with something that is not "
                         "an OAuth token response") from None
    return dict(params)


def read_token(status: int, body: bytes, now: float) -> Tokens:
    """Tokens from a token endpoint's answer, or TokenError."""
    params = _params(status, body)
    access, refresh = params.get("access_token"), params.get("refresh_token", "")
    if not isinstance(access, str) or not access or not isinstance(refresh, str):
        raise TokenError(f"the token endpoint answered HTTP {status} with a malformed token")
    token_type = str(params.get("token_type", "Bearer"))
    if token_type.lower() != "bearer":
        raise TokenError(f"the token endpoint gave a {clean_text(token_type)[:40]!r} token, not a bearer token")
    lifetime = params.get("expires_in", DEFAULT_LIFETIME_S)
    if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_LIFETIME_S
    return Tokens(access, now + float(lifetime), refresh)


def read_device_authorization(status: int, body: bytes) -> DeviceAuthorization:
    """The device authorization response (RFC 8628 3.2), or TokenError."""
    try:
        params = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TokenError(f"the device authorization endpoint answered HTTP {status} with something "
                         "that is not JSON") from None
    if not isinstance(params, dict):
        raise TokenError(f"the device authorization endpoint answered HTTP {status} with no object")
    if "error" in params:
        description = clean_text(str(params.get("error_description") or ""))[:MAX_DESCRIPTION_CHARS]
        words = clean_text(str(params["error"])) + (f": {description}" if description else "")
        raise TokenError(words, refused=True)
    try:
        return DeviceAuthorization(str(params["device_code"]), str(params["user_code"]),
                                   str(params.get("verification_uri") or params["verification_url"]),
                                   str(params.get("verification_uri_complete") or ""),
                                   float(params.get("expires_in", 900)), float(params.get("interval", 5)))
    except (KeyError, ValueError, TypeError):
        raise TokenError("the device authorization endpoint's answer lacks device_code, user_code "
                         "or verification_uri") from None
