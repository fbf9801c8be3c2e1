"""schema — every key of the configuration file, once: its name, kind, default and checks,
declared on the field of the frozen dataclass the rest of mta-lite runs on.

    Config   top level       Listen  [[listen]]      Relay  [relays.NAME]   SenderRule  [[senders]]
    OAuthProvider [oauth.NAME]   (a relay's or sender's auth = "xoauth2"|"oauthbearer", oauth = NAME)
    User     [users.NAME]    RewriteConfig [rewrite] QueueConfig [queue]    SmtpdConfig [smtpd]
    MasterConfig [master]    PostscreenConfig [postscreen]                  Route, route_for()

Postfix keeps one table of parameter names and defaults from which main.cf is read and
`postconf` shows it. Here that table is the dataclasses themselves: each field says, with
keys.key(), which key sets it, how that key is checked and what it defaults to. Loading
(load.py), `config show` and the receiving side's config (public.py) are derived from these
declarations. A table beside the dataclasses would be a second list of the same names, free
to drift from the fields the code uses; on the field, a key cannot be renamed, retyped or given
another default without the runtime object seeing it. A field named `x_s` is the duration key
`x` (units in names, durations as strings in the file).

Guarantees: the objects are frozen; Secret's repr/str is "********", and only the smarthost
client calls reveal(); building one by hand in code works as before (the same fields, names
and defaults; Config's bounce_template, which has a default, is keyword-only so that it can
stand with the other top-level keys, where `config show` prints it).
Must never: print, log or put a secret into an error message.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import ClassVar

from mta_lite.config.keys import (ADDRESS, COUNT, DURATION, FILE, FLAG, HOSTNAME, HOSTPORT, HOST_NAMES,
                                  INTEGER, MYNETWORKS, OPTIONAL_HOSTPORT, POSITIVE, SECRET, TEXT, TLS_MODES, Table, choice, key)
from mta_lite.config.oauth import (AUTH_MODES, DATE, GRANTS, HTTPS_URL, PRESET, TENANT, preset_scope,
                                   preset_url, provider_checks)
from mta_lite.config.postscreen import (ACCESS, ACTION, BANNER, CACHE_FILE, DNSBL_SITES, RESOLVER, WAIT, WEIGHT,
                                        threshold_checks)
from mta_lite.config.senders import (CLIENTS, LOCAL_SENDER, PASSWORD_HASH, REWRITE_CLIENTS, REWRITE_SENDERS,
                                     SENDER_ADDRESS, SENDER_PATTERNS, both_or_neither, listed_once, listen_modes,
                                     local_sender_identity, relay_credentials, sender_credentials, user_name)
from mta_lite.config.tables import list_of, map_of, table_of, unknown_keys
# MASK and parse_duration are imported from here by their callers.
from mta_lite.config.values import MASK, Secret, parse_duration  # noqa: F401
from mta_lite.envelope import client_ip
from mta_lite.identity import Identity, rule_for

DEFAULT_CONFIG_PATH = "/etc/mta-lite/mta-lite.toml"
DEFAULT_MYNETWORKS = ("127.0.0.0/8", "::1/128")
BARE_NEWLINE_MODES = ("normalize", "reject")
LISTEN_TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
SUBMISSION_PORT = 587       # RFC 6409; a smarthost with tls = "implicit" listens on 465 (RFC 8314)
IMPLICIT_TLS_PORT = 465


def _port_for_tls(table: Table) -> int:
    return IMPLICIT_TLS_PORT if table.got["tls"] == "implicit" else SUBMISSION_PORT


def _relay_exists(table: Table, name: str, relay: str) -> None:
    if relay not in table.top.got["relays"]:
        raise table.error(name, f"no relay named {relay!r} in [relays]")


def _backoffs(table: Table) -> None:
    if table.got["max_backoff_s"] < table.got["min_backoff_s"]:
        raise table.error("max_backoff", "must not be shorter than queue.min_backoff")


def _users_together(table: Table) -> None:
    if table.got["qmgr_user"] and not table.got["smtpd_user"]:
        raise table.error("smtpd_user", "the network-facing half must not keep root "
                          "while the other half drops it; set both users or neither")


def _machine_name(table: Table) -> str:
    return socket.getfqdn() or "localhost"


def _at_least_one(table: Table, name: str, relays: dict) -> None:
    if not relays:
        raise table.error(name, "define at least one [relays.NAME] smarthost")


@dataclass(frozen=True)
class Listen:
    """[[listen]]: one listening socket. tls and auth are checked together after both are read."""

    CHECKS: ClassVar = (listen_modes,)

    host: str = key(HOSTPORT, name="address", fills=("host", "port"))
    port: int
    tls_cert: str = key(FILE, "", hide_default=True)
    tls_key: str = key(FILE, "", hide_default=True, check=both_or_neither)
    postscreen: bool = key(FLAG, False, hide_default=True)  # screen clients with [postscreen] first
    tls: str = key(TEXT, "starttls", hide_default=True)     # "implicit": TLS from the first byte (465)
    auth: str = key(TEXT, "none", hide_default=True)        # "required": a submission port (S1, S4)
    # S2, Postfix 3.9 smtpd_forbid_bare_newline: "normalize" takes a bare LF from clients in
    # mynetworks as CRLF (never on an auth = "required" listener); "reject" refuses it from all.
    bare_newline: str = key(choice(BARE_NEWLINE_MODES), "normalize", hide_default=True)
    # The oldest TLS a client may use: "TLSv1"/"TLSv1.1" for old LAN devices (with OpenSSL
    # security level 0, which those need); refused on a submission listener open to outside.
    tls_min_version: str = key(choice(LISTEN_TLS_VERSIONS), "TLSv1.2", hide_default=True)


@dataclass(frozen=True)
class Relay:
    """[relays.NAME]: one smarthost account. tls is read first: port's default depends on it."""

    READ_FIRST: ClassVar = ("tls",)
    CHECKS: ClassVar = (relay_credentials,)

    name: str
    host: str = key(TEXT)
    port: int = key(INTEGER, SUBMISSION_PORT, derive=_port_for_tls)
    tls: str = key(choice(TLS_MODES), "starttls")
    ca_file: str = key(FILE, "", hide_default=True, public=False)
    username: str = key(TEXT, "", hide_default=True)
    password: Secret | None = key(SECRET, None, hide_default=True, public=False)   # or password_file
    auth: str = key(choice(AUTH_MODES), "password", hide_default=True, public=False)   # or a token (OAuth2)
    oauth: str = key(TEXT, "", hide_default=True, public=False)     # the [oauth.NAME] with auth = "xoauth2"
    concurrency: int = key(POSITIVE, 2)
    timeout_s: float = key(DURATION, 300.0)
    rate_delay_s: float = key(DURATION, 0.0)        # minimum gap between deliveries through one account
    max_per_hour: int = key(COUNT, 0)               # messages handed to the smarthost; 0 = unlimited
    max_per_day: int = key(COUNT, 0)
    recipient_limit: int = key(POSITIVE, 50)        # recipients per transaction (Postfix: 50)


