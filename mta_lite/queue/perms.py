"""perms — who may do what in the spool: directory owners, groups and modes, set at start-up.

    prepare_spool(root, owner_uid, smtpd_gid)   called by the master; as root it applies

    path        owner     group      mode  why
    .           mta-lite  mta-smtpd  0751  smtpd traverses and lists; local users only traverse
                                           (to reach maildrop/), they cannot list
    incoming/   mta-lite  mta-smtpd  3770  smtpd creates its files here (.tmp-ID, linked to ID);
                                           setgid: files get group mta-smtpd, so qmgr reads
                                           them through that group; sticky: smtpd may unlink
                                           or rename only its own files, qmgr (the owner)
                                           may move any
    active/ deferred/ hold/ corrupt/ state/
                mta-lite  mta-lite   0700  qmgr only
    public/     mta-lite  mta-smtpd  2751  the doorbell socket gets group mta-smtpd (qmgr makes
                                           it 0660), so smtpd may ring; the status file
    postscreen/ mta-lite  mta-smtpd  2770  smtpd replaces its pass cache file here (atomic
                                           write: a temporary file renamed over the old one);
                                           nobody else needs it
    maildrop/   mta-lite  mta-lite   3733  any local user may create a file, nobody but qmgr
                                           may list; setgid: a file gets group mta-lite, so
                                           sendmail makes it 0640 and only its writer and
                                           qmgr can read it, even if its name is guessed;
                                           sticky: a user can remove only their own files

Two choices differ from the first sketch (spool root 0750, maildrop 1733 with 0644 files):
a root of 0750 would keep every local user out of maildrop/, so `sendmail` could not work
without a set-gid helper; and 0644 files in a directory everybody may traverse could be read
by anyone who guesses a queue ID (a timestamp and 12 random bits) in the seconds before
pickup.

Started as an ordinary user (demo, tests) everything belongs to that user and the modes are
Spool.ensure()'s (0700): one user, nothing to separate.
Guarantees: idempotent; as root, directories are opened with O_NOFOLLOW and changed through
their descriptors, so a symlink planted in the spool cannot redirect a chown; files a root
process left in the queue (the single-process layout, an administrator's command) are given
to the queue owner if they are regular files with one link.
Must never: follow a symlink below the spool root, or chown a file outside it.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from mta_lite.errors import SpoolError
from mta_lite.queue.spool import DIRS, MAILDROP, STATES, Spool

SMTPD, OWNER = "smtpd", "owner"
ROOT_MODE = 0o751
LAYOUT: dict[str, tuple[int, str]] = {
    "incoming": (0o3770, SMTPD),
    "active": (0o700, OWNER),
    "deferred": (0o700, OWNER),
    "hold": (0o700, OWNER),
    "corrupt": (0o700, OWNER),
    "state": (0o700, OWNER),
    "public": (0o2751, SMTPD),
    MAILDROP: (0o3733, OWNER),
    "postscreen": (0o2770, SMTPD),
}
# Directories whose root-owned files the queue manager must be able to read or replace.
ADOPTED = (*STATES, "state")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

if set(LAYOUT) != set(DIRS):      # not an assert: it must hold under python -O too
    raise ImportError("perms.LAYOUT does not describe every spool directory")


def prepare_spool(root: str, owner_uid: int | None = None, smtpd_gid: int | None = None,
                  owner_gid: int | None = None) -> Spool:
    """Create the spool and give it the layout above; owner_uid None: one user, ensure()."""
    spool = Spool(root)
    if owner_uid is None:
        return spool.ensure()
    if smtpd_gid is None:
        raise ValueError("prepare_spool: smtpd_gid is required with owner_uid")
    gids = {SMTPD: smtpd_gid, OWNER: _primary_gid(owner_uid) if owner_gid is None else owner_gid}
    os.makedirs(os.path.dirname(os.path.abspath(root)), mode=0o755, exist_ok=True)
    _mkdir_quietly(root)
    # The root path comes from the administrator's config and may be a symlink; below it,
    # every name is opened without following links.
    root_fd = _open_dir(root, follow=True)
    try:
        _apply(root_fd, owner_uid, smtpd_gid, ROOT_MODE)
        for name, (mode, group) in LAYOUT.items():
            _prepare_one(root_fd, name, owner_uid, gids[group], mode)
    finally:
        os.close(root_fd)
    return spool


def _prepare_one(root_fd: int, name: str, uid: int, gid: int, mode: int) -> None:
    _mkdir_quietly(name, dir_fd=root_fd)
    fd = _open_dir(name, dir_fd=root_fd)
    try:
        _apply(fd, uid, gid, mode)
        if name in ADOPTED:
            _adopt_root_files(fd, uid)
    finally:
        os.close(fd)


def _primary_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        raise SpoolError(errno.EINVAL, f"spool owner uid {uid} has no passwd entry") from None


def _mkdir_quietly(path: str, dir_fd: int | None = None) -> None:
    try:
        os.mkdir(path, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass


def _open_dir(path: str, dir_fd: int | None = None, follow: bool = False) -> int:
    flags = _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        # ELOOP: a symlink where a spool directory belongs; ENOTDIR: a file there.
        raise SpoolError(exc.errno, f"spool directory {path}: {exc.strerror}") from None


def _apply(fd: int, uid: int, gid: int, mode: int) -> None:
    # chown first: changing the owner may clear the set-gid bit, chmod sets it again.
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


def _adopt_root_files(dir_fd: int, uid: int) -> None:
    """Give root-owned regular files to the queue owner; leave everything else alone."""
    if uid == 0:
        return
    for name in os.listdir(dir_fd):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_uid != 0 or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                continue
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue        # gone meanwhile, or not ours to touch
        try:
            again = os.fstat(fd)
            # The same inode we looked at, still one link: not a hard link to a file elsewhere.
            same = (again.st_ino, again.st_dev) == (st.st_ino, st.st_dev)
            if same and again.st_uid == 0 and again.st_nlink == 1:
                os.fchown(fd, uid, -1)
        finally:
            os.close(fd)
