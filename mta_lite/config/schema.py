"""config — the configuration schema, loading and validation.

Guarantees: load_config() returns a complete, validated, frozen Config or raises one
ConfigError naming the file, the key, the value and a hint; nothing half-loaded is ever
returned. Unknown keys are errors (a typo must not silently change behaviour). Secrets are
wrapped in Secret, whose repr/str is "********"; only the smarthost client calls reveal().
Must never: print, log or put a secret into an error message.
"""

from __future__ import annotations

import re
from typing import Any
from dataclasses import dataclass, field

from mta_lite.errors import ConfigError
from mta_lite.envelope import client_ip, lookup_key
from mta_lite.identity import Identity

DEFAULT_CONFIG_PATH = "/etc/mta-lite/mta-lite.toml"
MASK = "********"
TLS_MODES = ("starttls", "implicit", "none")
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


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    tls_cert: str = ""
    tls_key: str = ""
    postscreen: bool = False        # screen clients with [postscreen] before the SMTP engine
    tls: str = "starttls"           # "implicit": TLS from the first byte (port 465)
    auth: str = "none"              # "required": a submission port, AUTH before MAIL (S1, S4)


@dataclass(frozen=True)
class Relay:
    name: str
    host: str
    port: int = 587
    tls: str = "starttls"
    ca_file: str = ""
    username: str = ""
    password: Secret | None = None
    concurrency: int = 2
    timeout_s: float = 300.0
    rate_delay_s: float = 0.0       # minimum gap between deliveries through one account
    max_per_hour: int = 0           # messages handed to the smarthost; 0 = unlimited
    max_per_day: int = 0
    recipient_limit: int = 50       # recipients per transaction (Postfix: 50)


@dataclass(frozen=True)
class SenderRule:
    address: str            # "alice@example.com" or "@example.com", lower-cased
    relay: str
    username: str = ""
    password: Secret | None = None
    clients: tuple = ()     # S4: networks that may use this sender; () = any allowed client


@dataclass(frozen=True)
class User:
    """A submission login: its password hash (from `mta-lite passwd`) and its senders (S4)."""

    name: str
    password_hash: str = field(repr=False)
    senders: frozenset = frozenset()    # "alice@example.com", "@example.com", lower-cased


@dataclass(frozen=True)
class RewriteConfig:
    """[rewrite]: the identity mail leaves with, applied at delivery (see identity.py)."""

    senders: dict = field(default_factory=dict)    # "a@b" / "@b" -> Identity
    clients: tuple = ()                            # ((network, Identity), ...), longest prefix first
    local_sender: Identity | None = None           # for root, pi, @localhost, @<hostname>


@dataclass(frozen=True)
class QueueConfig:
    min_backoff_s: float = 300.0
    max_backoff_s: float = 3600.0
    lifetime_s: float = 5 * 86400.0
    reserve_bytes: int = 16 * 1024 * 1024
    bounces_per_hour: int = 100


@dataclass(frozen=True)
class SmtpdConfig:
    max_connections: int = 100
    max_connections_per_client: int = 10
    recipient_limit: int = 1000
    timeout_s: float = 300.0
    session_limit_s: float = 3600.0
    hard_error_limit: int = 20


@dataclass(frozen=True)
class PostscreenConfig:
    """[postscreen]: the stage in front of the SMTP engine (see smtpd/postscreen.py)."""

    access: tuple[str, ...] = ("permit_mynetworks",)
    denylist_action: str = "drop"
    greet_wait_s: float = 6.0
    greet_banner: str = "$hostname ESMTP"
    greet_action: str = "enforce"
    dnsbl_sites: tuple[str, ...] = ()
    dnsbl_threshold: int = 1
    dnsbl_allowlist_threshold: int = 0
    dnsbl_action: str = "enforce"
    dnsbl_timeout_s: float = 5.0
    resolver: str = ""              # "127.0.0.1:53"; "" = the system's resolvers
    cache_file: str = "postscreen.db"   # in spool_dir/postscreen/; "" = memory only
    max_connections: int = 100
    max_connections_per_client: int = 10


@dataclass(frozen=True)
class MasterConfig:
    """Who the two halves run as when `serve` is started as root ("" = stay root; warned)."""

    smtpd_user: str = "mta-smtpd"
    qmgr_user: str = "mta-lite"


@dataclass(frozen=True)
class Config:
    path: str
    hostname: str
    spool_dir: str
    mynetworks: tuple
    admin_address: str
    message_size_limit: int
    default_relay: str
    listen: tuple[Listen, ...]
    relays: dict[str, Relay]
    senders: tuple[SenderRule, ...]
    queue: QueueConfig = field(default_factory=QueueConfig)
    smtpd: SmtpdConfig = field(default_factory=SmtpdConfig)
    bounce_template: str = ""
    master: MasterConfig = field(default_factory=MasterConfig)
    postscreen: PostscreenConfig = field(default_factory=PostscreenConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    users: dict = field(default_factory=dict)      # name -> User
    digest: str = ""                # config_digest() of the file's bytes; "" if not from a file

    def in_mynetworks(self, ip: str) -> bool:
        addr = client_ip(ip)
        return addr is not None and any(addr in net for net in self.mynetworks)


@dataclass(frozen=True)
class Route:
    """Where and as whom a sender's mail goes out."""

    relay: Relay
    username: str
    password: Secret | None

    @property
    def account(self) -> str:
        """Key of one smarthost login: connections are reused within an account only."""
        return f"{self.relay.name}:{self.username}" if self.username else self.relay.name


def route_for(cfg: Config, sender: str) -> Route:
    """Exact sender, then @domain, then default_relay. Credentials: the rule's, else the relay's."""
    key = lookup_key(sender)
    domain_key = "@" + key.rpartition("@")[2] if "@" in key else None
    by_address = {rule.address: rule for rule in cfg.senders}
    rule = by_address.get(key) or (by_address.get(domain_key) if domain_key else None)
    relay = cfg.relays[rule.relay if rule else cfg.default_relay]
    if rule and rule.username:
        return Route(relay, rule.username, rule.password)
    return Route(relay, relay.username, relay.password)


# ---------------------------------------------------------------- parsing helpers

def parse_duration(value: Any, path: str, key: str) -> float:
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