@dataclass(frozen=True)
class OAuthProvider:
    """[oauth.NAME]: where and how the relay gets access tokens for XOAUTH2 / OAUTHBEARER.
    preset, tenant and grant are read first: the URLs' and the scope's defaults follow them."""

    READ_FIRST: ClassVar = ("preset", "tenant", "grant")
    CHECKS: ClassVar = (provider_checks,)

    name: str
    grant: str = key(choice(GRANTS))                          # "client_credentials" | "refresh_token"
    client_id: str = key(TEXT)
    token_url: str = key(HTTPS_URL, derive=preset_url("token_url"))
    device_url: str = key(HTTPS_URL, derive=preset_url("device_url"))     # RFC 8628, for `oauth login`
    scope: str = key(TEXT, derive=preset_scope)
    preset: str = key(PRESET, "", hide_default=True)          # "microsoft" | "google"
    tenant: str = key(TENANT, "", hide_default=True)          # Microsoft Entra tenant ID or domain
    client_secret: Secret | None = key(SECRET, None, hide_default=True)   # or client_secret_file
    client_secret_expires: str = key(DATE, "", hide_default=True)  # "YYYY-MM-DD": status warns 30 days ahead
    ca_file: str = key(FILE, "", hide_default=True)           # for a private token endpoint; "" = system CAs


