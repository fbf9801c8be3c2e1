"""config (command) — `mta-lite config show | public | apply FILE|- | rollback [N] | generations`.

show and public print the loaded config (secrets masked, or left out); apply, rollback and
generations work on the file through the config store (config/generations.py), not on a
loaded config: the running one may be the broken one that a rollback repairs.
Guarantees: a refused config is one line naming source, key and problem, exit 78, and
nothing changed. Must never: print a secret.
"""

from __future__ import annotations

import sys

import tomli_w

from mta_lite.config import generations as configgen
from mta_lite.config.load import effective_dict
from mta_lite.config.public import public_config_toml
from mta_lite.config.schema import Config
from mta_lite.errors import ConfigError

EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 64, 75, 78


def show(cfg: Config) -> int:
    sys.stdout.write(tomli_w.dumps(effective_dict(cfg)))
    return 0


def public(cfg: Config) -> int:
    sys.stdout.buffer.write(public_config_toml(cfg))
    return 0


def generations_main(path: str, action: str, arg: str | None) -> int:
    """config apply / rollback / generations: these work on the file, not on a loaded config
    (the running one may be the broken one that a rollback repairs)."""
    try:
        if action == "generations":
            for gen in configgen.generations(path):
                print(f"{gen.number:6d}  {gen.digest}  {gen.size:6d} bytes"
                      f"{'  (current)' if gen.current else ''}")
            return 0
        if action == "apply":
            if not arg:
                print("mta-lite: config apply needs a FILE (or - for standard input)", file=sys.stderr)
                return EX_USAGE
            result = configgen.apply_config(path, _read_candidate(arg), arg if arg != "-" else "stdin")
        else:
            if arg is not None and not arg.isdigit():
                print(f"mta-lite: config rollback: expected a generation number, got {arg!r}", file=sys.stderr)
                return EX_USAGE
            result = configgen.rollback(path, int(arg) if arg else None)
    except ConfigError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        print(f"mta-lite: cannot install {path}: {exc.strerror}", file=sys.stderr)
        return EX_TEMPFAIL
    if result.changed:
        print(f"mta-lite: {result.describe()}")
    else:
        print(f"mta-lite: generation {result.generation} already installed (config {result.digest})")
    return 0


def _read_candidate(arg: str) -> bytes:
    if arg == "-":
        return sys.stdin.buffer.read(configgen.MAX_CONFIG_BYTES + 1)
    try:
        with open(arg, "rb") as handle:
            return handle.read(configgen.MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(arg, "", f"cannot read: {exc.strerror}") from None
