"""device — the device authorization grant (RFC 8628): a person approves the relay on another
screen, and the relay gets its first refresh token. Used by `mta-lite oauth login NAME`.

    await device_login(provider, out, post=..., sleep=..., clock=...)   Tokens, or TokenError

Steps: POST the device authorization request to device_url; tell the person (through
`out`, line by line, as soon as they are known: the console streams them) where to go and
which code to type; then poll the token endpoint every `interval` seconds. RFC 8628 3.5:
authorization_pending means keep polling, slow_down adds 5 seconds to the interval for good,
access_denied and expired_token end it, and so does the code's own expiry; an endpoint that
does not answer one poll is polled again at the next interval.
Guarantees: at most one poll per interval; never polls past the code's expiry.
Must never: print or return in an error a token or the device code (the user code is meant
to be shown).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from mta_lite.config.schema import OAuthProvider
from mta_lite.errors import TokenError
from mta_lite.smarthost.oauth import grants
from mta_lite.smarthost.oauth.http import post_form

SLOW_DOWN_STEP_S = 5.0          # RFC 8628 3.5
MIN_INTERVAL_S = 1.0            # never poll faster than this, whatever the server says
MAX_INTERVAL_S = 60.0


async def _post(url: str, body: str, ca_file: str) -> tuple[int, bytes]:
    return await post_form(url, body, ca_file)


async def device_login(provider: OAuthProvider, out: Callable[[str], None], *,
                       show_url: Callable[[str], None] | None = None,
                       post: Callable[[str, str, str], Awaitable[tuple[int, bytes]]] = _post,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                       clock: Callable[[], float] = time.time) -> grants.Tokens:
    if not provider.device_url:
        raise TokenError(f"[oauth.{provider.name}] has no device_url: set it (or a preset) to log in "
                         "from here", refused=True)
    status, body = await post(provider.device_url, grants.device_authorization_body(provider), provider.ca_file)
    auth = grants.read_device_authorization(status, body)
    out(f"To let mta-lite send mail through {provider.name}, open {auth.verification_uri}")
    out(f"and enter the code {auth.user_code}")
    if auth.verification_uri_complete:
        out(f"(or open {auth.verification_uri_complete} directly)")
    if show_url is not None:            # e.g. a QR code of it, for a phone
        show_url(auth.verification_uri_complete or auth.verification_uri)
    out(f"Waiting for the approval (the code is valid for {int(auth.expires_in // 60)} minutes)...")
    return await _poll(provider, auth, post, sleep, clock)


async def _poll(provider: OAuthProvider, auth: grants.DeviceAuthorization, post, sleep, clock) -> grants.Tokens:
    interval = min(max(auth.interval, MIN_INTERVAL_S), MAX_INTERVAL_S)
    deadline = clock() + auth.expires_in
    body = grants.device_code_body(provider, auth.device_code)
    while True:
        await sleep(interval)
        if clock() >= deadline:
            raise TokenError("the code expired before it was approved: run the login again", refused=True)
        try:
            status, answer = await post(provider.token_url, body, provider.ca_file)
            return grants.read_token(status, answer, clock())
        except TokenError as exc:
            if exc.code == "slow_down":
                interval = min(interval + SLOW_DOWN_STEP_S, MAX_INTERVAL_S)
            elif exc.code == "authorization_pending" or (not exc.refused and not exc.code):
                continue        # not approved yet, or a network hiccup: the code is still valid
            else:
                raise
