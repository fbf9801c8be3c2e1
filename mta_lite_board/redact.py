"""redact — text the board hands to a person: secrets masked, printable ASCII, bounded.

    redactor = Redactor.for_config("/etc/mta-lite/mta-lite.toml")
    redactor.line(text, limit=300)      one line for the console or a report
    redactor.mask(text)                 every secret form replaced by "********"
    printable(text)                     printable ASCII ("—" as "--", the rest as \\u2014)
    secret_values(doc)                  {path: value} of every secret in parsed TOML data

Which keys hold secrets is decided here, once, for the board: `password`, `password_hash`,
tokens and client secrets (is_secret_key). The stick's scrubbing (board/stickconfig.py) and
the diagnostics' masking use the same rule.
Guarantees: a masked text holds none of the secrets it was given, nor the base64 of any of
them at any of the three alignments a base64 stream can carry it at (AUTH PLAIN's
`\\0user\\0secret`, AUTH LOGIN, any other framing); masking comes before cutting, so a cut
can never leave half a secret. The relay masks its own log lines already (maillog's
SecretFilter): this is the second line of defence, for lines written under an older config.
Must never: log, return or keep a secret in anything but its own list of forms.
"""

from __future__ import annotations

import base64
import re
import tomllib
from typing import Any, Iterable

from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from mta_lite.config.schema import MASK
from mta_lite.errors import ConfigError

# Key names whose string values are secrets wherever they appear in a config.
SECRET_KEYS = frozenset({"password", "password_hash", "token", "secret", "client_secret", "access_token",
                         "refresh_token", "oauth_token", "api_key"})
SECRET_SUFFIXES = ("_password", "_token", "_secret")
# A base64 fragment shorter than this is too common to mask without mangling innocent text
# (and carries too little of a secret to matter).
MIN_B64_FRAGMENT = 12
_BASE64_WORD = re.compile(r"[A-Za-z0-9+/]+=*")
# The relay's messages use a few typographic characters; a serial terminal shows them as ASCII.
_TO_ASCII = str.maketrans({"\u2014": "--", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"',
                           "\u201d": '"', "\u2026": "...", "\u00a0": " ", "\u2192": "->"})


def is_secret_key(name: object) -> bool:
    return isinstance(name, str) and (name in SECRET_KEYS or name.endswith(SECRET_SUFFIXES))


def secret_values(data: Any, path: tuple = ()) -> dict[tuple, str]:
    """Every string under a secret key in parsed TOML data, by its path (dict keys as
    strings, list positions as ints). MASK itself is not a secret and is left out."""
    found: dict[tuple, str] = {}
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        if is_secret_key(key) and isinstance(value, str):
            if value != MASK:
                found[path + (key,)] = value
        elif isinstance(value, (dict, list)):
            found.update(secret_values(value, path + (key,)))
    return found


def secret_forms(secret: str) -> set[str]:
    """The secret and the base64 of it at every alignment (see the module docstring)."""
    raw = secret.encode("utf-8")
    forms = {secret, base64.b64encode(raw).decode("ascii")}
    for skip in range(3):
        part = raw[skip:]
        part = part[: len(part) - len(part) % 3]
        encoded = base64.b64encode(part).decode("ascii")
        if len(encoded) >= MIN_B64_FRAGMENT:
            forms.add(encoded)
    return {form for form in forms if form and form != MASK}


def printable(text: str) -> str:
    """`text` as printable ASCII: a few typographic characters as their ASCII look-alikes,
    anything else outside space..tilde as a backslash escape."""
    text = text.translate(_TO_ASCII)
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)


class Redactor:
    """Masks a fixed set of secrets (see the module docstring)."""

    def __init__(self, secrets: Iterable[str] = (), complete: bool = True) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= secret_forms(secret)
        self._forms = sorted(forms, key=len, reverse=True)
        # A base64 form masks the whole base64 word around it: the characters at its edges
        # carry bits of the secret's first and last bytes.
        self._words = [re.compile(f"[A-Za-z0-9+/]*{re.escape(form)}[A-Za-z0-9+/]*=*") for form in self._forms
                       if _BASE64_WORD.fullmatch(form)]
        self.complete = complete        # False: the config's secrets could not all be read

    def __repr__(self) -> str:
        return f"Redactor({len(self._forms)} forms)"

    @classmethod
    def for_config(cls, config_path: str) -> "Redactor":
        """The secrets of the config in use (password files read) and of every kept
        generation and the installed file as written (older passwords may be in old lines)."""
        secrets: set[str] = set()
        complete = True
        try:
            cfg = load_config(config_path, secrets=True)
            for holder in [*cfg.relays.values(), *cfg.senders]:
                if holder.password is not None:
                    secrets.add(holder.password.reveal())
            secrets |= {user.password_hash for user in cfg.users.values()}
            secrets |= {p.client_secret.reveal() for p in cfg.oauth.values() if p.client_secret is not None}
        except (ConfigError, OSError):
            complete = False
        paths = [config_path]
        try:
            paths += [gen.path for gen in configgen.generations(config_path)]
        except OSError:
            complete = False
        for path in paths:
            secrets |= set(_file_secrets(path).values())
        return cls(secrets, complete)

    def mask(self, text: str) -> str:
        for word in self._words:
            text = word.sub(MASK, text)
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def line(self, text: str, limit: int) -> str:
        shown = printable(self.mask(text))
        return shown if len(shown) <= limit else shown[:limit] + "..."


def _file_secrets(path: str) -> dict[tuple, str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(configgen.MAX_CONFIG_BYTES + 1)
        return secret_values(tomllib.loads(data.decode("utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return {}
