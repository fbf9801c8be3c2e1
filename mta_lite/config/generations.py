"""generations — install a new configuration atomically and keep earlier generations (C1, C2).

    apply_config(path, data, source)   validate the candidate completely; keep the file it
                                       replaces as a generation; write it with safeio
    rollback(path, number=None)        the same with an earlier generation's bytes
    generations(path)                  what can be rolled back to, newest first

Generations live beside the config file in `<dir>/generations/NNNNNN.toml`, as they were given
(mode 0600: they may hold passwords). The installed file never holds one: inline passwords go
to `<dir>/secrets/` as password files (secrets.py), which smtpd cannot read (S7). Every
installed config becomes a generation, and a hand-edited file is saved as one before it is
replaced, so the history has no holes. The newest KEEP_GENERATIONS
are kept. A running relay notices the new file by itself (the master watches it; under systemd
a path unit reloads) and validates it again before it uses it.

Guarantees: nothing changes unless the candidate validates completely, its password files
read, exactly as the relay would load it: in the config's own directory, so that relative
paths mean the same. An error is one ConfigError naming the source the bytes came from
("usb:MTACONFIG/mta-lite.toml", "console upload"), the key and the value. The installed file
keeps the owner, group and mode of the one it replaces.
Must never: leave a half-written config under its name, put a secret into an error, or
delete the generation the running config came from.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from dataclasses import dataclass

from mta_lite import safeio

from mta_lite.config import secrets as configsecrets
from mta_lite.config.load import config_digest, load_config
from mta_lite.errors import ConfigError

# A full config with dozens of senders is a few KiB; anything near this is not a config,
# and the serial console and USB stick readers must not hold more than this in memory.
MAX_CONFIG_BYTES = 64 * 1024
KEEP_GENERATIONS = 10
GENERATIONS_DIR = "generations"
_GENERATION = re.compile(r"(\d{6})\.toml\Z")
# The installed config holds no password (secrets.py moves them out), and smtpd, whose
# user is in none of the config's groups, must read it.
DEFAULT_MODE = 0o644


@dataclass(frozen=True)
class Generation:
    number: int
    path: str
    size: int
    mtime: float
    digest: str
    current: bool           # its bytes are the config file's bytes now


@dataclass(frozen=True)
class ApplyResult:
    generation: int         # the generation now installed
    digest: str             # config_digest() of it; `status` shows it once the relay loaded it
    changed: bool           # False: the bytes were already installed

    def describe(self) -> str:
        """`generation N installed (config DIGEST)`: the line every installer reports."""
        return f"generation {self.generation} installed (config {self.digest})"


def _gen_dir(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), GENERATIONS_DIR)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None


def generations(path: str) -> list[Generation]:
    """The kept generations, newest first."""
    directory = _gen_dir(path)
    try:
        names = sorted((n for n in os.listdir(directory) if _GENERATION.match(n)), reverse=True)
    except FileNotFoundError:
        return []
    current = _read(path)
    result = []
    for name in names:
        full = os.path.join(directory, name)
        number, data = int(name[:6]), _read(full) or b""
        installed = _installed_form(data, number)
        info = os.stat(full)
        result.append(Generation(number, full, info.st_size, info.st_mtime, config_digest(installed),
                                 current in (data, installed)))
    return result


def _installed_form(data: bytes, number: int) -> bytes:
    """The bytes apply_config() installed for this generation (inline passwords moved out)."""
    try:
        return configsecrets.split(data, number)[0]
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return data         # a hand-edited file kept as it was


def validate(path: str, data: bytes, source: str) -> str:
    """Load `data` as the relay would load the file at `path`; its digest, or ConfigError
    naming `source`. The candidate is written beside `path` only for the duration."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, "", f"{len(data)} bytes is over the {MAX_CONFIG_BYTES}-byte limit "
                          "for a config file")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".candidate-", suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        cfg = load_config(tmp, secrets=True)
    except ConfigError as exc:
        raise ConfigError(source, exc.key, exc.problem) from None
    finally:
        os.unlink(tmp)
    return cfg.digest


def apply_config(path: str, data: bytes, source: str) -> ApplyResult:
    """Validate, keep history, install (see the module docstring)."""
    validate(path, data, source)
    kept = generations(path)
    installed = _read(path)
    if kept and kept[0].current and _read(kept[0].path) == data:
        return ApplyResult(kept[0].number, kept[0].digest, changed=False)
    number = kept[0].number if kept else 0
    os.makedirs(_gen_dir(path), mode=0o700, exist_ok=True)
    if installed is not None and not (kept and kept[0].current):
        number += 1         # a hand edit, or the first config: history must include it
        safeio.atomic_write(_gen_path(path, number), installed, mode=0o600)
    number += 1
    config, secrets = configsecrets.split(data, number)
    written = _write_secrets(path, secrets)
    try:
        digest = validate(path, config, source)     # as installed, with its password files
        safeio.atomic_write(_gen_path(path, number), data, mode=0o600)
        _install(path, config)
    except (ConfigError, OSError):
        for name in written + [_gen_path(path, number)]:
            safeio.unlink_quietly(name)
        raise
    _prune(path)
    return ApplyResult(number, digest, changed=True)


def rollback(path: str, number: int | None = None) -> ApplyResult:
    """Install generation `number`, else the newest one that differs from the file now."""
    kept = generations(path)
    if number is None:
        target = next((g for g in kept if not g.current), None)
        if target is None:
            raise ConfigError(path, "", "no earlier generation to roll back to")
    else:
        target = next((g for g in kept if g.number == number), None)
        if target is None:
            numbers = ", ".join(str(g.number) for g in kept) or "none"
            raise ConfigError(path, "", f"no generation {number} (kept: {numbers})")
    return apply_config(path, _read(target.path) or b"", f"generation {target.number}")


def _gen_path(path: str, number: int) -> str:
    return os.path.join(_gen_dir(path), f"{number:06d}.toml")


def _install(path: str, data: bytes) -> None:
    """safeio.atomic_write with the old file's owner, group and mode (root writes it for a
    service user who must still read it)."""
    try:
        old = os.stat(path)
        mode, owner = old.st_mode & 0o7777, (old.st_uid, old.st_gid)
    except FileNotFoundError:
        mode, owner = DEFAULT_MODE, None
    safeio.atomic_write(path, data, mode=mode, owner=owner)


def _write_secrets(path: str, secrets: dict[str, str]) -> list[str]:
    """Each password into its own file beside the config (0640: the queue manager reads it
    through the directory's group, smtpd cannot enter the directory)."""
    written = []
    base = os.path.dirname(os.path.abspath(path))
    if secrets:
        os.makedirs(os.path.join(base, configsecrets.SECRETS_DIR), mode=0o750, exist_ok=True)
    for relative, password in secrets.items():
        full = os.path.join(base, relative)
        safeio.atomic_write(full, password.encode("utf-8"), mode=0o640)
        written.append(full)
    return written


def _prune(path: str) -> None:
    """Drop generations beyond KEEP_GENERATIONS, and the password files only they used."""
    kept = generations(path)
    for old in kept[KEEP_GENERATIONS:]:
        if not old.current:
            os.unlink(old.path)
    numbers = {g.number for g in kept[:KEEP_GENERATIONS]} | {g.number for g in kept if g.current}
    directory = os.path.join(os.path.dirname(os.path.abspath(path)), configsecrets.SECRETS_DIR)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        owner = configsecrets.own_file_generation(name)
        if owner is not None and owner not in numbers:
            os.unlink(os.path.join(directory, name))
