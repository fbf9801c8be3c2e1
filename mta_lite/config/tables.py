"""tables — read a TOML table into one of the schema's dataclasses, and show one back, both
from the keys its fields declare (keys.key()).

    read_table(cls, table)     the keys in order, each checked; the table's own checks; unknown keys
    shown(obj, mode)           the TOML-ready dict `config show` prints, in field order
    table_of(cls)  list_of(cls)  map_of(cls)   kinds for [name], [[name]] and [name.NAME]

Order: a class may name keys to read before the others (READ_FIRST: a key whose value another
one's default or check needs, and the historic order of the top level); the rest follow in
field order. After the keys come the class's CHECKS (those that look at several keys), then the
unknown-key check, unless CHECKS places it (unknown_keys) earlier. The order decides which of
two problems in one file is reported; it is the order the loader has always had.

Guarantees: read_table() returns a complete object or raises the first ConfigError.
Must never: show a field that declares no key (path, digest, a relay's name).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from mta_lite.config.keys import NO_DEFAULT, NOTHING, SETTING, Kind, Mode, Setting, Table


def unknown_keys(table: Table) -> None:
    """The unknown-key check, as an entry of a class's CHECKS."""
    table.finish()


@functools.cache
def declared(cls: type) -> tuple[tuple[str, str, Setting], ...]:
    """(field, key, setting) of every field of `cls` that declares a key, in field order."""
    out = []
    for field in dataclasses.fields(cls):
        setting = field.metadata.get(SETTING)
        if setting is not None:
            out.append((field.name, setting.name or field.name.removesuffix("_s"), setting))
    return tuple(out)


@functools.cache
def read_order(cls: type) -> tuple[tuple[str, str, Setting], ...]:
    first = getattr(cls, "READ_FIRST", ())
    by_field = {entry[0]: entry for entry in declared(cls)}
    return tuple(by_field[name] for name in first) + tuple(e for e in declared(cls) if e[0] not in first)


def read_table(cls: type, table: Table, **fixed: object) -> object:
    """An instance of `cls` from `table`; `fixed` are the fields no key sets (a NAME, a path)."""
    for field, name, setting in read_order(cls):
        value = read_key(table, name, setting)
        if setting.fills:
            table.got.update(zip(setting.fills, value))
        else:
            table.got[field] = value
        if setting.check is not None:
            setting.check(table, name, value)
    checks = getattr(cls, "CHECKS", ())
    for check in checks if unknown_keys in checks else (*checks, unknown_keys):
        check(table)
    return cls(**fixed, **table.got)


def read_key(table: Table, name: str, setting: Setting) -> object:
    """One key's runtime value (see keys.py for what an absent key takes)."""
    table.used.add(name)
    kind = setting.kind
    if name in table.data:
        value = table.data[name]
        if kind.takes is not None:
            table.typed(name, value, kind.takes)
    elif setting.derive is not None:
        value = setting.derive(table)
    elif kind.empty is not NOTHING:
        value = kind.empty
    elif setting.required or setting.default_value() is NO_DEFAULT:
        raise table.error(name, "missing (this key is required)")
    else:
        return setting.default_value()
    return kind.read(table, name, value)


def shown(obj: object, mode: Mode) -> dict[str, object]:
    """`obj` as TOML-ready data: each declared key in field order, secrets as the kind shows
    them; a key at its default left out where its setting says so."""
    out: dict[str, object] = {}
    for field, name, setting in declared(type(obj)):
        if mode.public and not setting.public:
            continue
        value = tuple(getattr(obj, f) for f in setting.fills) if setting.fills else getattr(obj, field)
        if setting.hide_default and value == setting.default_value():
            continue
        out[name] = setting.kind.show(value, mode)
    return out


def table_of(cls: type) -> Kind:
    """[name]: a table of its own; absent, it is read as an empty table."""
    return Kind(dict, lambda table, name, value: read_table(cls, table.sub(value, table.key(name))),
                shown, empty={})


def list_of(cls: type) -> Kind:
    """[[name]]: a list of tables, each read with the entries before it at hand."""
    def read(table: Table, name: str, values: list) -> tuple:
        out: list = []
        for i, raw in enumerate(values):
            entry = table.sub(raw, f"{table.key(name)}[{i}]")
            entry.before = list(out)
            out.append(read_table(cls, entry))
        return tuple(out)
    return Kind(list, read, lambda value, mode: [shown(item, mode) for item in value])


def map_of(cls: type, check_name: Callable[[Table], None] | None = None) -> Kind:
    """[name.NAME]: named tables; `check_name` checks each NAME; absent, there are none."""
    def read(table: Table, name: str, values: dict) -> dict:
        out = {}
        for entry_name, raw in values.items():
            entry = table.sub(raw, f"{table.key(name)}.{entry_name}", name=entry_name)
            if check_name is not None:
                check_name(entry)
            out[entry_name] = read_table(cls, entry, name=entry_name)
        return out
    return Kind(dict, read, lambda value, mode: {n: shown(item, mode) for n, item in value.items()}, empty={})
