"""dirsync — make a new directory entry durable, also in a directory we may not read.

    sync_entry(directory, fd)   fsync(directory), or syncfs(fd) when the directory is
                                write-only to us (maildrop/, mode 3733)

Why: G1 needs the rename/link of a queue file to survive a power cut before we say "yes",
and the usual way is fsync() on the directory. That needs a file descriptor of the
directory, and open(dir, O_RDONLY) needs read permission, which an ordinary user
submitting through maildrop/ must not have (it would let them list everybody's pending
mail). An O_PATH descriptor opens without permission but fsync() on it fails with EBADF.
Linux's syncfs(fd) commits the whole file system that `fd` (the new file, still open)
lives on, directory entries included; it costs a full file-system flush, which is why it
is only the fallback. Where syncfs is unavailable (not Linux, old libc) os.sync() is the
last resort: it flushes every file system, but returns only when done since Linux 1.3.20.
Guarantees: returns only when the entry is on stable storage as far as the kernel can
tell, or raises OSError.
Must never: swallow an fsync/syncfs error (that would turn a refusal into a loss).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

from mta_lite import safeio

_NO_DIR_ACCESS = (errno.EACCES, errno.EPERM)


def sync_entry(directory: str, fd: int) -> None:
    """Make entries created in `directory` durable; `fd` is an open file on the same fs."""
    try:
        safeio.fsync_dir(directory)
        return
    except OSError as exc:
        if exc.errno not in _NO_DIR_ACCESS:
            raise
    syncfs(fd)


def syncfs(fd: int) -> None:
    """syncfs(2) through libc; os.sync() where libc has no syncfs."""
    func = _libc_syncfs()
    if func is None:
        os.sync()
        return
    if func(fd) != 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            os.sync()
            return
        raise OSError(code, f"syncfs: {os.strerror(code)}")


@functools.cache
def _libc_syncfs():
    # CDLL(None): the symbols already loaded into this process, libc among them; unlike
    # ctypes.util.find_library() it runs no ldconfig/gcc subprocess.
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func
