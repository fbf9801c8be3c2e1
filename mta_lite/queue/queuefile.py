"""queuefile — the on-disk format of one queued message, and its validation.

Layout (one file per message, written once, never modified):

    MTA-LITE-QUEUE 1\\n
    {the envelope as one line of JSON: the fields of StoredEnvelope}\\n
    <content: exactly `size` bytes, CRLF line endings, not dot-stuffed>
    \\nEND <size> <sha256 hex of every byte before this trailer>\\n

Guarantees: read_queue_file() accepts a file only if the version, the envelope, the content
length, the end marker and the checksum all match (G4); anything else raises
CorruptQueueFileError, so a torn or bit-flipped file is never delivered half. A file of up to
WHOLE_READ_BYTES is read with one read() and validated in memory (the queue manager reads
each message twice, for scheduling and to verify it: the fewer system calls, the better); a
bigger one is read in chunks, never whole. With keep_content the caller gets the content it validated, so what it
sends is exactly what it checked.
Must never: trust a length or a field it has not validated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import get_type_hints

from mta_lite.envelope import Envelope
from mta_lite.errors import CorruptQueueFileError

MAGIC = b"MTA-LITE-QUEUE 1\n"
# The envelope line holds up to recipient_limit addresses of 256 bytes each, plus fields.
MAX_ENVELOPE_BYTES = 1024 * 1024
TRAILER = re.compile(rb"\nEND (\d{1,12}) ([0-9a-f]{64})\n\Z")
MAX_TRAILER_BYTES = 5 + 12 + 1 + 64 + 1
READ_CHUNK_BYTES = 64 * 1024
# Queue files up to this size are read whole (one system call); bigger ones in chunks.
WHOLE_READ_BYTES = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class StoredEnvelope(Envelope):
    """The envelope line of a queue file: the Envelope as accepted, when it arrived, and
    whether the message is a bounce. Its fields are the line's keys, their types what the
    reader accepts (_JSON_TYPES), their defaults what a file without one reads as."""

    recipients: tuple[str, ...] = ()    # immutable once queued
    arrival: float
    is_bounce: bool

    @classmethod
    def of(cls, envelope: Envelope, arrival: float, is_bounce: bool) -> StoredEnvelope:
        accepted = {f.name: getattr(envelope, f.name) for f in fields(Envelope)}
        accepted["recipients"] = tuple(envelope.recipients)
        return cls(**accepted, arrival=arrival, is_bounce=is_bounce)

    def record(self) -> dict:
        """The envelope line's JSON object: every stored field, by name."""
        return {f.name: getattr(self, f.name) for f in fields(StoredEnvelope)}


