"""content — a message to send: in memory, or its head in memory and the rest in its queue file.

    Content.of(data)                          a message in memory (small ones, DSNs, tests)
    Content(head, file, offset, length)       `head` in memory (the whole header section, as
                                              rewritten), then `length` bytes of the open
                                              queue file from `offset`, read in chunks

facts() scans the message once in chunks for what MAIL FROM needs (esmtp.ContentFacts);
pieces() yields it in chunks of at most CHUNK_BYTES for DataEncoder, so the queue manager
holds a chunk of a big message at a time, never the whole. The file is read with pread at
absolute offsets: no shared file position, so several transactions of one message (one per
recipient_limit) can each read it.
Guarantees: every read checks what it got; a file shorter than recorded, or a size other
than `file_size` (the file as verified, G4), raises QueueFileChangedError and nothing more is
yielded, so a changed file is never sent as if whole (the caller aborts before the final dot).
Must never: read the file whole (whole() excepted: the rare 7-bit downgrade), or close a file
it did not open (the queue manager owns it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mta_lite.errors import QueueFileChangedError
from mta_lite.smarthost.esmtp import ContentFacts, Scan, facts_of

# One read from the queue file and one write to the connection at a time.
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Content:
    """A message to send (see the module docstring); file None: `head` is all of it."""

    head: bytes
    file: BinaryIO | None = None
    offset: int = 0
    length: int = 0
    file_size: int = -1             # the file's size as verified; -1: not checked

    @classmethod
    def of(cls, data: bytes) -> Content:
        return cls(data)

    @property
    def size(self) -> int:
        return len(self.head) + self.length

    @property
    def in_memory(self) -> bool:
        return self.file is None

    def facts(self) -> ContentFacts:
        if self.in_memory:
            return facts_of(self.head)
        scan = Scan()
        for piece in self.pieces():
            scan.feed(piece)
        return scan.facts()

    def pieces(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The message in order: the head, then the file's part chunk by chunk."""
        if self.head:
            yield self.head
        if self.file is None:
            return
        self.check_size()
        position, end = self.offset, self.offset + self.length
        while position < end:
            piece = os.pread(self.file.fileno(), min(chunk_bytes, end - position), position)
            if not piece:
                raise QueueFileChangedError(f"{self.file.name}: queue file shorter than when it was verified")
            position += len(piece)
            yield piece

    def whole(self) -> bytes:
        """All of it in memory: only for the 7-bit downgrade of an 8-bit message (rare)."""
        return self.head if self.in_memory else b"".join(self.pieces())

    def check_size(self) -> None:
        if self.file is not None and self.file_size >= 0:
            size = os.fstat(self.file.fileno()).st_size
            if size != self.file_size:
                raise QueueFileChangedError(f"{self.file.name}: queue file changed since it was verified "
                                            f"({size} bytes, {self.file_size} expected)")
