"""pickup — move local submissions from maildrop/ into the queue, as Postfix's pickup does.

    maildrop/ID         a queue file written by `sendmail` as some local user: UNTRUSTED
      open O_NOFOLLOW|O_NONBLOCK, fstat: a regular file of plausible size
      validate: version, envelope, end marker, checksum (queuefile), then the envelope
                again as if it came from the network (envelope.parse_path)
      copy      into a new queue file of our own (spool.begin/write/commit): new queue ID,
                arrival now, client 127.0.0.1/localhost; only then unlink maildrop/ID
    maildrop/.tmp-ID    a submission being written; removed once older than STALE_TMP_S
    anything else       not a valid submission: renamed into corrupt/ with a log line

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

import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass

from .. import safeio
from ..envelope import Envelope, parse_path
from ..errors import AddressError, CorruptQueueFileError, SpoolError
from ..queue import QueueEntry, Spool
from ..queue.queuefile import MAGIC, MAX_ENVELOPE_BYTES, MAX_TRAILER_BYTES, parse_open
from ..queue.spool import MAILDROP, STAGING, new_queue_id

log = logging.getLogger("mta_lite.pickup")

TMP_PREFIX = STAGING[MAILDROP][1]
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
BODY_TYPES = ("7BIT", "8BITMIME")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RejectedError(SpoolError):
    """A maildrop file that is not an acceptable submission; it goes to corrupt/."""


@dataclass
class PickupRun:
    picked: int = 0
    rejected: int = 0
    stale: int = 0
    more: bool = False          # MAX_FILES_PER_RUN reached: run again soon


def pickup(spool: Spool, size_limit: int, clock=time.time, limit: int = MAX_FILES_PER_RUN) -> PickupRun:
    """One pass over maildrop/; never raises for a bad file (it is logged and set aside)."""
    run = PickupRun()
    try:
        names = sorted(os.listdir(os.path.join(spool.root, MAILDROP)))
    except FileNotFoundError:
        return run              # a spool from before maildrop/ existed: nothing submitted
    for name in names:
        if run.picked + run.rejected >= limit:
            run.more = True
            break
        if name.startswith(TMP_PREFIX):
            run.stale += _drop_if_stale(spool, name, clock())
            continue
        outcome = pickup_one(spool, name, size_limit, clock())
        run.picked += outcome == "picked"
        run.rejected += outcome == "rejected"
    return run


def pickup_one(spool: Spool, name: str, size_limit: int, now: float) -> str:
    """'picked', 'rejected' (moved to corrupt/), 'gone' or 'later' (an I/O error; retried)."""
    path = os.path.join(spool.root, MAILDROP, name)
    try:
        queue_id, uid, sender = _copy_in(spool, path, size_limit, now)
    except RejectedError as exc:
        _reject(spool, name, exc.strerror or str(exc))
        return "rejected"
    except FileNotFoundError:
        return "gone"           # withdrawn by its owner before we got to it
    except OSError as exc:
        log.error("maildrop/%s: cannot pick up, will retry: %s", _printable(name), exc)
        return "later"
    log.info("%s: uid=%d from=<%s>", queue_id, uid, sender)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:      # queued already: the next run queues it again (G3 duplicate)
        log.error("maildrop/%s: queued as %s but not removed: %s", _printable(name), queue_id, exc)
    return "picked"


def _copy_in(spool: Spool, path: str, size_limit: int, now: float) -> tuple[str, int, str]:
    """Validate the submission at `path` and queue a copy; (queue ID, owner uid, sender)."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise RejectedError(0, "not a regular file")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise RejectedError(exc.errno, f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedError(0, "not a regular file")
        if st.st_size > size_limit + ENVELOPE_HEADROOM_BYTES:
            raise RejectedError(0, f"file of {st.st_size} bytes exceeds the message size limit")
        entry = _validated(handle, path, size_limit)
        envelope = checked_envelope(entry)
        return _copy(spool, handle, entry, envelope, now), st.st_uid, envelope.sender


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
    try:
        addr = parse_path(f"<{raw}>", sender=sender, smtputf8=smtputf8)
    except AddressError as exc:
        raise RejectedError(0, f"bad {'sender' if sender else 'recipient'} {ascii(raw)}: {exc}") from None
    if addr and "@" not in addr:
        raise RejectedError(0, f"unqualified address {ascii(raw)}")
    return addr


def _copy(spool: Spool, handle, entry: QueueEntry, envelope: Envelope, now: float) -> str:
    """Queue the content, re-hashing every byte read: what is copied is what was verified."""
    writer = spool.begin(envelope, now=now, mode=COPY_FILE_MODE)
    digest = hashlib.sha256()
    handle.seek(0)
    remaining = entry.content_offset + entry.size
    try:
        while remaining:
            chunk = handle.read(min(COPY_CHUNK_BYTES, remaining))
            if not chunk:
                raise RejectedError(0, "file shrank while being copied")
            content = chunk[max(0, entry.content_offset - (handle.tell() - len(chunk))):]
            digest.update(chunk)
            if content:
                writer.write(content)
            remaining -= len(chunk)
        if digest.hexdigest() != entry.digest:
            raise RejectedError(0, "file changed while being copied")
    except (RejectedError, OSError):
        writer.abort()
        raise
    return writer.commit()


def _reject(spool: Spool, name: str, reason: str) -> None:
    """Move a bad submission (whatever it is: file, FIFO, symlink) into corrupt/."""
    src = os.path.join(spool.root, MAILDROP, name)
    dst = os.path.join(spool.root, "corrupt", new_queue_id())
    try:
        if os.path.lexists(dst):
            raise FileExistsError(dst)
        safeio.durable_rename(src, dst)
    except OSError as exc:
        log.error("maildrop/%s: rejected (%s) but cannot be moved to corrupt/: %s",
                  _printable(name), reason, exc)
        return
    log.error("maildrop/%s: rejected, moved to corrupt/%s: %s",
              _printable(name), os.path.basename(dst), reason)


def _drop_if_stale(spool: Spool, name: str, now: float) -> int:
    path = os.path.join(spool.root, MAILDROP, name)
    try:
        if now - os.lstat(path).st_mtime < STALE_TMP_S:
            return 0
        os.unlink(path)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("maildrop/%s: abandoned, cannot remove: %s", _printable(name), exc)
        return 0
    log.info("maildrop/%s: abandoned submission removed", _printable(name))
    return 1


def _printable(name: str) -> str:
    """A file name any local user chose, safe for one log line."""
    return name if name.isascii() and name.isprintable() else ascii(name)
