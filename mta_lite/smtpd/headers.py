"""headers — add the Date:, Message-ID: and From: a device left out, at queue time (pure).

MissingHeaders sits between the DATA reader and the queue file for the clients whose mail
we may complete: clients in mynetworks and logged-in users (Postfix `always_add_missing_headers
= no` with `local_header_rewrite_clients = permit_mynetworks, permit_sasl_authenticated`;
local `sendmail` adds its own, see commands/sendmail.py). It passes complete CRLF lines
through, holding only the header section (at most MAX_HEADER_SCAN_BYTES) until it ends, then
writes the missing fields after the last header line:

    Date:        the arrival time (the same instant as our Received: line)
    Message-ID:  <YYYYMMDDhhmmss.QUEUEID@hostname>, as Postfix's cleanup makes it
    From:        the envelope sender (MAILER-DAEMON@hostname for the null sender)

Why at queue time and not at delivery: the queue file then holds the message as it will
leave, so every retry (G3 may deliver twice) carries the same Message-ID and Date, each
addition is logged once with the queue ID, and qmgr needs no knowledge of who the client was.
Guarantees: nothing else changes: no header is dropped, reordered or rewritten, and the body
is untouched, except that a message whose first line is neither a header field nor empty gets
the empty line that separates the added fields from it (RFC 5322 section 2.1). A header
section longer than MAX_HEADER_SCAN_BYTES is passed on unchanged, nothing added.
SECURITY: handles untrusted bytes; the added fields hold only our hostname, the queue ID, a
date and the envelope sender, which smtpd parsed and validated (no CR, LF or control).
Must never: add a field that is present (in any letter case), or emit a line twice.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import format_datetime

# Postfix header_size_limit (102400): a header section longer than this is not ours to judge.
MAX_HEADER_SCAN_BYTES = 102_400
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_CRLF = b"\r\n"


def message_id(queue_id: str, date: datetime, hostname: str) -> str:
    """Postfix's form: <arrival time.queue ID@myhostname>, unique per queue file."""
    return f"<{date.strftime('%Y%m%d%H%M%S')}.{queue_id}@{hostname}>"


class MissingHeaders:
    """Feed complete CRLF lines with feed(); finish() at the end of data. `added` lists the
    fields written, for the log."""

    def __init__(self, *, queue_id: str, date: datetime, hostname: str, sender: str) -> None:
        self.queue_id, self.date, self.hostname, self.sender = queue_id, date, hostname, sender
        self.added: list[str] = []
        self._held = bytearray()       # the header section so far (complete lines)
        self._seen: set[bytes] = set()  # field names seen, lower-cased
        self._done = False             # the header section ended (or was too long)

    def feed(self, data: bytes) -> bytes:
        """Bytes to write now: nothing while the header section is still being read."""
        if self._done:
            return data
        start = 0
        while start < len(data):
            end = data.find(b"\n", start) + 1 or len(data)
            line = data[start:end]
            if not self._is_header_line(line):
                return self._flush(separate=line != _CRLF) + data[start:]
            self._held += line
            start = end
            if len(self._held) > MAX_HEADER_SCAN_BYTES:
                self._done = True
                return bytes(self._held) + data[start:]
        return b""

    def finish(self) -> bytes:
        """At the end of data: what is still held (a message that is all header)."""
        return b"" if self._done else self._flush(separate=False)

    def _is_header_line(self, line: bytes) -> bool:
        if line[:1] in (b" ", b"\t"):
            return bool(self._held)    # a continuation, unless nothing came before it
        match = _FIELD.match(line)
        if match is None:
            return False
        self._seen.add(match.group(1).lower())
        return True

    def _flush(self, separate: bool) -> bytes:
        self._done = True
        fields = self._missing()
        self.added = [field.split(":", 1)[0] for field in fields]
        extra = b"".join(field.encode("utf-8") + _CRLF for field in fields)
        gap = _CRLF if extra and separate else b""
        return bytes(self._held) + extra + gap

    def _missing(self) -> list[str]:
        fields = []
        if b"date" not in self._seen:
            fields.append(f"Date: {format_datetime(self.date)}")
        if b"message-id" not in self._seen:
            fields.append(f"Message-ID: {message_id(self.queue_id, self.date, self.hostname)}")
        if b"from" not in self._seen:
            fields.append(f"From: {self.sender or 'MAILER-DAEMON@' + self.hostname}")
        return fields
