"""safeio — the only code that writes durable files.

Guarantees: a file written with atomic_write() is either absent or complete on disk after a
crash at any instant: tmp in the same directory, write, fsync(file), rename, fsync(dir).
durable_rename() makes a rename itself survive a crash. On any failure the temporary
file is removed and the exception propagates; the old file, if any, is untouched.
Must never: leave a partially written file under its final name.
"""

from __future__ import annotations

import os
import secrets


def fsync_dir(path: str) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parent_dir(path: str) -> str:
    """The directory holding `path`, as given: a relative path stays relative. The relay's
    children reach the spool through their working directory (privsep.enter_spool), and
    may not be allowed to enter the directories an absolute path would go through."""
    return os.path.dirname(path) or "."


def atomic_write(path: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None,
                 durable: bool = True) -> None:
    """Write `data` to `path` atomically and durably (see the module docstring); `owner`
    (uid, gid) is set before the rename, so no reader sees the file with the wrong owner.
    durable=False skips both fsyncs, for a file rewritten all the time whose loss in a
    power cut costs nothing (status): readers still never see it half-written, and the
    write reaches the disk with the file system's next commit instead of forcing one."""
    directory = parent_dir(path)
    fd, tmp = _create_tmp(directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if owner is not None and owner != _owner_of(tmp):
            os.chown(tmp, *owner)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(directory)


def _create_tmp(directory: str) -> tuple[int, str]:
    """A new, empty, private file in `directory` under a name nobody else can have chosen
    (tempfile.mkstemp would make the path absolute; see parent_dir)."""
    while True:
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue


def durable_rename(src: str, dst: str) -> None:
    """rename(src, dst) and fsync the directories involved."""
    os.rename(src, dst)
    fsync_dir(parent_dir(dst))
    src_dir = parent_dir(src)
    if os.path.abspath(src_dir) != os.path.abspath(parent_dir(dst)):
        fsync_dir(src_dir)


def _owner_of(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_uid, info.st_gid


def unlink_quietly(path: str) -> None:
    """Remove a file if it can be, silently: for clean-up on a path that is already failing
    (a write, a rename), where the error being handled must propagate, not the unlink's."""
    try:
        os.unlink(path)
    except OSError:
        pass
