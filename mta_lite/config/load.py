"""config_load — read a TOML file into a validated Config, and show it back as TOML.

Guarantees: parse_config() either returns a complete Config or raises one ConfigError that
names file, key, value and a hint; it never returns a partly valid config and never changes
anything on disk. effective_dict() masks every secret as "********".
Must never: include a password in an error message or in the effective config.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import replace
from typing import Any

from mta_lite.config.schema import (MASK, TLS_MODES, Config, Listen, MasterConfig, QueueConfig, Relay, SenderRule,
                     Secret, SmtpdConfig, format_duration, parse_duration)
from mta_lite.config.postscreen import parse_postscreen, postscreen_dict
from mta_lite.config.senders import (listen_extra, listen_modes, networks, parse_rewrite, parse_users, rewrite_dict,
                             users_dict)
from mta_lite.envelope import lookup_key, parse_path
from mta_lite.errors import AddressError, ConfigError

DEFAULT_MYNETWORKS = ("127.0.0.0/8", "::1/128")
# The hostname goes into the banner, EHLO (ours and the smarthost client's) and Received:
# one word of printable ASCII, as long as a domain name may be (RFC 1035: 255 octets).
_HOSTNAME = re.compile(r"[!-~]{1,255}")


class _Table:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, data: Any, path: str, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, prefix, f"expected a table, got {type(data).__name__}")
        self.data, self.path, self.prefix, self.used = data, path, prefix, set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type, default: Any = None, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(self.path, self.key(name), "missing (this key is required)")
            return default
        value = self.data[name]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            shown = MASK if "password" in name else repr(value)
            raise ConfigError(self.path, self.key(name), f"expected {kind.__name__}, got {shown}")
        return value

    def positive(self, name: str, default: int) -> int:
        value = self.get(name, int, default)
        if value < 1:
            raise ConfigError(self.path, self.key(name), f"must be at least 1, got {value}")
        return value

    def duration(self, name: str, default: float) -> float:
        self.used.add(name)
        if name not in self.data:
            return default
        return parse_duration(self.data[name], self.path, self.key(name))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.path, self.key(unknown[0]), "unknown key (check the spelling)")


def _address(value: str, path: str, key: str, allow_domain: bool = False) -> str:
    if allow_domain and value.startswith("@"):
        probe = "x" + value
    else:
        probe = value
    try:
        parsed = parse_path(f"<{probe}>", sender=False, smtputf8=True)
    except AddressError:
        parsed = ""
    if "@" not in parsed:
        raise ConfigError(path, key, f"expected an address like user@example.com, got {value!r}")
    return lookup_key(value)


def _hostname(value: str, path: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise ConfigError(path, "hostname", f"expected one word of printable ASCII like relay.home.lan, got {value!r}")
    return value


def _hostport(value: str, path: str, key: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not match:
        raise ConfigError(path, key, f'expected "host:port" (IPv6 as "[::]:25"), got {value!r}')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ConfigError(path, key, f"port out of range: {port}")
    return host, port


def _file(value: str, base: str, path: str, key: str) -> str:
    full = value if os.path.isabs(value) else os.path.join(base, value)
    if not os.path.isfile(full):
        raise ConfigError(path, key, f"file not found: {full}")
    return full


def _secret(table: _Table, base: str, secrets: bool) -> Secret | None:
    password = table.get("password", str)
    password_file = table.get("password_file", str)
    if not secrets:
        return None         # the smtpd side: never read a password file
    if password is not None and password_file is not None:
        raise ConfigError(table.path, table.key("password"), "give password or password_file, not both")
    full = ""
    if password_file is not None:
        full = _file(password_file, base, table.path, table.key("password_file"))
        try:
            with open(full, encoding="utf-8") as handle:
                password = handle.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(table.path, table.key("password_file"), f"cannot read {full}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(table.path, table.key("password_file"), f"{full}: not UTF-8 at byte {exc.start}") from None
    if password is not None and not password.isprintable():
        # The value is never shown. A control character is a paste accident, not a password:
        # a password file loses its trailing newline, so CR/LF would not even survive a move.
        key = "password_file" if password_file is not None else "password"
        raise ConfigError(table.path, table.key(key), "the password contains a control character (CR, LF, tab, NUL...)")
    return Secret(password, full) if password is not None else None



def load_config(path: str, secrets: bool = True) -> Config:
    """Read and validate the config file at `path`; secrets=False leaves credentials out."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found (set -c FILE or $MTA_LITE_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except RecursionError:      # tomllib recurses per nesting level: [[[[...]]]]
        raise ConfigError(path, "", "not valid TOML: nested too deeply") from None
    except UnicodeDecodeError as exc:       # tomllib decodes the bytes before it parses
        raise ConfigError(path, "", f"not valid TOML: not UTF-8 at byte {exc.start}") from None
    return replace(parse_config(data, path, secrets), digest=config_digest(raw))


