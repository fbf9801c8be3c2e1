"""oauth — the kinds and checks of OAuth2 to the smarthost: [oauth.NAME] providers and the
`auth` / `oauth` keys of a relay account or a [[senders]] entry.

    PRESETS             what preset = "microsoft" | "google" fills in (token and device
                        URLs, the default scope per grant)
    preset_url(), preset_scope()   the derived defaults of token_url, device_url, scope
    provider_checks     [oauth.NAME] as a whole: a preset's tenant, a token URL, a secret
    oauth_credentials   auth = "xoauth2"|"oauthbearer" names an [oauth.NAME], no password

Guarantees: every problem is one ConfigError naming file, key and value; a token URL is
https (TLS verified, S3); a client secret is a Secret like a password (never shown).
Must never: put a client secret into an error message.
"""

from __future__ import annotations

import datetime
from urllib.parse import urlsplit

from mta_lite.config.keys import Kind, Table

AUTH_MODES = ("password", "xoauth2", "oauthbearer")
OAUTH_AUTH_MODES = ("xoauth2", "oauthbearer")
GRANTS = ("client_credentials", "refresh_token")
PRESET_NAMES = ("microsoft", "google")

# Microsoft identity platform v2.0 endpoints (per tenant) and Google's OAuth endpoints.
_MICROSOFT = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/"
PRESETS = {
    "microsoft": {
        "token_url": _MICROSOFT + "token",
        "device_url": _MICROSOFT + "devicecode",
        # App-only (client credentials) asks for the resource's .default scope; a user's
        # delegated grant asks for SMTP.Send, and offline_access to get a refresh token.
        "scope": {"client_credentials": "https://outlook.office365.com/.default",
                  "refresh_token": "https://outlook.office365.com/SMTP.Send offline_access"},
    },
    "google": {
        "token_url": "https://oauth2.googleapis.com/token",
        "device_url": "https://oauth2.googleapis.com/device/code",
        # Gmail over SMTP takes a user's token only: Google has no client credentials grant for it.
        "scope": {"refresh_token": "https://mail.google.com/"},
    },
}


def preset_url(which: str):
    """The derive= of token_url / device_url: the preset's URL for its tenant, else none."""
    def derive(table: Table) -> str:
        preset = PRESETS.get(table.got["preset"])
        if preset is not None:
            return preset[which].format(tenant=table.got["tenant"])
        if which == "device_url":
            return ""
        raise table.error(which, 'missing (required without preset = "microsoft" or "google")')
    return derive


def preset_scope(table: Table) -> str:
    preset = PRESETS.get(table.got["preset"])
    return preset["scope"].get(table.got["grant"], "") if preset else ""


def _preset(table: Table, name: str, value: str) -> str:
    if value not in PRESET_NAMES:
        raise table.error(name, f'expected "microsoft" or "google" (or no preset and a token_url), got {value!r}')
    return value


def _https_url(table: Table, name: str, value: str) -> str:
    """An https URL with a host: the token endpoint gets the client secret (S3)."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise table.error(name, f"expected an https:// URL, got {value!r}")
    return value


def _tenant(table: Table, name: str, value: str) -> str:
    if value and not all(ch.isalnum() or ch in "-._" for ch in value):
        raise table.error(name, f'expected a tenant ID or domain like "contoso.onmicrosoft.com", got {value!r}')
    return value


def _date(table: Table, name: str, value: str) -> str:
    if value:
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise table.error(name, f'expected a date like "2027-06-30", got {value!r}') from None
    return value


def provider_checks(table: Table) -> None:
    """[oauth.NAME] as a whole: microsoft needs a tenant; a client credentials grant a secret."""
    got = table.got
    if got["preset"] == "microsoft" and not got["tenant"]:
        raise table.error("tenant", 'preset = "microsoft" needs tenant = "<tenant ID or domain>"')
    if got["preset"] == "google" and got["grant"] != "refresh_token":
        raise table.error("grant", f'preset = "google" sends as a user: use grant = "refresh_token" '
                                   f'and `mta-lite oauth login` (got {got["grant"]!r})')
    if got["tenant"] and got["preset"] != "microsoft":
        raise table.error("tenant", 'tenant is only used with preset = "microsoft"')
    if not got["scope"]:
        raise table.error("scope", "missing (this key is required without a preset)")
    if table.secrets and got["grant"] == "client_credentials" and got["client_secret"] is None:
        raise table.error("client_secret", 'grant = "client_credentials" needs client_secret or client_secret_file')


def oauth_credentials(table: Table, tls: str) -> bool:
    """auth and oauth of a relay or sender; True if the entry logs in with OAuth (then the
    password checks do not apply)."""
    got = table.got
    if got["auth"] == "password":
        if got["oauth"]:
            raise table.error("oauth", 'oauth is used with auth = "xoauth2" or "oauthbearer"')
        return False
    if not table.secrets:
        return True
    if not got["oauth"]:
        raise table.error("oauth", f'auth = "{got["auth"]}" needs oauth = "<name of an [oauth.NAME] table>"')
    providers = table.top.got.get("oauth", {})
    if got["oauth"] not in providers:
        raise table.error("oauth", f"no provider named {got['oauth']!r} in [oauth]")
    if got["password"] is not None:
        raise table.error("password", f'auth = "{got["auth"]}" logs in with a token: remove the password')
    if not got["username"]:
        raise table.error("username", "the mailbox to send as is needed with OAuth (e.g. scanner@example.com)")
    if tls == "none":
        raise table.error("auth", 'a token is never sent outside TLS: set tls = "starttls" or "implicit"')
    return True


PRESET = Kind(str, _preset)
HTTPS_URL = Kind(str, _https_url)
TENANT = Kind(str, _tenant)
DATE = Kind(str, _date)
