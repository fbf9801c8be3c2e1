"""config_postscreen — the [postscreen] table: parse and validate, and show it back.

Guarantees: parse_postscreen() returns a complete PostscreenConfig or raises one
ConfigError naming file, key, value and a hint (a bad DNSBL site, access entry, action,
resolver or cache file name is caught at load time, not at the first connection);
postscreen_dict() is its TOML form for `config show` and for the receiving side.
Must never: accept a resolver that is a host name (resolving it would need DNS), or a
cache file name that leaves spool_dir/postscreen/.
"""

from __future__ import annotations

from typing import Any

from mta_lite.config.schema import PostscreenConfig, format_duration
from mta_lite.errors import ConfigError
from mta_lite.postscreen.dnsbl import MAX_WEIGHT, parse_resolver, parse_site
from mta_lite.postscreen.policy import ACTIONS, parse_access

# Postfix postscreen_greet_wait is seconds; past a minute real MTAs give up on the banner.
MAX_GREET_WAIT_S = 60.0
MAX_BANNER_CHARS = 200


def parse_postscreen(table: Any) -> PostscreenConfig:
    """`table` is config_load._Table for [postscreen] (typed access, unknown keys fail)."""
    defaults = PostscreenConfig()
    cfg = PostscreenConfig(
        access=_each(table, "access", parse_access, defaults.access),
        denylist_action=_action(table, "denylist_action", defaults.denylist_action),
        greet_wait_s=_wait(table, "greet_wait", defaults.greet_wait_s),
        greet_banner=_banner(table, defaults.greet_banner),
        greet_action=_action(table, "greet_action", defaults.greet_action),
        dnsbl_sites=_each(table, "dnsbl_sites", parse_site, defaults.dnsbl_sites),
        dnsbl_threshold=_weight(table, "dnsbl_threshold", defaults.dnsbl_threshold),
        dnsbl_allowlist_threshold=_weight(table, "dnsbl_allowlist_threshold", defaults.dnsbl_allowlist_threshold),
        dnsbl_action=_action(table, "dnsbl_action", defaults.dnsbl_action),
        dnsbl_timeout_s=_wait(table, "dnsbl_timeout", defaults.dnsbl_timeout_s),
        resolver=_checked(table, "resolver", parse_resolver, defaults.resolver),
        cache_file=_cache_file(table, defaults.cache_file),
        max_connections=table.positive("max_connections", defaults.max_connections),
        max_connections_per_client=table.positive("max_connections_per_client",
                                                  defaults.max_connections_per_client),
    )
    if cfg.dnsbl_threshold < 1:
        raise ConfigError(table.path, table.key("dnsbl_threshold"), f"must be at least 1, got {cfg.dnsbl_threshold}")
    if cfg.dnsbl_allowlist_threshold > 0:
        raise ConfigError(table.path, table.key("dnsbl_allowlist_threshold"),
                          f"must be 0 (off) or negative, got {cfg.dnsbl_allowlist_threshold}")
    table.finish()
    return cfg


def _each(table: Any, name: str, parse, default: tuple[str, ...]) -> tuple[str, ...]:
    values = table.get(name, list, list(default))
    for i, value in enumerate(values):
        try:
            parse(value)
        except ValueError as exc:
            raise ConfigError(table.path, f"{table.key(name)}[{i}]", str(exc)) from None
    return tuple(value.strip() for value in values)


def _checked(table: Any, name: str, parse, default: str) -> str:
    value = table.get(name, str, default)
    if value:
        try:
            parse(value)
        except ValueError as exc:
            raise ConfigError(table.path, table.key(name), str(exc)) from None
    return value


def _action(table: Any, name: str, default: str) -> str:
    value = table.get(name, str, default)
    if value not in ACTIONS:
        raise ConfigError(table.path, table.key(name), f"expected one of {', '.join(ACTIONS)}, got {value!r}")
    return value


def _wait(table: Any, name: str, default: float) -> float:
    value = table.duration(name, default)
    if not 0 < value <= MAX_GREET_WAIT_S:
        raise ConfigError(table.path, table.key(name), f"must be more than 0s and at most 60s, got {value:g}s")
    return value


def _weight(table: Any, name: str, default: int) -> int:
    value = table.get(name, int, default)
    if abs(value) > MAX_WEIGHT:
        raise ConfigError(table.path, table.key(name), f"out of range -{MAX_WEIGHT}..{MAX_WEIGHT}: {value}")
    return value


def _banner(table: Any, default: str) -> str:
    value = table.get("greet_banner", str, default)
    if len(value) > MAX_BANNER_CHARS or not value.isprintable():
        raise ConfigError(table.path, table.key("greet_banner"),
                          f"expected one printable line of at most {MAX_BANNER_CHARS} characters, got {value!r}")
    return value


def _cache_file(table: Any, default: str) -> str:
    value = table.get("cache_file", str, default)
    if value and ("/" in value or value.startswith(".") or not value.isprintable()):
        raise ConfigError(table.path, table.key("cache_file"),
                          f'expected a file name like "postscreen.db" (kept in spool_dir/postscreen/), got {value!r}')
    return value


def postscreen_dict(ps: PostscreenConfig) -> dict[str, Any]:
    return {
        "access": list(ps.access),
        "denylist_action": ps.denylist_action,
        "greet_wait": format_duration(ps.greet_wait_s),
        "greet_banner": ps.greet_banner,
        "greet_action": ps.greet_action,
        "dnsbl_sites": list(ps.dnsbl_sites),
        "dnsbl_threshold": ps.dnsbl_threshold,
        "dnsbl_allowlist_threshold": ps.dnsbl_allowlist_threshold,
        "dnsbl_action": ps.dnsbl_action,
        "dnsbl_timeout": format_duration(ps.dnsbl_timeout_s),
        **({"resolver": ps.resolver} if ps.resolver else {}),
        "cache_file": ps.cache_file,
        "max_connections": ps.max_connections,
        "max_connections_per_client": ps.max_connections_per_client,
    }
