"""config_senders — the sender hygiene parts of the config: [rewrite], [users], sender binding,
submission listeners; parse and validate, and show them back.

    [rewrite] local_sender, [rewrite.senders], [rewrite.clients]   -> RewriteConfig
    [users.NAME] password_hash, senders                            -> {name: User}
    [[senders]] clients = [...]                                    -> SenderRule.clients
    [[listen]] tls = "starttls"|"implicit", auth = "none"|"required"

Guarantees: every function returns complete values or raises one ConfigError naming file,
key, value and a hint; a password hash is checked (format and cost bounds) at load time, and
never shown in an error. users_dict() masks the hashes unless asked for them (only the
secret-free config handed to the smtpd carries them: it checks the logins).
Must never: put a password hash into an error message or into `config show`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mta_lite.config.schema import MASK, Listen, RewriteConfig, User
from mta_lite.envelope import parse_path
from mta_lite.errors import ConfigError
from mta_lite.identity import Identity, parse_identity
from mta_lite.passhash import USER_NAME, parse_hash

LISTEN_TLS_MODES = ("starttls", "implicit")
LISTEN_AUTH_MODES = ("none", "required")
_IDENTITY_HINT = 'expected an address or "Name <address>"'


def _sub(table: Any, raw: Any, prefix: str) -> Any:
    """A config_load._Table for a nested table (same class, same file)."""
    return type(table)(raw, table.path, prefix)


def _identity(table: Any, key: str, value: Any) -> Identity:
    identity = parse_identity(value) if isinstance(value, str) else None
    if identity is None:
        raise ConfigError(table.path, key, f"{_IDENTITY_HINT}, got {value!r}")
    return identity


def _pattern(table: Any, key: str, value: Any) -> str:
    """`alice@example.com` or `@example.com`, lower-cased."""
    text = value if isinstance(value, str) else ""
    try:
        parsed = parse_path(f"<{'x' + text if text.startswith('@') else text}>", sender=False, smtputf8=True)
    except ValueError:          # AddressError; UnicodeEncodeError for a lone surrogate
        parsed = ""
    if "@" not in parsed:
        raise ConfigError(table.path, key, f'expected an address or "@domain", got {value!r}')
    return text.lower()


def networks(table: Any, name: str) -> tuple:
    """A list of IPs or CIDR networks, e.g. clients = ["192.168.1.10/32"]."""
    out = []
    for i, value in enumerate(table.get(name, list, [])):
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except (ValueError, TypeError):
            raise ConfigError(table.path, f"{table.key(name)}[{i}]",
                              f"expected an IP or a network like 192.168.1.10/32, got {value!r}") from None
    return tuple(out)


def parse_rewrite(table: Any, admin_address: str) -> RewriteConfig:
    """[rewrite]; local_sender defaults to admin_address ("" switches it off)."""
    local = table.get("local_sender", str, admin_address)
    senders_table = _sub(table, table.get("senders", dict, {}), table.key("senders"))
    senders = {}
    for key, value in senders_table.data.items():
        pattern = _pattern(table, senders_table.key(f'"{key}"'), key)
        senders[pattern] = _identity(table, senders_table.key(f'"{key}"'), value)
    clients_table = _sub(table, table.get("clients", dict, {}), table.key("clients"))
    clients = []
    for key, value in clients_table.data.items():
        where = clients_table.key(f'"{key}"')
        try:
            network = ipaddress.ip_network(key, strict=False)
        except ValueError:
            raise ConfigError(table.path, where, f"expected an IP or a network like 192.168.1.0/24, got {key!r}") from None
        clients.append((network, _identity(table, where, value)))
    clients.sort(key=lambda item: -item[0].prefixlen)     # most specific first
    table.finish()
    return RewriteConfig(senders=senders, clients=tuple(clients),
                         local_sender=_identity(table, table.key("local_sender"), local) if local else None)


def parse_users(table: Any) -> dict[str, User]:
    """[users.NAME] password_hash = "$scrypt$...", senders = ["a@b", "@b"]."""
    users = {}
    for name, raw in table.data.items():
        user = _sub(table, raw, table.key(name))
        if not USER_NAME.match(name):
            raise ConfigError(table.path, table.key(name), "a user name is letters, digits and . _ @ + - "
                              "(at most 64, starting with a letter or digit)")
        hashed = user.get("password_hash", str, required=True)
        if parse_hash(hashed) is None:
            raise ConfigError(table.path, user.key("password_hash"),
                              f"not a hash written by `mta-lite passwd {name}` (or its cost is out of bounds)")
        senders = user.get("senders", list, required=True)
        if not senders:
            raise ConfigError(table.path, user.key("senders"), "list the addresses this user may send as")
        patterns = frozenset(_pattern(table, f"{user.key('senders')}[{i}]", v) for i, v in enumerate(senders))
        user.finish()
        users[name] = User(name, hashed, patterns)
    return users


def listen_modes(table: Any, has_cert: bool, users: dict) -> tuple[str, str]:
    """tls and auth of one [[listen]] entry; both need a certificate, auth needs [users]."""
    tls = table.get("tls", str, "starttls")
    auth = table.get("auth", str, "none")
    for name, value, allowed in (("tls", tls, LISTEN_TLS_MODES), ("auth", auth, LISTEN_AUTH_MODES)):
        if value not in allowed:
            raise ConfigError(table.path, table.key(name), f"expected one of {', '.join(allowed)}, got {value!r}")
    if (tls == "implicit" or auth == "required") and not has_cert:
        key = "tls" if tls == "implicit" else "auth"
        raise ConfigError(table.path, table.key(key), "needs tls_cert and tls_key (AUTH is offered under TLS only)")
    if auth == "required" and not users:
        raise ConfigError(table.path, table.key("auth"), "no [users.NAME] defined (add them with `mta-lite passwd NAME`)")
    return tls, auth


# ---------------------------------------------------------------- shown back as TOML

def rewrite_dict(rewrite: RewriteConfig) -> dict[str, Any]:
    return {"local_sender": str(rewrite.local_sender or ""),
            "senders": {key: str(identity) for key, identity in rewrite.senders.items()},
            "clients": {str(net): str(identity) for net, identity in rewrite.clients}}


def users_dict(users: dict[str, User], hashes: bool) -> dict[str, Any]:
    return {user.name: {"password_hash": user.password_hash if hashes else MASK,
                        "senders": sorted(user.senders)} for user in users.values()}


def listen_extra(item: Listen) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if item.tls != "starttls":
        out["tls"] = item.tls
    if item.auth != "none":
        out["auth"] = item.auth
    return out
