"""safeio — the only code that writes durable files.

Guarantees: a file written with atomic_write() is either absent or complete on disk after a
crash at any instant: tmp in the same directory, write, fsync(file), rename, fsync(dir).
durable_rename() makes a rename itself survive a crash. On any failure the temporary
file is removed and the exception propagates; the old file, if any, is untouched.
Must never: leave a partially written file under its final name.
"""

from __future__ import annotations

import os
import tempfile


def fsync_dir(path: str) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Write `data` to `path` atomically and durably (see the module docstring); `owner`
    (uid, gid) is set before the rename, so no reader sees the file with the wrong owner."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if owner is not None and owner != _owner_of(tmp):
            os.chown(tmp, *owner)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def durable_rename(src: str, dst: str) -> None:
    """rename(src, dst) and fsync the directories involved."""
    os.rename(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))
    src_dir = os.path.dirname(os.path.abspath(src))
    if src_dir != os.path.dirname(os.path.abspath(dst)):
        fsync_dir(src_dir)


def _owner_of(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_uid, info.st_gid


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
