"""sasl — the SASL strings of XOAUTH2 and OAUTHBEARER (RFC 7628), and what a refusal says.

    initial_response(mechanism, user, token)   the base64 initial response for AUTH
    CHALLENGE_ANSWER[mechanism]                 what the client sends after a 334 challenge
    decode_challenge(text)                      the server's base64 JSON status, or None
    challenge_words(challenge)                  that status in plain words, for log and DSN
    secret_forms(user, token)                   every form in which the token crosses the wire

A refusing server first sends `334 <base64 JSON>` (XOAUTH2: {"status":"401",...}; OAUTHBEARER:
{"status":"invalid_token",...}); the client must answer (an empty line for XOAUTH2, a lone
%x01 for OAUTHBEARER) and then gets the 535. Microsoft 365 answers 535 at once.
Guarantees: pure; the decoded challenge is capped and made printable by the caller.
Must never: put the token into a value a caller may log (only secret_forms names them).
"""

from __future__ import annotations

import base64
import binascii
import json

XOAUTH2, OAUTHBEARER = "xoauth2", "oauthbearer"
# A challenge is a few dozen bytes of JSON; anything much larger is not one worth reading.
MAX_CHALLENGE_CHARS = 2048
CHALLENGE_ANSWER = {XOAUTH2: b"", OAUTHBEARER: base64.b64encode(b"\x01")}


def _saslname(user: str) -> str:
    """RFC 5801 gs2 saslname: "," and "=" escaped."""
    return user.replace("=", "=3D").replace(",", "=2C")


def auth_string(mechanism: str, user: str, token: str) -> bytes:
    """The client's first message before base64 (Google's XOAUTH2 format; RFC 7628 section 3.1)."""
    if mechanism == XOAUTH2:
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    return f"n,a={_saslname(user)},\x01auth=Bearer {token}\x01\x01".encode()


def initial_response(mechanism: str, user: str, token: str) -> bytes:
    return base64.b64encode(auth_string(mechanism, user, token))


def secret_forms(user: str, token: str) -> set[str]:
    """The token and both initial responses that carry it."""
    return {token} | {initial_response(m, user, token).decode() for m in (XOAUTH2, OAUTHBEARER)}


def decode_challenge(text: str) -> dict | None:
    """The JSON object a 334 carries, or None if it is not one."""
    text = text.strip()
    if not text or len(text) > MAX_CHALLENGE_CHARS:
        return None
    try:
        value = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None


_MEANING = {"401": "the token is invalid or expired", "invalid_token": "the token is invalid or expired",
            "400": "the request was malformed", "invalid_request": "the request was malformed",
            "403": "the token lacks the needed permission", "insufficient_scope": "the token lacks the needed scope"}


def challenge_words(challenge: dict | None) -> str:
    """`the token is invalid or expired (status 401, scheme bearer, scope mail)`; "" if none."""
    if not challenge:
        return ""
    status = str(challenge.get("status", ""))
    details = [f"status {status}"] if status else []
    for key, label in (("schemes", "scheme"), ("scope", "scope")):
        if challenge.get(key):
            details.append(f"{label} {challenge[key]}")
    meaning = _MEANING.get(status, "the server refused the token")
    return f"{meaning} ({', '.join(details)})" if details else meaning


def says_token_invalid(code: int, challenge: dict | None) -> bool:
    """A 535 (with or without a challenge) or a challenge saying 401/invalid_token: a fresh
    token may help. Anything else (454 temporary, 530 needs TLS) is not about the token."""
    if challenge and str(challenge.get("status", "")) in ("401", "invalid_token"):
        return True
    return code == 535