def config_digest(raw: bytes) -> str:
    """A short name for one version of the config file, shown by `status` and the console
    so that an operator can tell which generation the running relay has loaded."""
    return hashlib.sha256(raw).hexdigest()[:12]


def parse_config(data: dict, path: str, secrets: bool = True) -> Config:
    """Validate TOML data. secrets=False: for the process that faces the network (S7);
    password and password_file are neither read nor kept, and their checks are skipped."""
    top = _Table(data, path, "")
    base = os.path.dirname(os.path.abspath(path))
    relays = _relays(top, base, secrets)
    if not relays:
        raise ConfigError(path, "relays", "define at least one [relays.NAME] smarthost")
    default_relay = top.get("default_relay", str, next(iter(relays)))
    if default_relay not in relays:
        raise ConfigError(path, "default_relay", f"no relay named {default_relay!r} in [relays]")
    hostname = _hostname(top.get("hostname", str, socket.getfqdn() or "localhost"), path)
    users = parse_users(_Table(top.get("users", dict, {}), path, "users"))
    cfg = Config(
        path=path,
        hostname=hostname,
        spool_dir=top.get("spool_dir", str, "/var/spool/mta-lite"),
        mynetworks=_networks(top),
        admin_address=_address(top.get("admin_address", str, required=True), path, "admin_address"),
        message_size_limit=top.positive("message_size_limit", 10240000),
        default_relay=default_relay,
        listen=_listeners(top, base, users),
        relays=relays,
        senders=_senders(top, relays, base, secrets),
        queue=_queue(top),
        smtpd=_smtpd(top),
        bounce_template=_optional_file(top, "bounce_template", base),
        master=_master(top),
        postscreen=parse_postscreen(_Table(top.get("postscreen", dict, {}), path, "postscreen")),
        users=users,
    )
    cfg = replace(cfg, rewrite=parse_rewrite(_Table(top.get("rewrite", dict, {}), path, "rewrite"), cfg.admin_address))
    top.finish()
    return cfg


def _optional_file(table: _Table, name: str, base: str) -> str:
    value = table.get(name, str, "")
    return _file(value, base, table.path, table.key(name)) if value else ""


def _networks(top: _Table) -> tuple:
    nets = []
    for i, value in enumerate(top.get("mynetworks", list, list(DEFAULT_MYNETWORKS))):
        try:
            if not isinstance(value, str):  # ip_network() takes 10 or true as 0.0.0.10/32, 0.0.0.1/32
                raise TypeError(value)
            nets.append(ipaddress.ip_network(value, strict=False))
        except (ValueError, TypeError):
            raise ConfigError(top.path, f"mynetworks[{i}]", f"expected a network like 192.168.0.0/16, got {value!r}") from None
    return tuple(nets)


def _listeners(top: _Table, base: str, users: dict | None = None) -> tuple[Listen, ...]:
    out = []
    for i, raw in enumerate(top.get("listen", list, [{"address": "127.0.0.1:25"}])):
        table = _Table(raw, top.path, f"listen[{i}]")
        host, port = _hostport(table.get("address", str, required=True), top.path, table.key("address"))
        cert = _optional_file(table, "tls_cert", base)
        key = _optional_file(table, "tls_key", base)
        if bool(cert) != bool(key):
            raise ConfigError(top.path, table.key("tls_cert"), "give both tls_cert and tls_key, or neither")
        postscreen = table.get("postscreen", bool, False)
        tls, auth = listen_modes(table, bool(cert), users or {})
        table.finish()
        out.append(Listen(host, port, cert, key, postscreen, tls, auth))
    return tuple(out)