@dataclass(frozen=True, kw_only=True)
class QueueEntry(StoredEnvelope):
    """A validated queue file: its queue ID, its envelope and where its content lies."""

    queue_id: str
    path: str
    size: int
    content_offset: int
    digest: str = ""            # the trailer's sha256: lets a copier check what it copied
    # The content as validated, if the reader asked for it (a file read whole); else None.
    content: bytes | None = field(default=None, repr=False, compare=False)

    def read_content(self) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(self.content_offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise CorruptQueueFileError(f"{self.path}: content shorter than recorded")
        return data


# Fields added to the format after its first version: a file written before one of them
# existed lacks it and reads as its default. Every other field must be present.
ADDED_LATER = frozenset({"sasl_username"})
# The JSON a stored field's Python type is read from. JSON has one number type: an integer
# arrival time (a hand-made file) is accepted; a bool never counts as a number.
_JSON_TYPES = {str: str, bool: bool, float: (int, float), tuple[str, ...]: list}
_STORED = {name: _JSON_TYPES[kind] for name, kind in get_type_hints(StoredEnvelope).items()}
_REQUIRED = set(_STORED) - ADDED_LATER


def encode_header(envelope: dict) -> bytes:
    return MAGIC + json.dumps(envelope, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def encode_trailer(size: int, digest: str) -> bytes:
    return b"\nEND %d %s\n" % (size, digest.encode())


def read_queue_file(path: str, verify: bool = True, queue_id: str | None = None,
                    keep_content: bool = False) -> QueueEntry:
    """Parse and validate a queue file; verify=False skips the checksum (listing only).
    The queue ID is not inside the file: it is the file's name, unless the caller knows it.
    keep_content: a file read whole comes with its content (QueueEntry.content)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            length = os.fstat(fd).st_size
            if length <= WHOLE_READ_BYTES:
                return parse_bytes(os.read(fd, length), path, verify, queue_id, keep_content)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return parse_open(handle, path, verify, queue_id)
        finally:
            os.close(fd)
    except OSError as exc:
        if isinstance(exc, CorruptQueueFileError):
            raise
        raise CorruptQueueFileError(f"{path}: cannot read: {exc.strerror}") from None


def parse_open(handle, path: str, verify: bool = True, queue_id: str | None = None) -> QueueEntry:
    """Validate a queue file already open (binary, seekable); `path` names it in errors.
    For files opened with care (O_NOFOLLOW, fstat first), such as maildrop/ submissions."""
    if handle.read(len(MAGIC)) != MAGIC:
        raise CorruptQueueFileError(f"{path}: not a queue file of version 1")
    line = handle.readline(MAX_ENVELOPE_BYTES)
    end = handle.seek(0, 2)
    start = max(len(MAGIC) + len(line), end - MAX_TRAILER_BYTES)
    handle.seek(start)
    envelope, offset, size, digest = _layout(line, handle.read(), start, path)
    if verify and _digest(handle, offset + size) != digest:
        raise CorruptQueueFileError(f"{path}: checksum mismatch")
    return QueueEntry(queue_id=os.path.basename(path) if queue_id is None else queue_id, path=path,
                      size=size, content_offset=offset, digest=digest, **envelope)


def parse_bytes(data: bytes, path: str, verify: bool = True, queue_id: str | None = None,
                keep_content: bool = False) -> QueueEntry:
    """Validate a whole queue file given as bytes; `path` names it in errors."""
    if not data.startswith(MAGIC):
        raise CorruptQueueFileError(f"{path}: not a queue file of version 1")
    newline = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_ENVELOPE_BYTES)
    line = data[len(MAGIC):newline + 1] if newline >= 0 else data[len(MAGIC):len(MAGIC) + MAX_ENVELOPE_BYTES]
    start = max(len(MAGIC) + len(line), len(data) - MAX_TRAILER_BYTES)
    envelope, offset, size, digest = _layout(line, data[start:], start, path)
    if verify and hashlib.sha256(memoryview(data)[:offset + size]).hexdigest() != digest:
        raise CorruptQueueFileError(f"{path}: checksum mismatch")
    return QueueEntry(queue_id=os.path.basename(path) if queue_id is None else queue_id, path=path,
                      size=size, content_offset=offset, digest=digest,
                      content=data[offset:offset + size] if keep_content else None, **envelope)


def _layout(line: bytes, tail: bytes, start: int, path: str) -> tuple[dict, int, int, str]:
    """The envelope, the content's offset and size and the recorded checksum, from the
    envelope line and the file's last bytes (`tail`, read from offset `start`)."""
    if not line.endswith(b"\n"):
        raise CorruptQueueFileError(f"{path}: envelope line truncated or too long")
    envelope = _envelope(line, path)
    offset = len(MAGIC) + len(line)
    match = TRAILER.search(tail)
    if not match:
        raise CorruptQueueFileError(f"{path}: end marker missing (file truncated?)")
    size = int(match.group(1))
    if offset + size != start + match.start():
        raise CorruptQueueFileError(f"{path}: content length does not match the end marker")
    return envelope, offset, size, match.group(2).decode()


def _digest(handle, length: int) -> str:
    handle.seek(0)
    digest = hashlib.sha256()
    remaining = length
    while remaining:
        chunk = handle.read(min(READ_CHUNK_BYTES, remaining))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.hexdigest()


def _envelope(line: bytes, path: str) -> dict:
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):   # RecursionError: "[[[[...": nesting, not an envelope
        raise CorruptQueueFileError(f"{path}: envelope is not valid JSON") from None
    if not isinstance(data, dict) or not _REQUIRED <= set(data) <= set(_STORED):
        raise CorruptQueueFileError(f"{path}: envelope fields missing or unknown")
    for name, kind in _STORED.items():
        if name not in data:
            continue
        if not isinstance(data[name], kind) or (kind is not bool and isinstance(data[name], bool)):
            raise CorruptQueueFileError(f"{path}: envelope field {name} has the wrong type")
    if not data["recipients"] or not all(isinstance(r, str) and r for r in data["recipients"]):
        raise CorruptQueueFileError(f"{path}: envelope has no valid recipients")
    data["recipients"] = tuple(data["recipients"])
    try:
        # JSON has integers of any size and Python's json reads NaN and Infinity: a time
        # must be a finite float, or the queue manager's arithmetic fails later.
        data["arrival"] = float(data["arrival"])
    except OverflowError:
        data["arrival"] = math.nan
    if not math.isfinite(data["arrival"]):
        raise CorruptQueueFileError(f"{path}: envelope field arrival is not a finite time")
    return data
