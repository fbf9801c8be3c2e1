"""tokens — TokenManager: an access token per [oauth.NAME] provider, kept and refreshed.

    await manager.access_token(provider, refused="")   a usable token, or TokenError
    manager.snapshot(provider)                         for status: token ok until, the last
                                                       failure, warnings (health())

A token is reused until REFRESH_EARLY_S before it expires, then a new one is asked for:
client credentials ask again; a refresh-token grant sends the stored refresh token and, if
the endpoint rotates it, stores the new one durably (store.save) before the new access
token is handed out. `refused` names a token the smarthost just refused: a new one is asked
for unless another connection already got a different one meanwhile.

Guarantees: one request at a time per provider (an asyncio.Lock), so any number of
deliveries waiting for a token cause one request; after an endpoint failed to answer (down,
slow, garbage), the same error is returned without asking again for FAILURE_HOLD_S, so it
sees no storm (a refusal is not held: the account pauses for it, and a new login must be
tried at once); the refresh token is never lost to a crash (see store.py); every token and
refresh token joins the log's mask (maillog.mask_also) before it is used.
The token endpoint's machinery (grants.py with oauthlib, http.py with urllib.request) is
imported by load_endpoint_code(), not with this module: a relay without [oauth] never loads
it (about 2 MiB of interpreter objects, docs/benchmark.md); the queue manager calls it while
still root when its config has providers, so nothing is imported after the privilege drop.
Must never: log, return in a snapshot or put into an exception a token or a secret.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Awaitable, Callable

from mta_lite import maillog
from mta_lite.config.schema import OAuthProvider
from mta_lite.errors import TokenError
from mta_lite.smarthost.oauth.store import TokenRecord, TokenStore

log = logging.getLogger("mta_lite.smtp")

# Refresh this long before expiry: a token must not run out between AUTH and the end of a
# long DATA, and clocks drift; providers' tokens live an hour or more.
REFRESH_EARLY_S = 300.0
# A failed token request is not repeated within this, whoever asks (never a storm).
FAILURE_HOLD_S = 30.0
# Providers drop a refresh token unused for about 90 days (Microsoft: 90 days of
# inactivity); warn from 60 days on, a month before it breaks.
IDLE_WARN_S = 60 * 86400.0
SECRET_WARN_S = 30 * 86400.0

Post = Callable[[str, str, str], Awaitable[tuple[int, bytes]]]


def load_endpoint_code():
    """The grants module (oauthlib), with http.py (urllib.request) loaded beside it."""
    from mta_lite.smarthost.oauth import grants, http     # noqa: F401  (see the docstring)
    return grants


def _post(url: str, body: str, ca_file: str) -> Awaitable[tuple[int, bytes]]:
    from mta_lite.smarthost.oauth.http import post_form
    return post_form(url, body, ca_file)


def health(provider: OAuthProvider, record: TokenRecord, now: float) -> list[str]:
    """Warnings shown well before something breaks (pure)."""
    warnings = []
    if provider.grant == "refresh_token":
        if not record.refresh_token:
            warnings.append(f"no refresh token yet: run `mta-lite oauth login {provider.name}`")
        elif record.refresh_used_at and now - record.refresh_used_at > IDLE_WARN_S:
            days = int((now - record.refresh_used_at) // 86400)
            warnings.append(f"refresh token unused for {days} days (providers drop one unused for about 90): "
                            f"run `mta-lite relay test` on an account using it to renew it")
    if provider.client_secret_expires:
        expires = datetime.datetime.combine(datetime.date.fromisoformat(provider.client_secret_expires),
                                            datetime.time(), datetime.timezone.utc).timestamp()
        days = int((expires - now) // 86400)
        if expires <= now:
            warnings.append(f"client secret expired on {provider.client_secret_expires}: make a new one "
                            "and set client_secret")
        elif expires - now <= SECRET_WARN_S:
            warnings.append(f"client secret expires on {provider.client_secret_expires} (in {days} days): "
                            "make a new one and set client_secret and client_secret_expires")
    return warnings


def _lost_in_crash(provider: OAuthProvider, exc: TokenError, unanswered: float) -> TokenError:
    """invalid_grant after a refresh whose answer was never stored (the relay was killed, or
    the connection lost, after the provider may have rotated the token): say so."""
    if exc.code != "invalid_grant" or not unanswered:
        return exc
    when = datetime.datetime.fromtimestamp(unanswered, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return TokenError(f"{exc}; a refresh sent at {when} got no answer the relay could store, and the provider "
                      f"may have replaced the refresh token then: run `mta-lite oauth login {provider.name}`",
                      refused=True, code=exc.code)


class TokenManager:
    """Access tokens per provider for one process (the queue manager, or `relay test`)."""

    def __init__(self, store: TokenStore | None = None, *, clock: Callable[[], float] = time.time,
                 post: Post = _post) -> None:
        self.store, self.clock, self.post = store, clock, post
        self._locks: dict[str, asyncio.Lock] = {}
        self._records: dict[str, TokenRecord] = {}
        self._failed: dict[str, tuple[float, TokenError]] = {}
        self._settings: dict[str, tuple] = {}      # what each kept token was asked for with

    def __repr__(self) -> str:
        return f"<token manager for {', '.join(sorted(self._records)) or 'no provider yet'}>"

    async def access_token(self, provider: OAuthProvider, refused: str = "") -> str:
        name = provider.name
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._forget_if_changed(provider)
            record, now = self._records.get(name), self.clock()
            if record is None and self.store is not None:      # a token kept by an earlier run
                record = self._records[name] = self.store.peek(name)
            if record and record.access_token and record.access_token != refused \
                    and record.expires_at - REFRESH_EARLY_S > now:
                return record.access_token
            held = self._failed.get(name)
            if held and not held[1].refused and now - held[0] < FAILURE_HOLD_S:
                raise held[1]
            try:
                record = await self._obtain(provider)
            except TokenError as exc:
                self._failed[name] = (self.clock(), exc)
                log.warning("oauth %s: no access token: %s", name, exc)
                raise
            self._failed.pop(name, None)
            return record.access_token

    def _forget_if_changed(self, provider: OAuthProvider) -> None:
        """A reloaded config that asks elsewhere, as another client or for another scope:
        the token kept in memory and a held failure are no longer its answer."""
        settings = (provider.token_url, provider.client_id, provider.scope, provider.grant, provider.client_secret)
        if self._settings.get(provider.name, settings) != settings:
            kept = self.store.peek(provider.name) if self.store is not None else TokenRecord()
            kept.access_token, kept.expires_at = "", 0.0     # the refresh token may still serve
            self._records[provider.name] = kept
            self._failed.pop(provider.name, None)
        self._settings[provider.name] = settings

    async def _obtain(self, provider: OAuthProvider) -> TokenRecord:
        if provider.grant == "client_credentials":
            return await self._client_credentials(provider)
        return await self._refresh(provider)

    async def _client_credentials(self, provider: OAuthProvider) -> TokenRecord:
        grants = load_endpoint_code()
        status, body = await self.post(provider.token_url, grants.client_credentials_body(provider), provider.ca_file)
        tokens = grants.read_token(status, body, self.clock())
        maillog.mask_also(f"oauth:{provider.name}", {tokens.access_token})
        record = TokenRecord(tokens.access_token, tokens.expires_at)
        self._records[provider.name] = record
        self._save(provider.name, record)
        return record

    async def _refresh(self, provider: OAuthProvider) -> TokenRecord:
        old = self._load(provider.name)
        if not old.refresh_token:
            raise TokenError(f"no refresh token for {provider.name}: run `mta-lite oauth login {provider.name}`",
                             refused=True)
        maillog.mask_also(f"oauth-refresh:{provider.name}", {old.refresh_token})
        grants = load_endpoint_code()
        body = grants.refresh_body(provider, old.refresh_token)
        unanswered = old.refresh_sent_at     # an earlier refresh whose answer never came back
        self._mark_sent(provider.name, old)
        status, answer = await self.post(provider.token_url, body, provider.ca_file)
        now = self.clock()
        try:
            tokens = grants.read_token(status, answer, now)
        except TokenError as exc:
            # Answered: this request is in no doubt; an earlier one stays in doubt (and the
            # refusal keeps saying so) until a refresh works or a new login replaces the token.
            self._mark_sent(provider.name, old, sent_at=unanswered)
            raise _lost_in_crash(provider, exc, unanswered) from None
        rotated = tokens.refresh_token or old.refresh_token
        maillog.mask_also(f"oauth-refresh:{provider.name}", {old.refresh_token, rotated})
        maillog.mask_also(f"oauth:{provider.name}", {tokens.access_token})
        record = TokenRecord(tokens.access_token, tokens.expires_at, rotated, now, old.seed_obtained_at)
        self._records[provider.name] = record       # in memory first: a failed save keeps it usable
        self._save(provider.name, record, required=rotated != old.refresh_token)
        return record

    def _mark_sent(self, name: str, record: TokenRecord, sent_at: float | None = None) -> None:
        """Note durably that a refresh request is (or is no longer) under way: if the relay
        dies before the answer is stored, the next refusal can say what probably happened."""
        record.refresh_sent_at = self.clock() if sent_at is None else sent_at
        self._save(name, record)

    def _load(self, name: str) -> TokenRecord:
        """From disk (another process may have rotated it; a seed may be newer), else memory."""
        if self.store is None:
            return self._records.get(name) or TokenRecord()
        try:
            return self.store.load(name)
        except OSError as exc:          # the seed was imported but could not be saved
            log.error("oauth %s: cannot update the token store: %s", name, exc.strerror or exc)
            return self.store.peek(name)

    def _save(self, name: str, record: TokenRecord, required: bool = False) -> None:
        if self.store is None:
            return
        try:
            self.store.save(name, record)
        except OSError as exc:
            # The token works from memory; a rotated refresh token that is not on disk is
            # lost at the next restart, so that is an error the log must show.
            level = logging.ERROR if required else logging.WARNING
            log.log(level, "oauth %s: cannot store the tokens in %s: %s", name, self.store.state_dir,
                    exc.strerror or exc)

    def snapshot(self, provider: OAuthProvider) -> dict:
        """For status: never a token, only times, the last failure and warnings."""
        now = self.clock()
        record = self._records.get(provider.name)
        if record is None and self.store is not None:
            record = self.store.peek(provider.name)
        record = record or TokenRecord()
        failed = self._failed.get(provider.name)
        return {"provider": provider.name, "grant": provider.grant,
                "token_until": record.expires_at or None,
                "refresh_token_used": record.refresh_used_at or None,
                "failed": str(failed[1]) if failed else "", "refused": bool(failed and failed[1].refused),
                "failed_at": failed[0] if failed else None,
                "client_secret_expires": provider.client_secret_expires,
                "warnings": health(provider, record, now)}
