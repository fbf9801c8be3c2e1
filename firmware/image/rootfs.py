"""rootfs — the slow part of the image: Debian's packages, the initramfs and the third-party
wheels, built once by mmdebstrap under qemu-user and cached as a tarball.

    key = cache_key()                   what the root file system is made from, hashed
    path = ensure_rootfs(cache_dir, sde, say)   the cached tarball, built if missing

The key covers the suite, architecture, mirror, package list, dpkg filters, the hooks and the
wheel lock: change any of them and the next `make image` builds a new root file system
(~13 minutes on 2 cores); otherwise the image is rebuilt from the cache in seconds.

Guarantees: a tarball is only ever seen under its final name complete (written as .partial,
renamed after mmdebstrap succeeded). The newest KEEP_ROOTFS tarballs are kept.
Must never: download anything but Debian packages (mmdebstrap) and the locked wheels (pip
with --require-hashes), or leave a partial tarball under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import tempfile
from typing import Callable

from . import layout

HERE = pathlib.Path(__file__).resolve().parent
HOOKS = HERE / "hooks"
WHEELS_LOCK = HERE / "wheels.lock"
DEFAULT_CACHE = pathlib.Path(os.environ.get("MTA_LITE_IMAGE_CACHE", "/var/cache/mta-lite-image"))
# Python of the suite's python3; pip picks wheels for it. A new SUITE may bring a new one.
PYTHON_VERSION = "3.13"
# Two: the current one, and the previous one while switching branches back and forth.
KEEP_ROOTFS = 2
# Bump when the recipe changes in a way the hashed inputs below do not show.
RECIPE_VERSION = 1


def cache_key() -> str:
    """sha256 over everything the cached root file system is made from (first 16 hex digits)."""
    digest = hashlib.sha256()
    inputs = {"recipe": RECIPE_VERSION, "suite": layout.SUITE, "arch": layout.ARCH,
              "mirror": layout.MIRROR, "components": layout.COMPONENTS, "packages": layout.PACKAGES,
              "excludes": layout.DPKG_EXCLUDES, "includes": layout.DPKG_INCLUDES,
              "python": PYTHON_VERSION}
    digest.update(json.dumps(inputs, sort_keys=True).encode())
    for path in sorted(HOOKS.iterdir()) + [WHEELS_LOCK]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def mmdebstrap_argv(wheels: pathlib.Path, output: pathlib.Path) -> list[str]:
    argv = ["mmdebstrap", "--verbose", f"--arch={layout.ARCH}", "--variant=minbase",
            f"--components={','.join(layout.COMPONENTS)}", f"--include={','.join(layout.PACKAGES)}",
            "--format=tar", "--aptopt=Acquire::Retries \"3\""]
    argv += [f"--dpkgopt=path-exclude={p}" for p in layout.DPKG_EXCLUDES]
    argv += [f"--dpkgopt=path-include={p}" for p in layout.DPKG_INCLUDES]
    argv += [f"--essential-hook={HOOKS / 'essential.sh'}",
             '--customize-hook=mkdir -p "$1/tmp/mta-lite-wheels"',
             f"--customize-hook=sync-in {wheels} /tmp/mta-lite-wheels",
             f"--customize-hook={HOOKS / 'customize.sh'}",
             layout.SUITE, str(output), layout.MIRROR]
    return argv


def fetch_wheels(dest: pathlib.Path) -> None:
    """The locked wheels, checked against their hashes, plus the lock file for the hook."""
    subprocess.run(["python3", "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    f"--python-version={PYTHON_VERSION}", "--require-hashes", "-r", str(WHEELS_LOCK),
                    "-d", str(dest)], check=True)
    (dest / "wheels.lock").write_bytes(WHEELS_LOCK.read_bytes())


def ensure_rootfs(cache_dir: pathlib.Path, sde: int, say: Callable[[str], None]) -> pathlib.Path:
    """The cached root file system tarball for cache_key(); built with mmdebstrap if missing."""
    key = cache_key()
    tarball = cache_dir / f"rootfs-{layout.SUITE}-{layout.ARCH}-{key}.tar"
    if tarball.exists():
        say(f"rootfs: cached {tarball}")
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    say(f"rootfs: not cached (key {key}): mmdebstrap {layout.SUITE}/{layout.ARCH}, "
        "about 13 minutes on 2 cores")
    partial = tarball.with_suffix(".tar.partial")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(sde), PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory(prefix="mta-lite-wheels-") as tmp:
        wheels = pathlib.Path(tmp)
        fetch_wheels(wheels)
        log = cache_dir / f"rootfs-{key}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(mmdebstrap_argv(wheels, partial), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            for line in proc.stdout:
                out.write(line)
                _progress(line.decode("utf-8", "replace").rstrip(), say)
            if proc.wait() != 0:
                partial.unlink(missing_ok=True)
                raise RuntimeError(f"mmdebstrap failed (exit {proc.returncode}); see {log}")
    (cache_dir / f"rootfs-{key}.json").write_text(json.dumps({"source_date_epoch": sde, "key": key}))
    os.replace(partial, tarball)
    _prune(cache_dir)
    say(f"rootfs: built {tarball}")
    return tarball


def rootfs_epoch(tarball: pathlib.Path) -> int | None:
    """The SOURCE_DATE_EPOCH the cached root file system was built with (for the manifest)."""
    meta = tarball.parent / f"rootfs-{tarball.stem.rsplit('-', 1)[-1]}.json"
    try:
        return json.loads(meta.read_text())["source_date_epoch"]
    except (OSError, ValueError, KeyError):
        return None


def _progress(line: str, say: Callable[[str], None]) -> None:
    """mmdebstrap's own stage lines and the hooks' lines; not every package."""
    if line.startswith(("I: ", "E: ", "W: ", "customize:")) and "dpkg" not in line[:12]:
        say("rootfs: " + line)


def _prune(cache_dir: pathlib.Path) -> None:
    tarballs = sorted(cache_dir.glob("rootfs-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in tarballs[KEEP_ROOTFS:]:
        old.unlink(missing_ok=True)
