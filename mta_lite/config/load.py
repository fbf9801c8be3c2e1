"""load — read a TOML file into a validated Config, and show it back as TOML.

    load_config(path, secrets)      the file at `path`, with its digest
    parse_config(data, path, secrets)   TOML data already parsed
    effective_dict(cfg, hashes)     what `config show` prints: every key, defaults filled in

Both directions follow the keys schema.py declares (tables.read_table, tables.shown).

Guarantees: parse_config() either returns a complete Config or raises one ConfigError that
names file, key, value and a hint; it never returns a partly valid config and never changes
anything on disk. effective_dict() masks every secret as "********".
Must never: include a password in an error message or in the effective config.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import replace

from mta_lite.config.keys import Mode, Table
from mta_lite.config.schema import Config
from mta_lite.config.tables import read_table, shown
from mta_lite.errors import ConfigError


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
    top = Table(data, path, "", base=os.path.dirname(os.path.abspath(path)), secrets=secrets)
    return read_table(Config, top, path=path)


def effective_dict(cfg: Config, hashes: bool = False) -> dict[str, object]:
    """The effective config as plain TOML-ready data, every secret masked; user password
    hashes too, unless `hashes` (the receiving side's config: it checks the logins)."""
    return shown(cfg, Mode(hashes=hashes))