@dataclass(frozen=True)
class SenderRule:
    """[[senders]]: the relay and credentials of one address or @domain."""

    CHECKS: ClassVar = (sender_credentials,)

    address: str = key(SENDER_ADDRESS, check=listed_once)  # "alice@example.com" or "@example.com", lower-cased
    relay: str = key(TEXT, derive=lambda table: table.top.got["default_relay"], check=_relay_exists)
    username: str = key(TEXT, "", hide_default=True)
    password: Secret | None = key(SECRET, None, hide_default=True, public=False)
    auth: str = key(choice(AUTH_MODES), "password", hide_default=True, public=False)
    oauth: str = key(TEXT, "", hide_default=True, public=False)
    clients: tuple = key(CLIENTS, (), hide_default=True)   # S4: networks that may use this sender; () = any


@dataclass(frozen=True)
class User:
    """[users.NAME]: a submission login: its password hash (from `mta-lite passwd`) and its senders (S4)."""

    name: str
    password_hash: str = key(PASSWORD_HASH, repr=False)
    senders: frozenset = key(SENDER_PATTERNS, frozenset(), required=True)  # "a@b", "@b", lower-cased


@dataclass(frozen=True)
class RewriteConfig:
    """[rewrite]: the identity mail leaves with, applied at delivery (see identity.py).
    local_sender is read (as text) first and becomes an identity last, after the unknown keys."""

    READ_FIRST: ClassVar = ("local_sender",)
    CHECKS: ClassVar = (unknown_keys, local_sender_identity)

    senders: dict = key(REWRITE_SENDERS, factory=dict)      # "a@b" / "@b" -> Identity
    clients: tuple = key(REWRITE_CLIENTS, ())               # ((network, Identity), ...), longest prefix first
    local_sender: Identity | None = key(LOCAL_SENDER, None,  # for root, pi, @localhost, @<hostname>
                                        derive=lambda table: table.top.got["admin_address"])


@dataclass(frozen=True)
class QueueConfig:
    CHECKS: ClassVar = (_backoffs,)

    min_backoff_s: float = key(DURATION, 300.0)
    max_backoff_s: float = key(DURATION, 3600.0)
    lifetime_s: float = key(DURATION, 5 * 86400.0)
    reserve_bytes: int = key(INTEGER, 16 * 1024 * 1024)
    bounces_per_hour: int = key(POSITIVE, 100)


@dataclass(frozen=True)
class SmtpdConfig:
    max_connections: int = key(POSITIVE, 100)
    max_connections_per_client: int = key(POSITIVE, 10)
    recipient_limit: int = key(POSITIVE, 1000)
    timeout_s: float = key(DURATION, 300.0)
    session_limit_s: float = key(DURATION, 3600.0)
    hard_error_limit: int = key(POSITIVE, 20)


@dataclass(frozen=True)
class PostscreenConfig:
    """[postscreen]: the stage in front of the SMTP engine (see mta_lite/postscreen/)."""

    CHECKS: ClassVar = (threshold_checks,)

    access: tuple[str, ...] = key(ACCESS, ("permit_mynetworks",))
    denylist_action: str = key(ACTION, "drop")
    greet_wait_s: float = key(WAIT, 6.0)
    greet_banner: str = key(BANNER, "$hostname ESMTP")
    greet_action: str = key(ACTION, "enforce")
    dnsbl_sites: tuple[str, ...] = key(DNSBL_SITES, ())
    dnsbl_threshold: int = key(WEIGHT, 1)
    dnsbl_allowlist_threshold: int = key(WEIGHT, 0)
    dnsbl_action: str = key(ACTION, "enforce")
    dnsbl_timeout_s: float = key(WAIT, 5.0)
    resolver: str = key(RESOLVER, "", hide_default=True)   # "127.0.0.1:53"; "" = the system's resolvers
    cache_file: str = key(CACHE_FILE, "postscreen.db")     # in spool_dir/postscreen/; "" = memory only
    max_connections: int = key(POSITIVE, 100)
    max_connections_per_client: int = key(POSITIVE, 10)


