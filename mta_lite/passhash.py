"""passhash — scrypt hashes of submission users' passwords: make, parse, verify.

    $scrypt$n=16384,r=8,p=1$<salt, base64>$<derived key, base64>

hash_password() salts with 16 random bytes and derives 32 bytes with the stdlib's
hashlib.scrypt (memory-hard: n=2**14, r=8 costs 16 MiB and tens of milliseconds per guess,
so a stolen config does not give the passwords away cheaply). verify() recomputes with the
parameters stored in the hash and compares with hmac.compare_digest (constant time); an
unknown user is checked against a dummy hash, so the time taken does not tell which user
names exist.
Guarantees: parse_hash() accepts only parameters within bounds, so a config cannot make the
smtpd spend more than MAX_SCRYPT_MEMORY_BYTES on one login; verify() never raises for a
wrong, empty or odd password.
Must never: print, log or keep a password. The hashes are not smarthost secrets (the smtpd
holds them to check logins), but they stay out of logs too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field

# The brief's and OWASP's interactive-login setting: 2**14 x 8 x 128 bytes = 16 MiB.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16                 # 128 bits: no two hashes share a salt in practice
KEY_BYTES = 32
# A Pi has 1-8 GiB and checks logins two at a time (smtpd/auth.py): 64 MiB each at most.
MAX_SCRYPT_MEMORY_BYTES = 64 * 1024 * 1024
MAX_SCRYPT_P = 4
# User names appear in replies and log lines: letters, digits and address punctuation only.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
_HASH = re.compile(r"\$scrypt\$n=(\d{1,8}),r=(\d{1,3}),p=(\d{1,2})\$([A-Za-z0-9+/]{4,88}={0,2})"
                   r"\$([A-Za-z0-9+/]{16,88}={0,2})\Z")


@dataclass(frozen=True)
class ScryptHash:
    """A parsed hash; its repr shows the parameters only."""

    n: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    key: bytes = field(repr=False)

    def __str__(self) -> str:
        return f"$scrypt$n={self.n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _derive(password: bytes, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    # maxmem: scrypt needs 128 * r * (n + p + 2) bytes; OpenSSL refuses above its 32 MiB default.
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=128 * r * (n + p + 2) + 1024 * 1024)


def hash_password(password: bytes, salt: bytes | None = None) -> str:
    """The config line's value for `password`; `salt` only for tests (default: os.urandom)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    key = _derive(password, SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, KEY_BYTES)
    return str(ScryptHash(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, key))


def parse_hash(text: str) -> ScryptHash | None:
    """The hash in `text`, or None when it is not one we wrote or its cost is out of bounds."""
    match = _HASH.match(text) if isinstance(text, str) else None
    if not match:
        return None
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, key = _unb64(match.group(4)), _unb64(match.group(5))
    if n < 2 or n & (n - 1) or not 1 <= r or not 1 <= p <= MAX_SCRYPT_P:
        return None
    if 128 * r * n > MAX_SCRYPT_MEMORY_BYTES or not salt or not key or len(key) < 16:
        return None
    return ScryptHash(n, r, p, salt, key)


_dummy: ScryptHash | None = None


def _dummy_hash() -> ScryptHash:
    global _dummy
    if _dummy is None:
        _dummy = parse_hash(hash_password(os.urandom(16)))
    return _dummy


def verify(stored: ScryptHash | None, password: bytes) -> bool:
    """True when `password` matches; `stored` None (no such user) costs the same and is False."""
    target = stored or _dummy_hash()
    key = _derive(password, target.n, target.r, target.p, target.salt, len(target.key))
    return hmac.compare_digest(key, target.key) and stored is not None


# ---------------------------------------------------------------- mta-lite passwd NAME
