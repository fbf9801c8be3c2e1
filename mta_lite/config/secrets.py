"""secrets — keep smarthost passwords out of the installed config file (S3, S7).

A config that arrives over the serial console or on a USB stick carries its passwords inline
(`password = "..."`): that is what a person can write. The installed config file must not:
the receiving side (smtpd) reads it, and must never be able to read a smarthost credential.
split() turns every inline `password` of [relays.NAME] and [[senders]] into a `password_file`,
and every inline `client_secret` of [oauth.NAME] into a `client_secret_file`, under secrets/,
named after the generation (`secrets/g000007-relay0-isp.pw`), so that an
earlier generation's files stay as they were and a rollback gets its own passwords back.

Guarantees: pure; the same bytes and generation always give the same result; a config without
inline passwords comes back unchanged, byte for byte (comments included).
Must never: put a password anywhere but the returned mapping.
"""

from __future__ import annotations

import re
import tomllib

import tomli_w

SECRETS_DIR = "secrets"
HEADER = (b"# Installed by mta-lite: inline passwords were moved to secrets/ (password_file).\n"
          b"# The file as it was given is kept in generations/.\n")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_OWN_FILE = re.compile(r"g(\d{6})-(relay|sender|oauth)\d+(-[A-Za-z0-9_-]*)?\.pw\Z")


def split(data: bytes, generation: int) -> tuple[bytes, dict[str, str]]:
    """(config bytes without inline passwords, {path relative to the config dir: password}).
    `data` must be a config that validated (UTF-8 TOML)."""
    doc = tomllib.loads(data.decode("utf-8"))
    found: dict[str, str] = {}
    for index, (name, table) in enumerate(doc.get("relays", {}).items()):
        safe = _UNSAFE.sub("_", name)[:40]
        _move(table, f"g{generation:06d}-relay{index}-{safe}.pw", found)
    for index, table in enumerate(doc.get("senders", [])):
        _move(table, f"g{generation:06d}-sender{index}.pw", found)
    for index, (name, table) in enumerate(doc.get("oauth", {}).items()):
        safe = _UNSAFE.sub("_", name)[:40]
        _move(table, f"g{generation:06d}-oauth{index}-{safe}.pw", found, "client_secret")
    if not found:
        return data, {}
    return HEADER + tomli_w.dumps(doc).encode("utf-8"), found


def _move(table: object, name: str, found: dict[str, str], key: str = "password") -> None:
    if isinstance(table, dict) and isinstance(table.get(key), str):
        relative = f"{SECRETS_DIR}/{name}"
        found[relative] = table.pop(key)
        table[f"{key}_file"] = relative


def own_file_generation(name: str) -> int | None:
    """The generation a file in secrets/ was written for; None if split() did not name it
    (an admin's own password file, never touched)."""
    match = _OWN_FILE.match(name)
    return int(match.group(1)) if match else None
