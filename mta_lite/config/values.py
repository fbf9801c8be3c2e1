"""values — the value types of the configuration that are not plain TOML: Secret, the mask that
stands for one, and durations.

    Secret(value, source)       a password; repr/str is MASK; only reveal() gives the value
    mask(text, secrets)         `text` with every secret in it replaced by MASK
    parse_duration / format_duration    "50ms", "30s", "5m", "1h", "5d", "1w" <-> seconds

Guarantees: pure; format_duration(parse_duration(text)) reads back as the same number of
seconds; mask() hides a secret whole even when a shorter secret is part of it.
Must never: show a Secret's value in repr(), str() or an error message.
"""

from __future__ import annotations

import re
from typing import Iterable

from mta_lite.errors import ConfigError

MASK = "********"
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)\Z")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Secret:
    """A password that never shows itself by accident."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "") -> None:
        self._value = value
        self.source = source        # the password file it came from; "" when inline

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret in it replaced by MASK. The longest go first, so that a secret
    which contains another (a password and its base64 with the user name) is masked whole."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def parse_duration(value: object, path: str, key: str) -> float:
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return float(round(int(match.group(1)) * _UNITS[match.group(2)], 3))
    raise ConfigError(path, key, f'expected a duration like "30s", "5m", "1h" or "5d", got {value!r}')


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    if seconds != int(seconds):         # sub-second values, e.g. rate_delay = "50ms"
        return f"{round(seconds * 1000)}ms"
    return f"{int(seconds)}s"
