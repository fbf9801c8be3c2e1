"""senders — the kinds and checks of the sender hygiene keys, and of credentials:

    [rewrite] local_sender, [rewrite.senders], [rewrite.clients]   LOCAL_SENDER, REWRITE_*
    [users.NAME] password_hash, senders                            user_name, PASSWORD_HASH, SENDER_PATTERNS
    [[senders]] address, clients                                   SENDER_ADDRESS, CLIENTS
    [[listen]] tls = "starttls"|"implicit", auth = "none"|"required"   listen_modes
    username with password or password_file, never over tls = "none"  relay_credentials, sender_credentials
    (or auth = "xoauth2"|"oauthbearer" with oauth = NAME: see oauth.py)

Guarantees: every check raises one ConfigError naming file, key, value and a hint; a password
hash is checked (format and cost bounds) at load time and never shown in an error, nor by
`config show` (only the receiving side's config carries the hashes: it checks the logins).
Must never: put a password hash into an error message or into `config show`.
"""

from __future__ import annotations

import ipaddress

from mta_lite.config.keys import Kind, Mode, Table, address, show_networks
from mta_lite.config.oauth import oauth_credentials
from mta_lite.config.values import MASK, Secret
from mta_lite.envelope import parse_path
from mta_lite.errors import ConfigError
from mta_lite.identity import Identity, parse_identity
from mta_lite.passhash import USER_NAME, parse_hash

LISTEN_TLS_MODES = ("starttls", "implicit")
LISTEN_AUTH_MODES = ("none", "required")
# TLS 1.0 and 1.1 (RFC 8996 deprecates them): allowed for old LAN devices only.
OLD_TLS_VERSIONS = ("TLSv1", "TLSv1.1")
_IDENTITY_HINT = 'expected an address or "Name <address>"'


def identity(table: Table, key: str, value: object) -> Identity:
    """`value` as an Identity; the error names `key` as given (a full key)."""
    found = parse_identity(value) if isinstance(value, str) else None
    if found is None:
        raise ConfigError(table.path, key, f"{_IDENTITY_HINT}, got {value!r}")
    return found


def pattern(table: Table, key: str, value: object) -> str:
    """`alice@example.com` or `@example.com`, lower-cased."""
    text = value if isinstance(value, str) else ""
    try:
        parsed = parse_path(f"<{'x' + text if text.startswith('@') else text}>", sender=False, smtputf8=True)
    except ValueError:          # AddressError; UnicodeEncodeError for a lone surrogate
        parsed = ""
    if "@" not in parsed:
        raise ConfigError(table.path, key, f'expected an address or "@domain", got {value!r}')
    return text.lower()


def _clients(table: Table, name: str, values: list) -> tuple:
    out = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except (ValueError, TypeError):
            raise ConfigError(table.path, f"{table.key(name)}[{i}]",
                              f"expected an IP or a network like 192.168.1.10/32, got {value!r}") from None
    return tuple(out)


def networks(table: Table, name: str) -> tuple:
    """The list at `name` as networks, e.g. clients = ["192.168.1.10/32"] (for code that makes
    a SenderRule by hand from such a table)."""
    return _clients(table, name, table.get(name, list, []))


def _rewrite_senders(table: Table, name: str, values: dict) -> dict:
    out = {}
    for key, value in values.items():
        where = f'{table.key(name)}."{key}"'
        out[pattern(table, where, key)] = identity(table, where, value)
    return out


def _rewrite_clients(table: Table, name: str, values: dict) -> tuple:
    clients = []
    for key, value in values.items():
        where = f'{table.key(name)}."{key}"'
        try:
            network = ipaddress.ip_network(key, strict=False)
        except ValueError:
            raise ConfigError(table.path, where, f"expected an IP or a network like 192.168.1.0/24, got {key!r}") from None
        clients.append((network, identity(table, where, value)))
    clients.sort(key=lambda item: -item[0].prefixlen)     # most specific first
    return tuple(clients)


def local_sender_identity(table: Table) -> None:
    """[rewrite] local_sender, read as text first, becomes an identity ("" switches it off)
    after the table's unknown keys are checked: the loader's order since [rewrite] began."""
    local = table.got["local_sender"]
    table.got["local_sender"] = identity(table, table.key("local_sender"), local) if local else None