def _relays(top: _Table, base: str, secrets: bool) -> dict[str, Relay]:
    out = {}
    for name, raw in top.get("relays", dict, {}).items():
        table = _Table(raw, top.path, f"relays.{name}")
        tls = table.get("tls", str, "starttls")
        if tls not in TLS_MODES:
            raise ConfigError(top.path, table.key("tls"), f"expected one of {', '.join(TLS_MODES)}, got {tls!r}")
        relay = Relay(
            name=name,
            host=table.get("host", str, required=True),
            port=table.get("port", int, 465 if tls == "implicit" else 587),
            tls=tls,
            ca_file=_optional_file(table, "ca_file", base),
            username=table.get("username", str, ""),
            password=_secret(table, base, secrets),
            concurrency=table.positive("concurrency", 2),
            timeout_s=table.duration("timeout", 300.0),
            rate_delay_s=table.duration("rate_delay", 0.0),
            max_per_hour=_count(table, "max_per_hour"),
            max_per_day=_count(table, "max_per_day"),
            recipient_limit=table.positive("recipient_limit", 50),
        )
        if secrets:
            _check_credentials(table, tls, relay.username, relay.password)
        table.finish()
        out[name] = relay
    return out


def _count(table: _Table, name: str) -> int:
    """A budget: 0 (unlimited) or more."""
    value = table.get(name, int, 0)
    if value < 0:
        raise ConfigError(table.path, table.key(name), f"must be 0 (unlimited) or more, got {value}")
    return value


def _check_credentials(table: _Table, tls: str, username: str, password: Secret | None) -> None:
    if username and tls == "none":
        raise ConfigError(table.path, table.key("username"), 'AUTH outside TLS is refused: set tls = "starttls" or "implicit"')
    if username and password is None:
        raise ConfigError(table.path, table.key("password"), "username given without password or password_file")
    if password is not None and not username:
        raise ConfigError(table.path, table.key("username"), "password given without username")


def _senders(top: _Table, relays: dict[str, Relay], base: str, secrets: bool) -> tuple[SenderRule, ...]:
    out, seen = [], set()
    for i, raw in enumerate(top.get("senders", list, [])):
        table = _Table(raw, top.path, f"senders[{i}]")
        address = _address(table.get("address", str, required=True), top.path, table.key("address"), allow_domain=True)
        if address in seen:
            raise ConfigError(top.path, table.key("address"), f"{address} is listed twice")
        seen.add(address)
        relay = table.get("relay", str, top.data.get("default_relay", next(iter(relays))))
        if relay not in relays:
            raise ConfigError(top.path, table.key("relay"), f"no relay named {relay!r} in [relays]")
        rule = SenderRule(address, relay, table.get("username", str, ""), _secret(table, base, secrets),
                          clients=networks(table, "clients"))
        if secrets:
            _check_credentials(table, relays[relay].tls, rule.username, rule.password)
        table.finish()
        out.append(rule)
    return tuple(out)


def _queue(top: _Table) -> QueueConfig:
    table = _Table(top.get("queue", dict, {}), top.path, "queue")
    q = QueueConfig(
        min_backoff_s=table.duration("min_backoff", 300.0),
        max_backoff_s=table.duration("max_backoff", 3600.0),
        lifetime_s=table.duration("lifetime", 5 * 86400.0),
        reserve_bytes=table.get("reserve_bytes", int, 16 * 1024 * 1024),
        bounces_per_hour=table.positive("bounces_per_hour", 100),
    )
    if q.max_backoff_s < q.min_backoff_s:
        raise ConfigError(top.path, "queue.max_backoff", "must not be shorter than queue.min_backoff")
    table.finish()
    return q


