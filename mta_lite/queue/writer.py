"""writer — queue IDs, and writing one new message into the queue durably.

    new_queue_id()        16 hex digits: microseconds since the epoch, then 12 random bits
    valid_queue_id(text)  whether a directory entry is a queue ID (anything else is not mail)
    QueueWriter           streams a message into a staging file (.tmp-ID in its target
                          directory), then links it to its queue ID there
                          (spool.Spool.begin() makes one)

The queue's layout (which directories, where each target is staged) is spool.py's; this
module is the writing of one file: header, body, trailer with size and SHA-256, fsync,
link. The batch steps (several writers sharing flushes) are groupcommit.py's.
Guarantees: commit() returns only after the file is complete, fsynced, linked into its
target and that directory entry synced (G1); a link never replaces an existing queue ID
(another ID is drawn); a file is created with its mode set explicitly, never through the
umask, so the reading side (another user, through the group) can always read it.
Must never: leave a staging file behind after abort() or a write error, or announce an ID
before commit() has returned.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from typing import TYPE_CHECKING

from mta_lite import safeio
from mta_lite.envelope import Envelope
from mta_lite.errors import SpoolError
from mta_lite.queue import groupcommit
from mta_lite.queue.queuefile import StoredEnvelope, encode_header, encode_trailer

if TYPE_CHECKING:
    from mta_lite.queue.spool import Spool

WRITE_BUFFER_BYTES = 64 * 1024
# Group-readable: files smtpd (user mta-smtpd) writes are read by qmgr (user mta-lite) through
# its supplementary group mta-smtpd; with one user for both the group bit changes nothing.
QUEUE_FILE_MODE = 0o640
# A message being written is target/.tmp-ID: never a queue ID, so no reader takes it.
STAGING_PREFIX = ".tmp-"

# A new queue ID is drawn again when one is taken; 12 random bits per microsecond make a
# second collision in a row practically impossible.
ID_ATTEMPTS = 5


def new_queue_id(rng: random.Random | None = None, now: float | None = None) -> str:
    """16 hex digits: microseconds since the epoch, then 12 random bits; sorts by arrival."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:013X}{(rng or random).getrandbits(12):03X}"


def valid_queue_id(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789ABCDEF" for c in text)


class QueueWriter:
    """Streams one new message into a staging file and commits it durably into `target`.

    target "incoming" (smtpd, bounces, pickup) or "maildrop" (sendmail, any local user, who
    may create files there and nowhere else in the spool). The file is staged as
    target/.tmp-ID and linked to target/ID: one directory per message, not two, so the
    journal commits that make it durable carry one directory block fewer (on an SD card,
    fewer bytes written per message). Spool.begin() makes one.
    """

    def __init__(self, spool: Spool, envelope: Envelope, is_bounce: bool, now: float, *,
                 target: str, mode: int = QUEUE_FILE_MODE) -> None:
        self.spool, self.target = spool, target
        self.final = ""                     # the name in `target`, once linked
        self._now = now
        self.size = 0
        self._digest = hashlib.sha256()
        header = encode_header(StoredEnvelope.of(envelope, now, is_bounce).record())
        self._file = self._create(mode)     # sets queue_id and path
        spool.writers.add(self)
        self._put(header)
        self.size = 0

    def _create(self, mode: int):
        try:
            fd = self._open_new(mode)
        except OSError as exc:
            raise SpoolError(exc.errno, f"cannot create queue file: {exc.strerror}") from None
        try:
            # Explicitly, not through the umask: the reader (qmgr) may be another user who
            # reads through the group, and a submitter's umask 077 must not hide the file.
            os.fchmod(fd, mode)
            return os.fdopen(fd, "wb", buffering=WRITE_BUFFER_BYTES)
        except OSError as exc:
            os.close(fd)
            safeio.unlink_quietly(self.path)
            raise SpoolError(exc.errno, f"cannot create queue file: {exc.strerror}") from None

    def _open_new(self, mode: int) -> int:
        """Create the staging file under a fresh queue ID (another one if that is taken)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for attempt in range(ID_ATTEMPTS):
            self.queue_id = new_queue_id(now=self._now)
            self.path = os.path.join(self.spool.root, self.target, STAGING_PREFIX + self.queue_id)
            try:
                return os.open(self.path, flags, mode)
            except FileExistsError:
                if attempt + 1 == ID_ATTEMPTS:
                    raise

    def _put(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise SpoolError(exc.errno, f"queue file write error: {exc.strerror}") from None
        self._digest.update(data)
        self.size += len(data)

    def write(self, chunk: bytes) -> None:
        self._put(chunk)

    def commit(self) -> str:
        """Trailer, fsync, link into the target, sync that entry; then the ID is safe to
        announce. The steps are groupcommit.commit_batch's, here for one message."""
        result = groupcommit.commit_batch([self])[0]
        if isinstance(result, OSError):
            raise groupcommit.refusal(result)
        return result

    def finish(self) -> None:
        """The trailer, and everything buffered handed to the kernel."""
        self._file.write(encode_trailer(self.size, self._digest.hexdigest()))
        self._file.flush()

    def fileno(self) -> int:
        # The file stays open until release(): syncfs() needs a descriptor on the file system.
        return self._file.fileno()

    def link(self) -> None:
        self.final = self._link()

    def release(self) -> None:
        """After the commit: the staging name goes, the file stays under its final name."""
        self._close()
        safeio.unlink_quietly(self.path)

    def _link(self) -> str:
        """link() into the target: unlike rename(), never replaces an existing ID. The ID is
        not inside the file, so a taken one (same microsecond, same 12 random bits: likely
        only with a frozen test clock) is simply replaced by another."""
        for _ in range(ID_ATTEMPTS - 1):
            try:
                return self._link_once()
            except FileExistsError:
                self.queue_id = new_queue_id(now=self._now)
        return self._link_once()

    def _link_once(self) -> str:
        final = os.path.join(self.spool.root, self.target, self.queue_id)
        os.link(self.path, final)
        return final

    def _close(self) -> None:
        self.spool.writers.discard(self)
        try:
            self._file.close()
        except OSError:
            pass    # nothing is buffered any more: flushed and fsynced above, or abandoned

    def abort(self) -> None:
        self._close()
        safeio.unlink_quietly(self.path)
