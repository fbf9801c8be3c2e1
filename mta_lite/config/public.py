"""public — what the master learns from short-lived processes that may read the secrets.

    load_public_config(path)   the config without secrets, from `mta-lite config public`
    preflight(path)            `mta-lite check`: its warnings, or PreflightError
    public_config_toml(cfg)    what `config public` prints

The master never reads a secret, so none can reach the smtpd it forks (S7): whatever needs
the full config (validating password files, the preflight) runs in a process of its own
that prints only what is safe to print and exits.
Must never: put a password, a password file's path or a CA file into the public config.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import tomli_w

from mta_lite.config.keys import Mode
from mta_lite.config.load import parse_config
from mta_lite.config.schema import Config
from mta_lite.config.tables import shown
from mta_lite.errors import ConfigError, PreflightError

WARNING_PREFIX = "check: warning: "     # how `mta-lite check` marks a line that is no error


def public_config_toml(cfg: Config) -> bytes:
    """The config without secrets (and without files the receiving side has no use for).
    Submission users' password hashes stay: the smtpd checks the logins (they are no
    smarthost secret); so do the senders' client bindings and the rewrite maps (S4). Which
    keys stay out is declared in schema.py (public=False)."""
    return tomli_w.dumps(shown(cfg, Mode(hashes=True, public=True))).encode()


def _cli(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", path, *args],
                          capture_output=True, stdin=subprocess.DEVNULL)


def load_public_config(path: str) -> Config:
    """Ask a short-lived process for the secret-free config, so no secret enters this one."""
    result = _cli(path, "config", "public")
    if result.returncode != 0:
        raise ConfigError(path, "", result.stderr.decode(errors="replace").strip().removeprefix("mta-lite: ")
                          .removeprefix(f"{path}: "))
    return parse_config(tomllib.loads(result.stdout.decode()), path, secrets=False)


def preflight(path: str) -> list[str]:
    """Run `mta-lite check` (it may read the secrets; this process may not): its warnings,
    or PreflightError with every fatal problem's line."""
    result = _cli(path, "check")
    lines = [line.removeprefix("mta-lite: ") for line in result.stderr.decode(errors="replace").splitlines()]
    warnings = [line for line in lines if line.startswith(WARNING_PREFIX)]
    if result.returncode != 0:
        errors = [line for line in lines if not line.startswith(WARNING_PREFIX)]
        raise PreflightError(errors or [f"{path}: mta-lite check failed with exit status {result.returncode}"])
    return warnings