def user_name(table: Table) -> None:
    if not USER_NAME.match(table.name):
        raise ConfigError(table.path, table.prefix, "a user name is letters, digits and . _ @ + - "
                          "(at most 64, starting with a letter or digit)")


def _password_hash(table: Table, name: str, value: str) -> str:
    if parse_hash(value) is None:
        raise table.error(name, f"not a hash written by `mta-lite passwd {table.name}` (or its cost is out of bounds)")
    return value


def _patterns(table: Table, name: str, values: list) -> frozenset:
    if not values:
        raise table.error(name, "list the addresses this user may send as")
    return frozenset(pattern(table, f"{table.key(name)}[{i}]", v) for i, v in enumerate(values))


def listen_modes(table: Table) -> None:
    """tls and auth of one [[listen]] entry, checked together once both are read: both need a
    certificate, auth needs [users]."""
    for name, allowed in (("tls", LISTEN_TLS_MODES), ("auth", LISTEN_AUTH_MODES)):
        if table.got[name] not in allowed:
            raise table.error(name, f"expected one of {', '.join(allowed)}, got {table.got[name]!r}")
    tls, auth = table.got["tls"], table.got["auth"]
    if (tls == "implicit" or auth == "required") and not table.got["tls_cert"]:
        raise table.error("tls" if tls == "implicit" else "auth",
                          "needs tls_cert and tls_key (AUTH is offered under TLS only)")
    if auth == "required" and not table.top.got["users"]:
        raise table.error("auth", "no [users.NAME] defined (add them with `mta-lite passwd NAME`)")
    if auth == "required" and table.got["tls_min_version"] in OLD_TLS_VERSIONS and not _loopback(table.got["host"]):
        raise table.error("tls_min_version", f"{table.got['tls_min_version']} on an auth = \"required\" listener "
                          "reachable from outside mynetworks would expose passwords to broken TLS; old TLS is "
                          "for a LAN listener without auth (use \"TLSv1.2\" here)")


def _loopback(host: str) -> bool:
    """Only a listener bound to a loopback address is out of reach from other machines."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def both_or_neither(table: Table, name: str, value: str) -> None:
    """tls_key, once read: a listener has both tls_cert and tls_key, or neither."""
    if bool(table.got["tls_cert"]) != bool(value):
        raise table.error("tls_cert", "give both tls_cert and tls_key, or neither")


def relay_credentials(table: Table) -> None:
    if not oauth_credentials(table, table.got["tls"]) and table.secrets:
        _credentials(table, table.got["tls"], table.got["username"], table.got["password"])


def sender_credentials(table: Table) -> None:
    relay = table.top.got["relays"][table.got["relay"]]
    if not oauth_credentials(table, relay.tls) and table.secrets:
        _credentials(table, relay.tls, table.got["username"], table.got["password"])


def _credentials(table: Table, tls: str, username: str, password: Secret | None) -> None:
    if username and tls == "none":
        raise table.error("username", 'AUTH outside TLS is refused: set tls = "starttls" or "implicit"')
    if username and password is None:
        raise table.error("password", "username given without password or password_file")
    if password is not None and not username:
        raise table.error("username", "password given without username")


def listed_once(table: Table, name: str, value: str) -> None:
    """A [[senders]] address appears in one entry only."""
    if value in {rule.address for rule in table.before}:
        raise table.error(name, f"{value} is listed twice")


def _show_hash(value: str, mode: Mode) -> str:
    return value if mode.hashes else MASK


SENDER_ADDRESS = Kind(str, lambda table, name, value: address(table, name, value, allow_domain=True))
CLIENTS = Kind(list, _clients, show_networks)
PASSWORD_HASH = Kind(str, _password_hash, _show_hash)
SENDER_PATTERNS = Kind(list, _patterns, lambda value, mode: sorted(value))
LOCAL_SENDER = Kind(str, show=lambda value, mode: str(value or ""))
REWRITE_SENDERS = Kind(dict, _rewrite_senders,
                       lambda value, mode: {key: str(found) for key, found in value.items()})
REWRITE_CLIENTS = Kind(dict, _rewrite_clients,
                       lambda value, mode: {str(net): str(found) for net, found in value})