@dataclass(frozen=True)
class MasterConfig:
    """Who the two halves run as when `serve` is started as root ("" = stay root; warned)."""

    CHECKS: ClassVar = (_users_together,)

    smtpd_user: str = key(TEXT, "mta-smtpd")
    qmgr_user: str = key(TEXT, "mta-lite")


@dataclass(frozen=True)
class BoardConfig:
    """The box's own side (mta-lite-board and the status page): read by the board's
    processes; the relay itself never acts on it."""

    http: str = key(OPTIONAL_HOSTPORT, "")             # the status page, "0.0.0.0:8080"; "" = off
    ntp_servers: tuple[str, ...] = key(HOST_NAMES, ("pool.ntp.org",))   # the clock check asks these


@dataclass(frozen=True)
class Config:
    """The whole file. Its keys are read in the order below (relays first: default_relay and
    [[senders]] name them; users before [[listen]], admin_address before [rewrite]); the others
    follow in field order, which is also the order `config show` prints."""

    READ_FIRST: ClassVar = ("oauth", "relays", "default_relay", "hostname", "users", "spool_dir", "mynetworks",
                            "admin_address", "message_size_limit", "listen", "senders", "queue", "smtpd")

    path: str
    hostname: str = key(HOSTNAME, derive=_machine_name)
    spool_dir: str = key(TEXT, "/var/spool/mta-lite", code_default=False)
    mynetworks: tuple = key(MYNETWORKS, tuple(ipaddress.ip_network(net) for net in DEFAULT_MYNETWORKS),
                            code_default=False)
    admin_address: str = key(ADDRESS)
    message_size_limit: int = key(POSITIVE, 10240000, code_default=False)
    default_relay: str = key(TEXT, derive=lambda table: next(iter(table.got["relays"])), check=_relay_exists)
    bounce_template: str = key(FILE, "", hide_default=True, public=False, kw_only=True)
    listen: tuple[Listen, ...] = key(list_of(Listen), (Listen("127.0.0.1", 25),), code_default=False)
    relays: dict[str, Relay] = key(map_of(Relay), check=_at_least_one)
    senders: tuple[SenderRule, ...] = key(list_of(SenderRule), (), code_default=False)
    queue: QueueConfig = key(table_of(QueueConfig), factory=QueueConfig)
    smtpd: SmtpdConfig = key(table_of(SmtpdConfig), factory=SmtpdConfig)
    master: MasterConfig = key(table_of(MasterConfig), factory=MasterConfig)
    postscreen: PostscreenConfig = key(table_of(PostscreenConfig), factory=PostscreenConfig)
    rewrite: RewriteConfig = key(table_of(RewriteConfig), factory=RewriteConfig)
    board: BoardConfig = key(table_of(BoardConfig), factory=BoardConfig)
    users: dict = key(map_of(User, user_name), factory=dict, hide_default=True)    # name -> User
    # name -> OAuthProvider; never in the receiving side's config (it holds client secrets).
    oauth: dict = key(map_of(OAuthProvider), factory=dict, hide_default=True, public=False)
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
    auth: str = "password"                  # "xoauth2" | "oauthbearer": a token instead
    oauth: OAuthProvider | None = None

    @property
    def account(self) -> str:
        """Key of one smarthost login: connections are reused within an account only."""
        return f"{self.relay.name}:{self.username}" if self.username else self.relay.name


def route_for(cfg: Config, sender: str) -> Route:
    """Exact sender, then @domain, then default_relay. Credentials: the rule's, else the relay's."""
    rule = rule_for(cfg.senders, sender)
    relay = cfg.relays[rule.relay if rule else cfg.default_relay]
    return route_of(cfg, relay, rule if rule and rule.username else relay)


def route_of(cfg: Config, relay: Relay, holder: Relay | SenderRule) -> Route:
    """The Route through `relay` with the credentials of `holder` (the relay or a sender rule)."""
    return Route(relay, holder.username, holder.password, holder.auth, cfg.oauth.get(holder.oauth))


def all_routes(cfg: Config) -> list[Route]:
    """Every account of the config: each relay's own, then each [[senders]] login."""
    routes = [route_of(cfg, relay, relay) for relay in cfg.relays.values()]
    routes += [route_of(cfg, cfg.relays[rule.relay], rule)
               for rule in cfg.senders if rule.username and rule.relay in cfg.relays]
    return routes
