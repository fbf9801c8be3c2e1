"""pickup — move local submissions from maildrop/ into the queue, as Postfix's pickup does.

    maildrop/ID         a queue file written by `sendmail` as some local user: UNTRUSTED
      open O_NOFOLLOW|O_NONBLOCK, fstat: a regular file of plausible size
      validate: version, envelope, end marker, checksum (queuefile), then the envelope
                again as if it came from the network (envelope.parse_path), and the
                sender's [[senders]] client binding for client 127.0.0.1 (S4)
      copy      into a new queue file of our own (spool.begin/write/commit): new queue ID,
                arrival now, client 127.0.0.1/localhost; only then unlink maildrop/ID
    maildrop/.tmp-ID    a submission being written; removed once older than STALE_TMP_S
    an invalid file     renamed into corrupt/ with a log line naming it (never deleted)
    a FIFO, symlink, device, socket, directory: not a submission and holds none; removed
                        with a log line (a non-empty directory cannot be, and is skipped)

Guarantees: a submission leaves maildrop/ only after its copy is durably in incoming/
(a crash in between delivers it twice, never zero times) or after it was moved to
corrupt/; the copy holds exactly the bytes whose checksum was verified, so a submitter who
still has the file open cannot change what is delivered; one run handles at most
MAX_FILES_PER_RUN files, so a flood of submissions cannot stall deliveries.
SECURITY: every byte in maildrop/ was written by an arbitrary local user. The sender may be
any address the parser accepts except the null sender (a forged bounce would escape the
bounce loop rules, G6); is_bounce must be false; FIFOs, devices, symlinks and directories
are never opened for reading.
Must never: crash the queue manager on a bad file, block on a FIFO, follow a symlink,
delete a submission that is not queued, or trust a field it has not checked.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass

from mta_lite.text import printable
from mta_lite.envelope import Envelope, parse_path
from mta_lite.errors import CorruptQueueFileError, SpoolError
from mta_lite.queue import QueueEntry, Spool
from mta_lite.queue.queuefile import MAGIC, MAX_ENVELOPE_BYTES, MAX_TRAILER_BYTES, parse_open
from mta_lite.queue.spool import MAILDROP, STAGING_PREFIX, new_queue_id

log = logging.getLogger("mta_lite.pickup")

# A sendmail still writing after an hour has been abandoned (killed, or a stuck pipe);
# sendmail normally finishes in well under a second.
STALE_TMP_S = 3600.0
# Per run: enough for any burst of cron mail, small enough that deliveries keep flowing.
MAX_FILES_PER_RUN = 50
# The queue file around the content: magic, the envelope line, the trailer.
ENVELOPE_HEADROOM_BYTES = len(MAGIC) + MAX_ENVELOPE_BYTES + MAX_TRAILER_BYTES
COPY_CHUNK_BYTES = 64 * 1024
# Queue files made by pickup are read by qmgr alone (their owner); smtpd has no business.
COPY_FILE_MODE = 0o600
LOCAL_ADDRESS, LOCAL_HELO = "127.0.0.1", "localhost"
# An address in a log line is cut here: a submitted one may be a megabyte of garbage.
MAX_LOGGED_CHARS = 80
BODY_TYPES = ("7BIT", "8BITMIME")
# O_NONBLOCK: a FIFO swapped in after the lstat() does not block the open, and neither does
# a file lease its owner holds (open() would wait up to lease-break-time, 45 s, for it).
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


PICKED, KEPT, REJECTED, GONE = "picked", "kept", "rejected", "gone"
LATER, STUCK, STALE = "later", "stuck", "stale"
# Entries that can be neither queued nor removed (a non-empty directory a user made) are
# skipped after one log line; a bound, so that a flood of them cannot grow qmgr's memory.
MAX_STUCK_NAMES = 10_000


class RejectedError(SpoolError):
    """A maildrop file that is not an acceptable submission; it goes to corrupt/."""


class NotAFileError(RejectedError):
    """Not a regular file at all (FIFO, symlink, device, directory): removed, not kept."""


@dataclass
class PickupRun:
    picked: int = 0
    rejected: int = 0
    stale: int = 0
    later: int = 0              # I/O errors (disk full...): left in maildrop/ for the next run
    more: bool = False          # MAX_FILES_PER_RUN reached: run again soon


class Pickup:
    """pickup runs for one spool; remembers entries it can neither queue nor remove."""

    def __init__(self, spool: Spool, size_limit: int, clock=time.time,
                 limit: int = MAX_FILES_PER_RUN, sender_bound=None) -> None:
        self.spool, self.size_limit, self.clock, self.limit = spool, size_limit, clock, limit
        # sender_bound(sender) -> True when a [[senders]] binding refuses a local submission
        # (identity.bound_to_other_clients with client 127.0.0.1); None: no bindings.
        self.sender_bound = sender_bound
        self._stuck: set[str] = set()

    def run(self) -> PickupRun:
        """One pass over maildrop/; never raises for a bad file (it is logged and set aside)."""
        run = PickupRun()
        try:
            names = sorted(os.listdir(os.path.join(self.spool.root, MAILDROP)))
        except FileNotFoundError:
            return run          # a spool from before maildrop/ existed: nothing submitted
        self._stuck.intersection_update(names)
        for name in names:
            if run.picked + run.rejected + run.later >= self.limit:
                run.more = True
                break
            if name in self._stuck:
                continue        # logged once already; retrying every pass would flood the log
            if name.startswith(STAGING_PREFIX):
                outcome = _drop_if_stale(self.spool, name, self.clock())
            else:
                outcome = pickup_one(self.spool, name, self.size_limit, self.clock(), self.sender_bound)
            run.stale += outcome == STALE
            run.picked += outcome in (PICKED, KEPT)
            run.rejected += outcome == REJECTED
            run.later += outcome == LATER
            if outcome in (STUCK, KEPT) and len(self._stuck) < MAX_STUCK_NAMES:
                self._stuck.add(name)
        return run


def pickup_one(spool: Spool, name: str, size_limit: int, now: float, sender_bound=None) -> str:
    """PICKED, KEPT (queued, not removed), REJECTED (set aside), GONE, LATER (an I/O error;
    retried) or STUCK (neither queued nor removable)."""
    path = os.path.join(spool.root, MAILDROP, name)
    try:
        queue_id, st, sender = _copy_in(spool, path, size_limit, now, sender_bound)
    except NotAFileError as exc:
        return REJECTED if _remove_special(path, name, exc.strerror) else STUCK
    except RejectedError as exc:
        return REJECTED if _quarantine(spool, name, exc.strerror) else STUCK
    except FileNotFoundError:
        return GONE             # withdrawn by its owner before we got to it
    except OSError as exc:
        log.error("maildrop/%s: cannot pick up, will retry: %s", _printable(name), exc)
        return LATER
    except Exception:           # a bug met by untrusted input: set the file aside, or every
        log.exception("maildrop/%s: unexpected error", _printable(name))   # restart meets it
        return REJECTED if _quarantine(spool, name, "unexpected error") else STUCK
    log.info("%s: uid=%d from=<%s>", queue_id, st.st_uid, sender)
    return PICKED if _unlink_copied(path, name, st, queue_id) else KEPT


def _unlink_copied(path: str, name: str, copied: os.stat_result, queue_id: str) -> bool:
    """Remove the submission just queued, unless its owner put another file in its place;
    False if it cannot be removed (then it is skipped until qmgr restarts: one duplicate at
    most, not one per pass)."""
    try:
        now = os.lstat(path)
        if (now.st_ino, now.st_dev) != (copied.st_ino, copied.st_dev):
            log.warning("maildrop/%s: replaced while being queued as %s; the new file stays",
                        _printable(name), queue_id)
            return True
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("maildrop/%s: queued as %s but not removed: %s", _printable(name), queue_id, exc)
        return False
    return True


def _copy_in(spool: Spool, path: str, size_limit: int, now: float,
             sender_bound=None) -> tuple[str, os.stat_result, str]:
    """Validate the submission at `path` and queue a copy; (queue ID, its fstat, sender)."""
    _require_regular(os.lstat(path).st_mode)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if exc.errno == errno.ELOOP:    # replaced by a symlink since the lstat()
            raise NotAFileError(0, "a symbolic link") from None
        raise RejectedError(exc.errno, f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        _require_regular(st.st_mode)
        if st.st_size > size_limit + ENVELOPE_HEADROOM_BYTES:
            raise RejectedError(0, f"file of {st.st_size} bytes exceeds the message size limit")
        entry = _validated(handle, path, size_limit)
        envelope = checked_envelope(entry)
        if sender_bound is not None and sender_bound(envelope.sender):
            raise RejectedError(0, f"sender <{envelope.sender}> is bound to other clients "
                                f"than the local client [{LOCAL_ADDRESS}] (S4)")
        return _copy(spool, handle, entry, envelope, now), st, envelope.sender


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotAFileError(0, _KINDS.get(stat.S_IFMT(mode), "not a regular file"))


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a directory",
          stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def _validated(handle, path: str, size_limit: int) -> QueueEntry:
    try:
        entry = parse_open(handle, path, verify=True)
    except CorruptQueueFileError as exc:
        raise RejectedError(0, str(exc).removeprefix(f"{path}: ")) from None
    if entry.size > size_limit:
        raise RejectedError(0, f"message of {entry.size} bytes exceeds the size limit")
    return entry


def checked_envelope(entry: QueueEntry) -> Envelope:
    """The envelope of a submission, re-parsed as strictly as SMTP input; RejectedError if bad."""
    if entry.is_bounce:
        raise RejectedError(0, "a local submission cannot be a bounce")
    if entry.body not in BODY_TYPES:
        raise RejectedError(0, "unknown body type")
    sender = _address(entry.sender, True, entry.smtputf8)
    if sender == "":
        raise RejectedError(0, "null sender: a local submission cannot be a bounce")
    recipients = list(dict.fromkeys(_address(r, False, entry.smtputf8) for r in entry.recipients))
    return Envelope(sender, recipients, LOCAL_ADDRESS, LOCAL_HELO, entry.smtputf8, entry.body)


def _address(raw: str, sender: bool, smtputf8: bool) -> str:
    what = "sender" if sender else "recipient"
    try:
        addr = parse_path(f"<{raw}>", sender=sender, smtputf8=smtputf8)
    except ValueError as exc:   # AddressError, or UnicodeEncodeError: JSON allows "\ud800"
        raise RejectedError(0, f"bad {what} {_shown(raw)}: {exc}") from None
    if addr and "@" not in addr:
        raise RejectedError(0, f"unqualified {what} {_shown(raw)}")
    return addr


def _shown(text: str) -> str:
    return ascii(text[:MAX_LOGGED_CHARS])


def _copy(spool: Spool, handle, entry: QueueEntry, envelope: Envelope, now: float) -> str:
    """Queue the content, re-hashing every byte read: what is copied is what was verified."""
    writer = spool.begin(envelope, now=now, mode=COPY_FILE_MODE)
    digest = hashlib.sha256()
    handle.seek(0)
    position, end = 0, entry.content_offset + entry.size
    try:
        while position < end:
            chunk = handle.read(min(COPY_CHUNK_BYTES, end - position))
            if not chunk:
                raise RejectedError(0, "file shrank while being copied")
            digest.update(chunk)
            content = chunk[max(0, entry.content_offset - position):]
            if content:
                writer.write(content)
            position += len(chunk)
        if digest.hexdigest() != entry.digest:
            raise RejectedError(0, "file changed while being copied")
    except OSError:             # RejectedError included: nothing half-copied stays behind
        writer.abort()
        raise
    return writer.commit()


def _quarantine(spool: Spool, name: str, reason: str) -> bool:
    """Move an invalid submission into corrupt/ under a fresh name; False if it cannot be."""
    try:
        kept = spool.set_aside(MAILDROP, name, new_name=new_queue_id())
    except OSError as exc:
        log.error("maildrop/%s: rejected (%s) but cannot be moved to corrupt/: %s",
                  _printable(name), reason, exc)
        return False
    log.error("maildrop/%s: rejected, moved to corrupt/%s: %s", _printable(name), kept, reason)
    return True


def _remove_special(path: str, name: str, kind: str) -> bool:
    """A FIFO, symlink, device or directory holds no message: remove it (never opened)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.error("maildrop/%s: %s, not a submission, cannot be removed: %s",
                  _printable(name), kind, exc)
        return False
    log.error("maildrop/%s: %s, not a submission: removed", _printable(name), kind)
    return True


def _drop_if_stale(spool: Spool, name: str, now: float) -> str:
    """STALE (removed), "" (still young or gone) or STUCK (cannot be removed)."""
    path = os.path.join(spool.root, MAILDROP, name)
    try:
        if now - os.lstat(path).st_mtime < STALE_TMP_S:
            return ""
        os.unlink(path)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.error("maildrop/%s: abandoned, cannot be removed: %s", _printable(name), exc)
        return STUCK
    log.info("maildrop/%s: abandoned submission removed", _printable(name))
    return STALE


def _printable(name: str) -> str:
    """A file name any local user chose, safe for one log line (escaped when it is odd, so
    the log shows exactly what is in maildrop/)."""
    return printable(name, None, escape=not (name.isascii() and name.isprintable()))