def _smtpd(top: _Table) -> SmtpdConfig:
    table = _Table(top.get("smtpd", dict, {}), top.path, "smtpd")
    s = SmtpdConfig(
        max_connections=table.positive("max_connections", 100),
        max_connections_per_client=table.positive("max_connections_per_client", 10),
        recipient_limit=table.positive("recipient_limit", 1000),
        timeout_s=table.duration("timeout", 300.0),
        session_limit_s=table.duration("session_limit", 3600.0),
        hard_error_limit=table.positive("hard_error_limit", 20),
    )
    table.finish()
    return s


def _master(top: _Table) -> MasterConfig:
    table = _Table(top.get("master", dict, {}), top.path, "master")
    m = MasterConfig(smtpd_user=table.get("smtpd_user", str, "mta-smtpd"),
                     qmgr_user=table.get("qmgr_user", str, "mta-lite"))
    if m.qmgr_user and not m.smtpd_user:
        raise ConfigError(top.path, "master.smtpd_user", "the network-facing half must not keep root "
                          "while the other half drops it; set both users or neither")
    table.finish()
    return m


def effective_dict(cfg: Config, hashes: bool = False) -> dict[str, Any]:
    """The effective config as plain TOML-ready data, every secret masked; user password
    hashes too, unless `hashes` (the receiving side's config: it checks the logins)."""
    def secret(value: Secret | None) -> dict:
        return {"password": MASK} if value is not None else {}

    return {
        "hostname": cfg.hostname,
        "spool_dir": cfg.spool_dir,
        "mynetworks": [str(n) for n in cfg.mynetworks],
        "admin_address": cfg.admin_address,
        "message_size_limit": cfg.message_size_limit,
        "default_relay": cfg.default_relay,
        **({"bounce_template": cfg.bounce_template} if cfg.bounce_template else {}),
        "listen": [_listen_dict(item) for item in cfg.listen],
        "relays": {
            r.name: {"host": r.host, "port": r.port, "tls": r.tls,
                     **({"ca_file": r.ca_file} if r.ca_file else {}),
                     **({"username": r.username} if r.username else {}), **secret(r.password),
                     "concurrency": r.concurrency, "timeout": format_duration(r.timeout_s),
                     "rate_delay": format_duration(r.rate_delay_s), "max_per_hour": r.max_per_hour,
                     "max_per_day": r.max_per_day, "recipient_limit": r.recipient_limit}
            for r in cfg.relays.values()
        },
        "senders": [{"address": s.address, "relay": s.relay,
                     **({"username": s.username} if s.username else {}), **secret(s.password),
                     **({"clients": [str(n) for n in s.clients]} if s.clients else {})}
                    for s in cfg.senders],
        "queue": {"min_backoff": format_duration(cfg.queue.min_backoff_s),
                  "max_backoff": format_duration(cfg.queue.max_backoff_s),
                  "lifetime": format_duration(cfg.queue.lifetime_s),
                  "reserve_bytes": cfg.queue.reserve_bytes,
                  "bounces_per_hour": cfg.queue.bounces_per_hour},
        "smtpd": {"max_connections": cfg.smtpd.max_connections,
                  "max_connections_per_client": cfg.smtpd.max_connections_per_client,
                  "recipient_limit": cfg.smtpd.recipient_limit,
                  "timeout": format_duration(cfg.smtpd.timeout_s),
                  "session_limit": format_duration(cfg.smtpd.session_limit_s),
                  "hard_error_limit": cfg.smtpd.hard_error_limit},
        "master": {"smtpd_user": cfg.master.smtpd_user, "qmgr_user": cfg.master.qmgr_user},
        "postscreen": postscreen_dict(cfg.postscreen),
        "rewrite": rewrite_dict(cfg.rewrite),
        **({"users": users_dict(cfg.users, hashes)} if cfg.users else {}),
    }


def _listen_dict(item: Listen) -> dict:
    host = f"[{item.host}]" if ":" in item.host else item.host
    out = {"address": f"{host}:{item.port}"}
    if item.tls_cert:
        out.update(tls_cert=item.tls_cert, tls_key=item.tls_key)
    if item.postscreen:
        out["postscreen"] = True
    out.update(listen_extra(item))
    return out
