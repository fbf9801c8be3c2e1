"""keys — what one key of the config file is, and the reader of one TOML table.

    Table               one TOML table being read: typed access, the keys used, unknown keys
    Kind                the TOML type a key takes, how its value is checked and turned into
                        the runtime value, and how `config show` writes that back
    Setting, key()      a dataclass field's key: its kind, its default, its checks (schema.py
                        declares every key this way; tables.py reads and shows them)
    TEXT FLAG INTEGER POSITIVE COUNT DURATION FILE SECRET ADDRESS HOSTNAME HOSTPORT
    MYNETWORKS choice()  the kinds that several tables share

A key present in the file has its TOML type checked, then its value. An absent key takes, in
this order: a derived value (computed from keys read before it, then read as if the file had
said it), its kind's empty value (a table is read as an empty table), a "missing" error when
it is required, else its default, as it is.

Guarantees: every problem is one ConfigError naming file, key and value; the value of a key
with "password" or "secret" in its name is never shown, only "********".
Must never: read a password file when secrets are not wanted (the receiving side's config).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Callable

from mta_lite.config.values import MASK, Secret, format_duration, parse_duration
from mta_lite.envelope import lookup_key, parse_path
from mta_lite.errors import AddressError, ConfigError

SETTING = "mta_lite.config"         # the key of a Setting in a field's metadata
NO_DEFAULT = object()
NOTHING = object()                  # a kind without an empty value
TLS_MODES = ("starttls", "implicit", "none")
# The hostname goes into the banner, EHLO (ours and the smarthost client's) and Received:
# one word of printable ASCII, as long as a domain name may be (RFC 1035: 255 octets).
_HOSTNAME = re.compile(r"[!-~]{1,255}")
_HOSTPORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)")


class Table:
    """One TOML table being read: typed access that remembers which keys were used, and what
    was read so far (`got`, by field name) for the keys that depend on earlier ones."""

    def __init__(self, data: object, path: str, prefix: str, *, base: str = "", secrets: bool = True,
                 outer: Table | None = None, name: str = "") -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, prefix, f"expected a table, got {type(data).__name__}")
        self.data, self.path, self.prefix, self.used = data, path, prefix, set()
        self.base, self.secrets, self.outer, self.name = base, secrets, outer, name
        self.got: dict[str, object] = {}
        self.before: list = []          # the entries read before this one, in a list of tables

    @property
    def top(self) -> Table:
        """The table of the whole file."""
        return self if self.outer is None else self.outer.top

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def sub(self, data: object, prefix: str, name: str = "") -> Table:
        """The reader of a table inside this one (same file, same secrets)."""
        return Table(data, self.path, prefix, base=self.base, secrets=self.secrets, outer=self, name=name)

    def typed(self, name: str, value: object, kind: type) -> object:
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            shown = MASK if "password" in name or "secret" in name else repr(value)
            raise self.error(name, f"expected {kind.__name__}, got {shown}")
        return value

    def get(self, name: str, kind: type, default: object = None, required: bool = False) -> object:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing (this key is required)")
            return default
        return self.typed(name, self.data[name], kind)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling)")


@dataclass(frozen=True)
class Mode:
    """What `config show` writes: `hashes` shows login hashes; `public` leaves out whatever
    the receiving side must not have (smarthost passwords) or has no use for."""

    hashes: bool = False
    public: bool = False


def _as_is(table: Table, name: str, value: object) -> object:
    return value


def _same(value: object, mode: Mode) -> object:
    return value


@dataclass(frozen=True)
class Kind:
    takes: type | None              # the TOML type checked first; None: `read` checks it
    read: Callable[[Table, str, object], object] = _as_is      # (table, key, value) -> runtime value
    show: Callable[[object, Mode], object] = _same             # runtime value -> TOML value
    empty: object = NOTHING         # what an absent key is read as, if anything


@dataclass(frozen=True)
class Setting:
    kind: Kind
    default: object = NO_DEFAULT    # an absent key's value, as it is (runtime form)
    factory: Callable[[], object] | None = None                 # the default, made afresh
    derive: Callable[[Table], object] | None = None             # an absent key's value, read
    required: bool = False          # absent is an error, whatever the dataclass default
    check: Callable[[Table, str, object], None] | None = None   # after the key is read
    name: str = ""                  # the key in the file ("" = the field's, without "_s")
    fills: tuple[str, ...] = ()     # the fields this key sets (listen's address: host, port)
    hide_default: bool = False      # `config show` leaves it out while it has its default
    public: bool = True             # False: not in the receiving side's config

    def default_value(self) -> object:
        return self.factory() if self.factory is not None else self.default


def key(kind: Kind, default: object = NO_DEFAULT, *, factory: Callable[[], object] | None = None,
        code_default: bool = True, repr: bool = True, kw_only: bool = False, **options) -> object:
    """A dataclass field read from the config key it declares. Its default is the file's and
    the dataclass's, unless code_default=False (then code must always pass it)."""
    metadata = {SETTING: Setting(kind, default, factory, **options)}
    if factory is not None and code_default:
        return dataclasses.field(default_factory=factory, metadata=metadata, repr=repr, kw_only=kw_only)
    if default is not NO_DEFAULT and code_default:
        return dataclasses.field(default=default, metadata=metadata, repr=repr, kw_only=kw_only)
    return dataclasses.field(metadata=metadata, repr=repr, kw_only=kw_only)


