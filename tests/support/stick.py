"""stick (test support) — FAT stick images for the USB stick tests, made by the real tools.

Peers: dosfstools (`mkfs.vfat`) formats an image file the way a PC formats a stick; mtools
(`mcopy`, `mtype`, `mdir`) puts files on it and reads RESULT.TXT back. The kernel here has no
vfat, so nothing is mounted: the image file stands for the stick's block device.

    make_stick(path, {"mta-lite.toml": data}, label="MTACONFIG")
    stick_file(path, "RESULT.TXT")         # bytes, or None if the stick has no such file
    Recorder(inner)                        # a runner that records (and can rewrite) commands
"""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import tempfile

import tomli_w

from mta_lite_board.mtools import MTOOLS_ENV, Completed, MtoolsRunner
from tests.support.relay import PASSWORD

# A config the box accepts, with an inline password (configgen moves it to secrets/).
BOX_CONFIG = {
    "hostname": "relay.lan.test",
    "admin_address": "admin@lan.test",
    "mynetworks": ["127.0.0.0/8", "192.168.0.0/16"],
    "relays": {"isp": {"host": "smtp.isp.example", "port": 587, "tls": "starttls",
                       "username": "office@isp.example", "password": PASSWORD}},
}


def installed_config(tmp_path, data: bytes | None = None) -> str:
    """A box's config directory (tmp_path/etc) with `data` (default config_bytes()) installed
    as mta-lite.toml; its path."""
    directory = tmp_path / "etc"
    directory.mkdir()
    path = directory / "mta-lite.toml"
    path.write_bytes(config_bytes() if data is None else data)
    return str(path)


def config_bytes(**changes) -> bytes:
    """BOX_CONFIG with top-level keys changed, as TOML."""
    data = copy.deepcopy(BOX_CONFIG)
    data.update(changes)
    return tomli_w.dumps(data).encode("utf-8")


def _run(argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, env=MTOOLS_ENV, timeout=60, check=True)


def make_stick(path, files: dict[str, bytes] | None = None, label: str | None = "MTACONFIG",
               size: str = "4M", mkfs_args: tuple[str, ...] = ()) -> str:
    """A formatted image at `path` holding `files` in its top folder; its path."""
    path = str(path)
    subprocess.run(["truncate", "-s", size, path], check=True)
    label_args = ["-n", label] if label else []
    subprocess.run(["mkfs.vfat", *label_args, *mkfs_args, path], check=True, capture_output=True)
    for name, data in (files or {}).items():
        put_file(path, name, data)
    return path


def put_file(image: str, name: str, data: bytes) -> None:
    with tempfile.NamedTemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        _run(["mcopy", "-o", "-i", image, handle.name, "::/" + name])


def put_many(image: str, names: list[str], directory: str) -> None:
    """Empty files under these names, all in one mcopy run (one process for hundreds)."""
    paths = []
    for name in names:
        paths.append(os.path.join(directory, name))
        with open(paths[-1], "wb"):
            pass
    _run(["mcopy", "-i", image, *paths, "::/"])


def make_dir(image: str, name: str) -> None:
    _run(["mmd", "-i", image, "::/" + name])


def stick_file(image: str, name: str) -> bytes | None:
    result = subprocess.run(["mtype", "-i", image, "::/" + name], capture_output=True, env=MTOOLS_ENV, timeout=60)
    return result.stdout if result.returncode == 0 else None


def digest(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def box_state(config_path) -> dict[str, bytes]:
    """Every file under the config's directory, by relative path: what "nothing changed" means."""
    base = os.path.dirname(str(config_path))
    state = {}
    for root, _dirs, names in os.walk(base):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                state[os.path.relpath(full, base)] = handle.read()
    return state


class Recorder:
    """A runner around `inner` (default: the real MtoolsRunner) that records every command and
    what it returned; `rewrite(argv)` may return another argv to run instead (a fault)."""

    def __init__(self, inner=None, rewrite=None, before=None) -> None:
        self.inner = inner or MtoolsRunner()
        self.rewrite, self.before = rewrite, before
        self.calls: list[list[str]] = []
        self.stdins: list[bytes] = []
        self.results: list[Completed] = []

    def __call__(self, argv, limit_bytes: int, stdin: bytes = b"") -> Completed:
        argv = list(argv)
        self.calls.append(argv)
        self.stdins.append(stdin)
        if self.before:
            self.before(argv)
        if self.rewrite:
            argv = self.rewrite(argv) or argv
        done = self.inner(argv, limit_bytes, stdin)
        self.results.append(done)
        return done

    def reads(self, name: str) -> list[list[str]]:
        return [argv for argv in self.calls if argv[0] == "mcopy" and "::/" + name in argv[:-1]]

    def writes(self) -> list[list[str]]:
        return [argv for argv in self.calls if argv[0] == "mcopy" and "-o" in argv]
