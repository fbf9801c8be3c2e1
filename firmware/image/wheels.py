"""wheels — aarch64 wheels of the Python packages with C code (sdists.lock), built here.

    path = ensure_wheels(cache_dir, sde, say)     a directory of .whl files, built if missing

The box has no compiler, and PyPI has no aarch64 wheel of lgpio for trixie's Python, so the
wheel is built in a throw-away trixie arm64 chroot (mmdebstrap, qemu-user) with gcc, swig and
python3-dev, statically linked with its C library (lgpio's PYPI=1 build), and cached like the
root file system. build.py installs it into the image's venv.

Guarantees: the sources are the locked ones (pip --require-hashes); a cached directory is
complete (built under a temporary name, renamed at the end).
Must never: put a compiler or a build dependency into the image.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable

from . import layout
from .rootfs import PYTHON_VERSION

HERE = pathlib.Path(__file__).resolve().parent
SDISTS_LOCK = HERE / "sdists.lock"
BUILD_PACKAGES = ("gcc", "libc6-dev", "python3-dev", "python3-pip", "python3-setuptools", "swig")
# Bump when the build steps below change.
BUILD_VERSION = 1


def cache_key() -> str:
    digest = hashlib.sha256()
    for part in (str(BUILD_VERSION), layout.SUITE, layout.ARCH, PYTHON_VERSION, ",".join(BUILD_PACKAGES),
                 SDISTS_LOCK.read_text()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _build_script() -> str:
    # PYPI=1: lgpio's setup.py then compiles its C library into the extension module.
    return ('set -eu; cd /tmp/sdists; mkdir -p /tmp/wheelhouse; '
            'for s in *.tar.gz; do PYPI=1 python3 -m pip wheel --quiet --no-deps --no-index '
            '--no-build-isolation --wheel-dir /tmp/wheelhouse "$s"; done')


def ensure_wheels(cache_dir: pathlib.Path, sde: int, say: Callable[[str], None]) -> pathlib.Path:
    """The cached directory of built wheels for cache_key()."""
    key = cache_key()
    done = cache_dir / f"wheels-{layout.SUITE}-{layout.ARCH}-{key}"
    if done.is_dir():
        say(f"wheels: cached {done}")
        return done
    say(f"wheels: building {', '.join(_names())} for {layout.ARCH} in a {layout.SUITE} chroot "
        "(about 6 minutes)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(sde), PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory(prefix="mta-lite-sdists-", dir=cache_dir) as tmp:
        sdists, out = pathlib.Path(tmp) / "sdists", pathlib.Path(tmp) / "wheelhouse"
        subprocess.run(["python3", "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:",
                        "--require-hashes", "-r", str(SDISTS_LOCK), "-d", str(sdists)], check=True)
        argv = ["mmdebstrap", "--quiet", f"--arch={layout.ARCH}", "--variant=apt",
                f"--include={','.join(BUILD_PACKAGES)}", "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                '--customize-hook=mkdir -p "$1/tmp/sdists"',
                f"--customize-hook=sync-in {sdists} /tmp/sdists",
                f'--customize-hook=chroot "$1" sh -c \'{_build_script()}\'',
                f"--customize-hook=sync-out /tmp/wheelhouse {out}",
                layout.SUITE, "/dev/null", layout.MIRROR]
        out.mkdir()
        subprocess.run(argv, env=env, check=True)
        if not list(out.glob("*.whl")):
            raise RuntimeError("wheels: the build chroot produced no wheel")
        os.replace(out, done)
    for old in cache_dir.glob(f"wheels-{layout.SUITE}-{layout.ARCH}-*"):
        if old != done:
            shutil.rmtree(old, ignore_errors=True)
    say(f"wheels: built {done}")
    return done


def _names() -> list[str]:
    return [line.split("==")[0] for line in SDISTS_LOCK.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
