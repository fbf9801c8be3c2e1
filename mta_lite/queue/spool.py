"""spool — the queue directories, writing new messages, and moving them between states.

    incoming/   accepted (250 sent), not yet moved into active/ by the queue manager;
                also .tmp-ID, a message being written (never acknowledged: purged once
                it is older than any writer can take, see purge_staging())
    active/     being delivered right now
    deferred/   waiting for their next attempt
    hold/       held by the administrator; never delivered until released
    corrupt/    files that failed validation; kept for a human, never deleted
    state/      ID.json per message: attempts, next attempt, last error, and the
                per-recipient results already recorded (G3)
    public/     the queue manager's doorbell socket and the status file
    postscreen/ smtpd's postscreen pass cache (not queue entries; only smtpd writes here)
    maildrop/   submissions by local users (sendmail); untrusted until qmgr's pickup
                has validated and copied them into incoming/ (see qmgr/pickup.py)

Who may do what in each directory when started as root: see perms.py. Writing one new
message (QueueWriter) and the queue IDs are writer.py's.
Guarantees: QueueWriter.commit() returns only after the file is complete, fsynced, linked
into its target and that directory entry synced (G1). A state change is one rename().
Recovery purges unfinished .tmp- files, returns active/ to incoming/ and quarantines invalid files (G4); it
never touches maildrop/, whose files are not queue entries yet.
Must never: delete a message that was not delivered, bounced or deleted on purpose.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

from mta_lite import maillog, safeio
from mta_lite.envelope import Envelope
from mta_lite.errors import CorruptQueueFileError, QueueIdError
from mta_lite.queue import groupcommit
from mta_lite.queue.queuefile import QueueEntry, read_queue_file
# QueueWriter and the queue ID functions are writer.py's; their names stay importable from here.
from mta_lite.queue.writer import (QUEUE_FILE_MODE, STAGING_PREFIX, WRITE_BUFFER_BYTES,  # noqa: F401
                                   QueueWriter, new_queue_id, valid_queue_id)

log = logging.getLogger("mta_lite.queue")

STATES = ("incoming", "active", "deferred", "hold")
MAILDROP = "maildrop"
DIRS = (*STATES, "corrupt", "state", "public", MAILDROP, "postscreen")
STATE_FILE_MODE = 0o644
# The directories QueueWriter writes new messages into (each staged there as .tmp-ID).
TARGETS = ("incoming", MAILDROP)


# Why a deferred message waits, beyond the ordinary backoff after a failure.
WAIT_AUTH = "auth"                  # its account's login was refused (paused, S5)
WAIT_UNREACHABLE = "unreachable"    # its smarthost did not answer (paused, probe first)
WAIT_BUDGET = "budget"              # its account's budget is used up: it waits for its slot alone
WAIT_CLOCK = "clock"                # the system clock is not set: its certificate check waits for it


@dataclass
class MessageState:
    """What the queue manager knows about a message beyond its immutable file."""

    queue_id: str
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    done: dict[str, str] = field(default_factory=dict)   # recipient -> "sent" | "bounced"
    wait: str = ""      # what holds it back, as data: WAIT_AUTH, WAIT_UNREACHABLE, WAIT_BUDGET, WAIT_CLOCK, "" backoff

    def pending(self, recipients) -> list[str]:
        return [r for r in recipients if r not in self.done]


def _older_than(path: str, cutoff: float) -> bool:
    try:
        return os.lstat(path).st_mtime < cutoff
    except OSError:
        return False


class Spool:
    """The queue directories under one root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._group: groupcommit.GroupCommit | None = None
        self.writers: set[QueueWriter] = set()      # begun, not yet committed or aborted

    def ensure(self) -> "Spool":
        for name in DIRS:
            os.makedirs(os.path.join(self.root, name), mode=0o700, exist_ok=True)
        return self

    def path(self, state: str, queue_id: str) -> str:
        return os.path.join(self.root, state, queue_id)

    @property
    def doorbell_path(self) -> str:
        return os.path.join(self.root, "public", "qmgr")

    def free_bytes(self) -> int:
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def begin(self, envelope: Envelope, is_bounce: bool = False, now: float | None = None, *,
              target: str = "incoming", mode: int = QUEUE_FILE_MODE) -> QueueWriter:
        """A writer for one new message; see QueueWriter for `target` and `mode`."""
        if target not in TARGETS:
            raise ValueError(f"cannot write queue files into {target}/")
        return QueueWriter(self, envelope, is_bounce, time.time() if now is None else now,
                           target=target, mode=mode)

    async def commit_async(self, writer: QueueWriter) -> str:
        """commit() in an event loop: sessions that finish together share flushes."""
        self._group = self._group or groupcommit.GroupCommit(lambda: len(self.writers))
        return await self._group.commit(writer)

    def enqueue(self, envelope: Envelope, content: bytes, is_bounce: bool = False) -> str:
        """Queue a message given whole (bounces, sendmail): same durability as SMTP."""
        writer = self.begin(envelope, is_bounce)
        writer.write(content)
        return writer.commit()

    # -------------------------------------------------------------- lookups
    def list(self, state: str) -> list[str]:
        try:
            names = os.listdir(os.path.join(self.root, state))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if valid_queue_id(n))

    def locate(self, queue_id: str, likely: str | None = None) -> str | None:
        """The state the message is in (the `likely` one is looked at first); None if gone."""
        for state in (likely, *STATES) if likely else STATES:
            if os.path.exists(self.path(state, queue_id)):
                return state
        return None

    def read(self, state: str, queue_id: str, verify: bool = True,
             keep_content: bool = False) -> QueueEntry:
        return read_queue_file(self.path(state, queue_id), verify, queue_id, keep_content)

    # -------------------------------------------------------------- state changes
    def move(self, queue_id: str, src: str, dst: str, durable: bool = True) -> bool:
        """Move a message between states; False if it is no longer in `src`.

        durable=False skips the directory fsyncs. The queue manager uses it for its own
        moves (incoming -> active -> deferred): if a power cut loses such a rename, the
        file is simply found in its previous state and tried again, so nothing is lost,
        and the hot path saves three directory fsyncs per message.
        """
        try:
            if durable:
                safeio.durable_rename(self.path(src, queue_id), self.path(dst, queue_id))
            else:
                os.rename(self.path(src, queue_id), self.path(dst, queue_id))
        except FileNotFoundError:
            return False
        return True

    def remove(self, queue_id: str, state: str | None = None, durable: bool = True) -> bool:
        """Delete a message and its state file (delivered, bounced or deleted on purpose).

        durable=False (after a delivery) skips the directory fsync: a power cut within the
        file system's commit interval may bring the message back and send it again, the
        at-least-once side of G3; a kill -9 cannot, the unlink is in the kernel already.
        """
        state = state or self.locate(queue_id)
        if state is None:
            return False
        try:
            os.unlink(self.path(state, queue_id))
        except FileNotFoundError:
            return False
        if durable:
            safeio.fsync_dir(os.path.join(self.root, state))
        self._unlink_state(queue_id)
        return True

    def quarantine(self, queue_id: str, state: str, reason: str) -> None:
        """An invalid queue file into corrupt/ under its queue ID, with a log line (G4)."""
        maillog.corrupt(queue_id, reason)
        self.set_aside(state, queue_id)

    def set_aside(self, directory: str, name: str, new_name: str = "") -> str:
        """Move a file that failed validation into corrupt/, durably: kept for a human, never
        deleted. `new_name` (a fresh queue ID) replaces a name someone else chose, such as a
        maildrop/ submission's; it never replaces a file already in corrupt/. Returns the
        file's name in corrupt/."""
        kept = new_name or name
        if new_name and os.path.lexists(self.path("corrupt", kept)):
            raise FileExistsError(errno.EEXIST, "name taken in corrupt/", self.path("corrupt", kept))
        safeio.durable_rename(self.path(directory, name), self.path("corrupt", kept))
        return kept

    # -------------------------------------------------------------- per-message state
    def load_state(self, queue_id: str) -> MessageState:
        try:
            with open(self._state_path(queue_id), "rb") as handle:
                data = json.load(handle)
            return MessageState(queue_id=queue_id, attempts=int(data["attempts"]),
                                next_attempt=float(data["next_attempt"]),
                                last_error=str(data["last_error"]), done=dict(data["done"]),
                                wait=str(data.get("wait", "")))       # files from before it: ""
        except FileNotFoundError:
            return MessageState(queue_id)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The state file is an optimisation over the message; losing it means a
            # retry too early and maybe a duplicate for recipients already done, not a loss.
            log.warning("%s: unreadable state file ignored: %s", queue_id, exc)
            return MessageState(queue_id)

    def save_state(self, state: MessageState) -> None:
        data = asdict(state)
        del data["queue_id"]
        # 0644 in a 0700 directory: private all the same, and a state file written by root
        # (an administrator's `queue release`) stays readable for qmgr running as mta-lite.
        safeio.atomic_write(self._state_path(state.queue_id), json.dumps(data).encode(),
                            mode=STATE_FILE_MODE)

    def _unlink_state(self, queue_id: str) -> None:
        """Remove a message's state file if it has one; failing to is an error, not quiet."""
        try:
            os.unlink(self._state_path(queue_id))
        except FileNotFoundError:
            pass

    def _state_path(self, queue_id: str) -> str:
        return os.path.join(self.root, "state", queue_id + ".json")

    # -------------------------------------------------------------- start-up
    def staged(self) -> list[str]:
        """The .tmp- files in incoming/: messages being written, or left by a dead writer."""
        try:
            names = os.listdir(os.path.join(self.root, "incoming"))
        except FileNotFoundError:
            return []
        return sorted(name for name in names if name.startswith(STAGING_PREFIX))

    def purge_staging(self, older_than_s: float | None = None, now: float | None = None) -> int:
        """Remove .tmp- files a dead writer left in incoming/: never acknowledged, so never owed.

        smtpd and the queue manager (bounces, pickup copies) both write there. With
        older_than_s, only files older than any write can take (an SMTP session's limit), never a
        live one: each side calls it at its start so; in the root layout incoming/ is sticky,
        so smtpd cannot remove the queue manager's files anyway. Without (a single process, or
        tests), every staged file goes.
        """
        cutoff = None if older_than_s is None else (time.time() if now is None else now) - older_than_s
        purged = 0
        for name in self.staged():
            path = os.path.join(self.root, "incoming", name)
            if cutoff is not None and not _older_than(path, cutoff):
                continue
            safeio.unlink_quietly(path)
            purged += 1
        return purged

    def recover(self, purge_staging: bool = True) -> dict[str, int]:
        """Purge unfinished .tmp- files (unless the receiver may be writing), put active/
        back to incoming/, quarantine invalid files (G4)."""
        counts = {"purged": self.purge_staging() if purge_staging else 0, "requeued": 0, "corrupt": 0}
        for queue_id in self.list("active"):
            self.move(queue_id, "active", "incoming")
            counts["requeued"] += 1
        for state in STATES:
            for queue_id in self.list(state):
                try:
                    read_queue_file(self.path(state, queue_id))
                except CorruptQueueFileError as exc:
                    self.quarantine(queue_id, state, str(exc))
                    counts["corrupt"] += 1
        self._drop_orphan_states()
        return counts

    def _drop_orphan_states(self) -> None:
        for name in os.listdir(os.path.join(self.root, "state")):
            queue_id = name.removesuffix(".json")
            if name.endswith(".json") and valid_queue_id(queue_id) and not self.locate(queue_id):
                self._unlink_state(queue_id)

    def require(self, queue_id: str) -> str:
        """The state of a message, or QueueIdError naming the ID."""
        state = self.locate(queue_id) if valid_queue_id(queue_id) else None
        if state is None:
            raise QueueIdError(f"{queue_id}: no such message in the queue")
        return state
