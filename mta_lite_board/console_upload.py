"""console_upload — a config upload over the serial console: declared, sent in parts, checked.

    CONFIG BEGIN <size>       begin(args, now) -> (Upload, "OK send ...") or (None, "ERR ...")
    DATA <base64>             add(upload, args, now) -> (None, "OK n of size") or (why dropped, "ERR ...")
    CONFIG COMMIT <sha256>    verify(upload, args) -> None when whole and matching, else a Refusal

The session around it (which line drops an upload, the idle limit, the log lines, installing
through configgen) is console_protocol.py's; this module is the upload's own rules.
Guarantees: an upload never grows past the size its sender declared (at most
configgen.MAX_CONFIG_BYTES); verify() passes only bytes whose size and SHA-256 are the ones
declared, so a line that lost or garbled a part changes nothing. Pure: no I/O, no clock (the
caller passes `now`).
SECURITY: every argument is untrusted (GUARANTEES C3): sizes, base64 and digests are checked
against fixed forms before use, and no reply repeats what the sender sent.
Must never: raise on any input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from mta_lite.config.generations import MAX_CONFIG_BYTES

# The provisioning client's DATA chunk: 576 bytes are 768 base64 characters, well under the
# console's line cap (console_lines.MAX_LINE_BYTES).
DATA_CHUNK_BYTES = 576
# An upload that gets no line for this long is dropped: the sender is gone, and the next
# user of the console must not find half an upload waiting.
UPLOAD_IDLE_S = 60.0
UPLOAD_SOURCE = "console upload"

_SIZE = re.compile(r"[0-9]{1,9}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass
class Upload:
    """An upload in progress: its declared size, the bytes so far, when the last part came."""

    size: int
    last_s: float
    data: bytearray = field(default_factory=bytearray)

    def idle(self, now: float) -> bool:
        return now - self.last_s >= UPLOAD_IDLE_S


@dataclass(frozen=True)
class Refusal:
    """Why a COMMIT installs nothing: the line for the box's log, the reply for the sender."""

    log: str
    reply: str


def begin(args: list[str], now: float) -> tuple[Upload | None, str]:
    """CONFIG BEGIN <size>: the new upload and its OK, or None and the ERR reply."""
    if len(args) != 1 or not _SIZE.fullmatch(args[0]):
        return None, "ERR usage: CONFIG BEGIN <size>"
    size = int(args[0])
    if not 1 <= size <= MAX_CONFIG_BYTES:
        return None, f"ERR size must be 1 to {MAX_CONFIG_BYTES} bytes"
    return Upload(size, now), f"OK send {size} bytes as base64 lines"


def add(upload: Upload, args: list[str], now: float) -> tuple[str | None, str]:
    """DATA <base64>: (None, the OK) with the part added, or (why the upload must be dropped,
    the ERR reply) with the upload unchanged."""
    try:
        chunk = base64.b64decode(args[0], validate=True) if len(args) == 1 else None
    except (binascii.Error, ValueError):
        chunk = None
    if not chunk:
        return "bad DATA line", "ERR upload dropped: DATA takes one word of base64"
    if len(upload.data) + len(chunk) > upload.size:
        return "more data than declared", f"ERR upload dropped: more than the {upload.size} bytes declared"
    upload.data += chunk
    upload.last_s = now
    return None, f"OK {len(upload.data)} of {upload.size} bytes"


def verify(upload: Upload, args: list[str]) -> Refusal | None:
    """CONFIG COMMIT <sha256>: None when the upload is whole and has that SHA-256."""
    if len(args) != 1 or not _SHA256_HEX.fullmatch(args[0]):
        return Refusal(f"console: upload of {upload.size} bytes dropped: bad COMMIT line",
                       "ERR upload dropped: usage: CONFIG COMMIT <sha256-hex>")
    if len(upload.data) != upload.size:
        return _corrupted(f"received {len(upload.data)} of {upload.size} bytes")
    if hashlib.sha256(upload.data).hexdigest() != args[0].lower():
        return _corrupted("SHA-256 does not match")
    return None


def _corrupted(problem: str) -> Refusal:
    return Refusal(f"console: upload rejected: {problem}", f"ERR upload corrupted: {problem}; nothing changed")
