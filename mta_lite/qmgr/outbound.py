"""outbound — the content a delivery sends, from the queue file it verified.

    verified_content(entry, out)        a small message's Content, from its verified read
    content_for(handle, entry, out)     the smarthost.Content for one attempt

A message whose queue file was read whole when it was verified (queuefile.WHOLE_READ_BYTES)
is sent from those bytes: the queue file is not read again. Otherwise, a message under
FAST_PATH_BYTES is read whole (one read, the bytes the transaction writes
at once: small mail costs no more than before). A bigger one stays in its queue file: the
transaction reads it in chunks (smarthost/content.py). With a [rewrite] only its header
section is read and rewritten (rewrite.py); if that section does not end within
HEAD_BYTES, the message is read whole (rare: a header section of 64 KiB).
Guarantees: the file's size is checked against its trailer before anything is read (the
queue file is immutable once queued: a different size means it changed after it was
verified, G4) and raises QueueFileChangedError; every later read is checked again by
Content. The content sent is the queue file's, with From: rewritten as resolve.py says.
Must never: read a big message whole (except as said above), change the queue file, or
close the handle (the delivery owns it).
"""

from __future__ import annotations

import os
from typing import BinaryIO

from mta_lite.errors import QueueFileChangedError
from mta_lite.queue import QueueEntry
from mta_lite.queue.queuefile import encode_trailer
from mta_lite.qmgr.resolve import Outgoing
from mta_lite.qmgr.rewrite import header_fields
from mta_lite.smarthost.content import Content

# Smaller messages are read at once: the 1 KB and 20 KB paths stay as they were.
FAST_PATH_BYTES = 256 * 1024
# How much of a big message is read to find its header section for a rewrite.
HEAD_BYTES = 64 * 1024


def file_size(entry: QueueEntry) -> int:
    """The size of the queue file as verified: magic and envelope, content, trailer."""
    return entry.content_offset + entry.size + len(encode_trailer(entry.size, entry.digest))


def verified_content(entry: QueueEntry, out: Outgoing) -> Content | None:
    """The Content of a message whose queue file was read whole and verified (None if it
    was not: then content_for reads it)."""
    return None if entry.content is None else Content.of(out.content(entry.content))


def content_for(handle: BinaryIO, entry: QueueEntry, out: Outgoing) -> Content:
    """What one attempt sends of `entry`, whose queue file `handle` is open for reading."""
    expected = file_size(entry)
    size = os.fstat(handle.fileno()).st_size
    if size != expected:
        raise QueueFileChangedError(f"{entry.path}: queue file changed since it was verified "
                                    f"({size} bytes, {expected} expected)")
    if entry.size < FAST_PATH_BYTES:
        return Content.of(out.content(_read(handle, entry, entry.size)))
    if out.rewrite is None:
        return Content(b"", handle, entry.content_offset, entry.size, expected)
    head = _header_section(_read(handle, entry, HEAD_BYTES))
    if head is None:
        return Content.of(out.content(_read(handle, entry, entry.size)))
    return Content(out.content(head), handle, entry.content_offset + len(head),
                   entry.size - len(head), expected)


def _header_section(start: bytes) -> bytes | None:
    """The header section at the start of a message: its fields, up to the blank line (or
    the first line that is no field); None if it may go on past `start`."""
    whole_lines = start[:start.rfind(b"\n") + 1]
    header_end = header_fields(whole_lines)[1]
    if header_end >= len(whole_lines):
        return None
    return whole_lines[:header_end]


def _read(handle: BinaryIO, entry: QueueEntry, length: int) -> bytes:
    data = os.pread(handle.fileno(), min(length, entry.size), entry.content_offset)
    if len(data) != min(length, entry.size):
        raise QueueFileChangedError(f"{entry.path}: queue file shorter than when it was verified")
    return data
