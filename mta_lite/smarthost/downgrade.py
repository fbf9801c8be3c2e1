"""downgrade — 8-bit MIME parts made 7-bit for a smarthost without 8BITMIME, as Postfix does (pure).

to_7bit(content) returns the message with every MIME leaf part whose Content-Transfer-Encoding
is "8bit" and whose body is not ASCII re-encoded as quoted-printable (RFC 2045 section 6.7),
its Content-Transfer-Encoding field replaced by `quoted-printable`; a multipart or message/rfc822
entity labelled "8bit" is relabelled "7bit" once its parts are converted. This is Postfix's
output conversion (`disable_mime_output_conversion = no`, mime_state's downgrade) for a
server that did not announce 8BITMIME (RFC 6152 section 3).

What it leaves alone, as Postfix does: a message without MIME-Version (plain 7-bit text by
RFC 2045's default, so there is nothing declared to convert: it goes as it is), parts in
base64, quoted-printable or "binary", 8-bit bytes in header fields (only SMTPUTF8 makes those
legal; esmtp.plan_mail refuses mail that needs it with 5.6.7), and entities nested deeper
than MAX_MIME_DEPTH. Decoding the quoted-printable yields the original bytes exactly.
Guarantees: nothing but the converted bodies and their Content-Transfer-Encoding fields
changes; line endings stay CRLF; the result is ASCII wherever a conversion was made.
Must never: guess a charset, touch a header other than Content-Transfer-Encoding, or drop a byte.
"""

from __future__ import annotations

import binascii
import re

# Postfix mime_nesting_limit is 100; a home office's mail nests a few levels at most, and the
# recursion depth must stay bounded whatever a sender builds.
MAX_MIME_DEPTH = 20
_CRLF = b"\r\n"
_FIELD_START = re.compile(rb"^(?![ \t])", re.M)
_CTE = re.compile(rb"content-transfer-encoding[ \t]*:", re.I)
_CTYPE = re.compile(rb"content-type[ \t]*:[ \t]*([!#-'*+.0-9A-Z^-~-]+)/([!#-'*+.0-9A-Z^-~-]+)(.*)", re.I | re.S)
_BOUNDARY = re.compile(rb';[ \t\r\n]*boundary[ \t]*=[ \t]*(?:"([^"\r\n]+)"|([^; \t\r\n]+))', re.I)


def to_7bit(content: bytes) -> bytes:
    """The message with its declared-8bit MIME parts in quoted-printable (see the docstring)."""
    head, sep, body = _split(content)
    if not re.search(rb"^mime-version[ \t]*:", head, re.I | re.M):
        return content
    return _entity(head, sep, body, depth=0)


def _split(entity: bytes) -> tuple[bytes, bytes, bytes]:
    """(header section including its last CRLF, the empty line, body)."""
    if entity.startswith(_CRLF):
        return b"", _CRLF, entity[2:]
    head, sep, body = entity.partition(b"\r\n\r\n")
    return (head + _CRLF, _CRLF, body) if sep else (entity, b"", b"")


def _fields(head: bytes) -> list[bytes]:
    """Header fields, each with its folded continuation lines and CRLFs."""
    return [field for field in _FIELD_START.split(head) if field]


def _entity(head: bytes, sep: bytes, body: bytes, depth: int) -> bytes:
    fields = _fields(head)
    cte = next((f for f in fields if _CTE.match(f)), None)
    encoding = cte.split(b":", 1)[1].strip().lower() if cte else b"7bit"
    ctype = next((m for f in fields if (m := _CTYPE.match(f))), None)
    major = ctype.group(1).lower() if ctype else b"text"
    if depth >= MAX_MIME_DEPTH:
        return head + sep + body
    if major == b"multipart" and ctype is not None:
        boundary = _BOUNDARY.search(ctype.group(3))
        if boundary is None:
            return head + sep + body
        body = _multipart(body, boundary.group(1) or boundary.group(2), depth)
        return _relabel(fields, cte, b"7bit" if encoding == b"8bit" else None) + sep + body
    if major == b"message" and ctype.group(2).lower() == b"rfc822":
        inner = _split(body)
        return _relabel(fields, cte, b"7bit" if encoding == b"8bit" else None) + sep + _entity(*inner, depth + 1)
    if encoding != b"8bit" or body.isascii():
        return head + sep + body
    return _relabel(fields, cte, b"quoted-printable") + sep + _quoted_printable(body)


def _multipart(body: bytes, boundary: bytes, depth: int) -> bytes:
    """Each part between `--boundary` lines converted; preamble and epilogue untouched."""
    delimiter = re.compile(rb"(^--" + re.escape(boundary) + rb"(?:--)?[ \t]*\r\n?)", re.M)
    pieces = delimiter.split(body)
    out = [pieces[0]]                   # the preamble
    closed = False
    for i in range(1, len(pieces), 2):
        out.append(pieces[i])
        part = pieces[i + 1]
        if closed:
            out.append(part)            # the epilogue
            continue
        closed = pieces[i].rstrip().endswith(b"--")
        if closed:
            out.append(part)
            continue
        # The CRLF before the next delimiter belongs to the delimiter (RFC 2046 section 5.1.1).
        text, tail = (part[:-2], _CRLF) if part.endswith(_CRLF) else (part, b"")
        out.append(_entity(*_split(text), depth + 1) + tail)
    return b"".join(out)


def _relabel(fields: list[bytes], cte: bytes | None, value: bytes | None) -> bytes:
    """The header with Content-Transfer-Encoding set to `value` (None: unchanged)."""
    if value is None or cte is None:
        return b"".join(fields)
    return b"".join(b"Content-Transfer-Encoding: " + value + _CRLF if f is cte else f for f in fields)


def _quoted_printable(body: bytes) -> bytes:
    """RFC 2045 quoted-printable with CRLF line ends: soft breaks at 76, trailing space encoded."""
    lines = body.split(_CRLF)
    encoded = [binascii.b2a_qp(line, istext=False, header=False).replace(b"=\n", b"=\r\n") for line in lines]
    return _CRLF.join(encoded)
