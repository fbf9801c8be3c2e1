"""postscreen — the kinds and checks of the [postscreen] keys (the table is in schema.py).

    ACCESS, DNSBL_SITES   lists whose every entry must parse (postscreen.policy, .dnsbl)
    ACTION                ignore | enforce | drop
    WAIT                  a duration, more than 0 s and at most MAX_GREET_WAIT_S
    WEIGHT                a DNSBL score, -MAX_WEIGHT..MAX_WEIGHT
    BANNER RESOLVER CACHE_FILE; threshold_checks (after the table's keys)

Guarantees: a bad DNSBL site, access entry, action, resolver or cache file name is one
ConfigError at load time, naming file, key, value and a hint, not a surprise at the first
connection.
Must never: accept a resolver that is a host name (resolving it would need DNS), or a
cache file name that leaves spool_dir/postscreen/.
"""

from __future__ import annotations

from typing import Callable

from mta_lite.config.keys import DURATION, Kind, Table, choice
from mta_lite.errors import ConfigError
from mta_lite.postscreen.dnsbl import MAX_WEIGHT, parse_resolver, parse_site
from mta_lite.postscreen.policy import ACTIONS, parse_access

# Postfix postscreen_greet_wait is seconds; past a minute real MTAs give up on the banner.
MAX_GREET_WAIT_S = 60.0
MAX_BANNER_CHARS = 200


def _each(parse: Callable[[str], object]) -> Kind:
    """A list of strings that `parse` accepts, kept stripped."""
    def read(table: Table, name: str, values: list) -> tuple[str, ...]:
        for i, value in enumerate(values):
            try:
                parse(value)
            except ValueError as exc:
                raise ConfigError(table.path, f"{table.key(name)}[{i}]", str(exc)) from None
        return tuple(value.strip() for value in values)
    return Kind(list, read, lambda value, mode: list(value))


def _resolver(table: Table, name: str, value: str) -> str:
    if value:
        try:
            parse_resolver(value)
        except ValueError as exc:
            raise table.error(name, str(exc)) from None
    return value


def _wait(table: Table, name: str, value: object) -> float:
    seconds = DURATION.read(table, name, value)
    if not 0 < seconds <= MAX_GREET_WAIT_S:
        raise table.error(name, f"must be more than 0s and at most 60s, got {seconds:g}s")
    return seconds


def _weight(table: Table, name: str, value: int) -> int:
    if abs(value) > MAX_WEIGHT:
        raise table.error(name, f"out of range -{MAX_WEIGHT}..{MAX_WEIGHT}: {value}")
    return value


def _banner(table: Table, name: str, value: str) -> str:
    if len(value) > MAX_BANNER_CHARS or not value.isprintable():
        raise table.error(name, f"expected one printable line of at most {MAX_BANNER_CHARS} characters, got {value!r}")
    return value


def _cache_file(table: Table, name: str, value: str) -> str:
    if value and ("/" in value or value.startswith(".") or not value.isprintable()):
        raise table.error(name, f'expected a file name like "postscreen.db" (kept in spool_dir/postscreen/), '
                          f"got {value!r}")
    return value


def threshold_checks(table: Table) -> None:
    """After every key: the DNSBL threshold fails from 1 up; the allowlist threshold is 0
    (off) or negative."""
    if table.got["dnsbl_threshold"] < 1:
        raise table.error("dnsbl_threshold", f"must be at least 1, got {table.got['dnsbl_threshold']}")
    if table.got["dnsbl_allowlist_threshold"] > 0:
        raise table.error("dnsbl_allowlist_threshold",
                          f"must be 0 (off) or negative, got {table.got['dnsbl_allowlist_threshold']}")


ACCESS = _each(parse_access)
DNSBL_SITES = _each(parse_site)
ACTION = choice(ACTIONS)
WAIT = Kind(None, _wait, DURATION.show)
WEIGHT = Kind(int, _weight)
BANNER = Kind(str, _banner)
RESOLVER = Kind(str, _resolver)
CACHE_FILE = Kind(str, _cache_file)
