"""http — one form POST to a token endpoint, never blocking the event loop.

    post_form(url, body, ca_file, timeout_s)   await (HTTP status, body bytes), or TokenError

urllib runs in a worker thread (asyncio.to_thread): it honours the proxy environment
(https_proxy, no_proxy) as every urllib opener does, and its socket timeout bounds each
read; asyncio.timeout bounds the whole exchange, so a server that drips one byte at a time
cannot hold a delivery longer than timeout_s (the thread then ends at its next socket
timeout and its answer is dropped).
Guarantees (S3): TLS always verified (ca_file or the system store, check_hostname, at least
TLS 1.2); only https URLs (the config allows no other); an answer is read up to
MAX_RESPONSE_BYTES and refused beyond; redirects are not followed (a token request is a
POST carrying the client secret, which must go nowhere else).
Must never: put the request body (client secret, refresh token) into an exception or a log.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import ssl
import urllib.error
import urllib.request

from mta_lite import __version__
from mta_lite.errors import TokenError
from mta_lite.smarthost.replies import clean_text

# Token responses are a few kilobytes (Microsoft's JWTs ~2-3 KB); 64 KiB is generous and
# still bounds what a hostile or broken endpoint can make us hold.
MAX_RESPONSE_BYTES = 64 * 1024
# A token endpoint answers within a second or two; 30 s covers a slow uplink without
# letting a delivery hang on it (the account then pauses like one whose smarthost is down).
TOKEN_TIMEOUT_S = 30.0
MIN_TLS = ssl.TLSVersion.TLSv1_2


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None         # the 3xx becomes an HTTPError: reported, not followed


@functools.lru_cache(maxsize=8)
def context_for(ca_file: str) -> ssl.SSLContext:
    """The verifying context per CA file, kept: the queue manager builds each while still
    root (a CA file may be root's alone), and urllib's threads share it (SSLContext is)."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = MIN_TLS
    return context


def _reason(exc: BaseException) -> str:
    """Plain words for why no answer came; never the request."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not verified: {clean_text(exc.verify_message or 'verification failed')}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {clean_text(exc.reason or 'handshake failure')}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, urllib.error.URLError):
        return _reason(exc.reason) if isinstance(exc.reason, BaseException) else clean_text(str(exc.reason))
    if isinstance(exc, OSError) and exc.strerror:
        return clean_text(exc.strerror)
    if isinstance(exc, http.client.HTTPException):
        return "the answer is not HTTP"
    return type(exc).__name__


def _post(url: str, body: bytes, ca_file: str, timeout_s: float) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context_for(ca_file)), _NoRedirect)
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json",
        "User-Agent": f"mta-lite/{__version__}"})
    try:
        with opener.open(request, timeout=timeout_s) as answer:
            status, data = answer.status, answer.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:       # 4xx/5xx carry the OAuth error as JSON
        with exc:
            status, data = exc.code, exc.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise TokenError(f"the answer of {url} is larger than {MAX_RESPONSE_BYTES} bytes")
    return status, data


async def post_form(url: str, body: str, ca_file: str = "", timeout_s: float = TOKEN_TIMEOUT_S) -> tuple[int, bytes]:
    """POST the form `body` to `url`: (status, body), or TokenError (transient) in plain words."""
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.to_thread(_post, url, body.encode(), ca_file, timeout_s)
    except TokenError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:    # TimeoutError is an OSError
        raise TokenError(f"token endpoint {url} unreachable: {_reason(exc)}") from None