def choice(options: tuple[str, ...]) -> Kind:
    def read(table: Table, name: str, value: object) -> str:
        if value not in options:
            raise table.error(name, f"expected one of {', '.join(options)}, got {value!r}")
        return value
    return Kind(str, read)


def _positive(table: Table, name: str, value: int) -> int:
    if value < 1:
        raise table.error(name, f"must be at least 1, got {value}")
    return value


def _count(table: Table, name: str, value: int) -> int:
    """A budget: 0 (unlimited) or more."""
    if value < 0:
        raise table.error(name, f"must be 0 (unlimited) or more, got {value}")
    return value


def full_path(table: Table, name: str, value: str) -> str:
    """A file that must exist, relative to the config file's directory."""
    full = value if os.path.isabs(value) else os.path.join(table.base, value)
    if not os.path.isfile(full):
        raise table.error(name, f"file not found: {full}")
    return full


def _secret(table: Table, name: str, value: object) -> Secret | None:
    """`password` or `password_file`; with secrets=False neither is read nor kept."""
    password = table.get(name, str)
    password_file = table.get(f"{name}_file", str)
    if not table.secrets:
        return None         # the smtpd side: never read a password file
    if password is not None and password_file is not None:
        raise table.error(name, f"give {name} or {name}_file, not both")
    full = ""
    if password_file is not None:
        full = full_path(table, f"{name}_file", password_file)
        password = _read_password(table, f"{name}_file", full)
    if password is not None and not password.isprintable():
        # The value is never shown. A control character is a paste accident, not a password:
        # a password file loses its trailing newline, so CR/LF would not even survive a move.
        where = f"{name}_file" if password_file is not None else name
        raise table.error(where, "the password contains a control character (CR, LF, tab, NUL...)")
    return Secret(password, full) if password is not None else None


def _read_password(table: Table, name: str, full: str) -> str:
    try:
        with open(full, encoding="utf-8") as handle:
            return handle.read().rstrip("\r\n")
    except OSError as exc:
        raise table.error(name, f"cannot read {full}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise table.error(name, f"{full}: not UTF-8 at byte {exc.start}") from None


def address(table: Table, name: str, value: str, allow_domain: bool = False) -> str:
    """`user@example.com` (or `@example.com` with allow_domain), lower-cased."""
    probe = "x" + value if allow_domain and value.startswith("@") else value
    try:
        parsed = parse_path(f"<{probe}>", sender=False, smtputf8=True)
    except AddressError:
        parsed = ""
    if "@" not in parsed:
        raise table.error(name, f"expected an address like user@example.com, got {value!r}")
    return lookup_key(value)


def _hostname(table: Table, name: str, value: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise table.error(name, f"expected one word of printable ASCII like relay.home.lan, got {value!r}")
    return value


def _hostport(table: Table, name: str, value: str) -> tuple[str, int]:
    match = _HOSTPORT.fullmatch(value)
    if not match:
        raise table.error(name, f'expected "host:port" (IPv6 as "[::]:25"), got {value!r}')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise table.error(name, f"port out of range: {port}")
    return host, port


def _optional_hostport(table: Table, name: str, value: str) -> str:
    """"HOST:PORT" checked and kept as written; "" (off) as it is."""
    if value:
        _hostport(table, name, value)
    return value


def _host_names(table: Table, name: str, values: list) -> tuple[str, ...]:
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
            raise table.error(f"{name}[{i}]", f"expected a host name or address, got {value!r}")
        out.append(value)
    return tuple(out)


def _show_hostport(value: tuple[str, int], mode: Mode) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _mynetworks(table: Table, name: str, values: list) -> tuple:
    nets = []
    for i, value in enumerate(values):
        try:
            if not isinstance(value, str):  # ip_network() takes 10 or true as 0.0.0.10/32, 0.0.0.1/32
                raise TypeError(value)
            nets.append(ipaddress.ip_network(value, strict=False))
        except (ValueError, TypeError):
            raise table.error(f"{name}[{i}]", f"expected a network like 192.168.0.0/16, got {value!r}") from None
    return tuple(nets)


def show_networks(value: tuple, mode: Mode) -> list[str]:
    return [str(network) for network in value]


TEXT = Kind(str)
FLAG = Kind(bool)
INTEGER = Kind(int)
POSITIVE = Kind(int, _positive)
COUNT = Kind(int, _count)
DURATION = Kind(None, lambda table, name, value: parse_duration(value, table.path, table.key(name)),
                lambda value, mode: format_duration(value))
FILE = Kind(str, lambda table, name, value: full_path(table, name, value) if value else "")
SECRET = Kind(None, _secret, lambda value, mode: MASK, empty=None)
ADDRESS = Kind(str, address)
HOSTNAME = Kind(str, _hostname)
HOSTPORT = Kind(str, _hostport, _show_hostport)
MYNETWORKS = Kind(list, _mynetworks, show_networks)
OPTIONAL_HOSTPORT = Kind(str, _optional_hostport)
HOST_NAMES = Kind(list, _host_names, lambda value, mode: list(value))
