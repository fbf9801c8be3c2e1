"""console_lines — the serial console's line framing: bytes in, lines out, and back.

    reader = LineReader()
    reader.feed(data)       bytes as they arrive (any chunking) -> the lines they complete;
                            a line over MAX_LINE_BYTES comes out as None (it is noise)
    printable(line)         whether a line holds printable ASCII only
    ascii_line(text)        one reply line: printable ASCII plus CRLF

CR, LF or CRLF ends a line (the LF of a CRLF ends an empty line, which the session ignores).
What the lines mean (commands, uploads, noise replies) is console_protocol.py's.
Guarantees: the same bytes give the same lines however they are chunked; the reader never
holds more than MAX_LINE_BYTES of an unfinished line (the rest of a long one is dropped as
it comes); every reply line is printable ASCII ended by CRLF, whatever text it is given.
SECURITY: every byte is untrusted (GUARANTEES C3); nothing here interprets a line.
Must never: raise on any input, or let a line grow past the cap in memory.
"""

from __future__ import annotations

import re

# A command is a few dozen bytes; a DATA line is "DATA " + console_upload.DATA_CHUNK_BYTES of
# base64 (768 characters). The cap bounds what one line can hold in memory; longer lines are noise.
MAX_LINE_BYTES = 1024

_EOL = re.compile(rb"[\r\n]")
_PRINTABLE = re.compile(rb"[ -~]*")


class LineReader:
    """The unfinished line between feed() calls (see the module docstring)."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._too_long = False

    def feed(self, data: bytes) -> list[bytes | None]:
        lines: list[bytes | None] = []
        pos = 0
        while (match := _EOL.search(data, pos)) is not None:
            self._take(data[pos:match.start()])
            pos = match.end()
            lines.append(None if self._too_long else bytes(self._line))
            self._line.clear()
            self._too_long = False
        self._take(data[pos:])
        return lines

    def _take(self, chunk: bytes) -> None:
        if self._too_long:
            return
        if len(self._line) + len(chunk) > MAX_LINE_BYTES:
            self._too_long = True       # discard up to the end of the line
            self._line.clear()
            return
        self._line += chunk


def printable(line: bytes) -> bool:
    return _PRINTABLE.fullmatch(line) is not None


def ascii_line(text: str) -> bytes:
    """One reply line: printable ASCII (anything else as a backslash escape) plus CRLF."""
    if not text.isascii() or not text.isprintable():
        text = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)
    return text.encode("ascii") + b"\r\n"
