"""rewrite — a message's From: rewritten to the identity it leaves with, on the bytes sent (pure).

The queue file stays as received. When resolve.py finds that a message leaves under another
identity ([rewrite]; its envelope sender and route are chosen there), the content sent is
changed here:

    From: field(s)    each is renamed X-Original-From:, its value kept byte for byte
                      (folding, comments and encoded words included); one new
                      `From: <identity>` takes the place of the first. Several From:
                      fields (RFC 5322 allows one) all become X-Original-From:, so the
                      message leaves with exactly one From:, ours.
    no From: at all   one is added after the last header field

The new From: keeps the original's display name (`Cron Daemon <root@pi>` -> `Cron Daemon
<admin@example.com>`, an encoded word stays encoded) unless the rule gives one
("Office Scanner <scanner@example.com>"); a display name it cannot parse is left out.
Nothing else changes: not the body, no other header, no line ending. The null sender
(bounces) is never rewritten.
Must never: touch the body, drop or reorder a header, or write any line besides the new From:.
"""

from __future__ import annotations

import base64
import re

from mta_lite.identity import Identity

# RFC 5322 section 2.1.1: a line is at most 998 octets plus CRLF.
MAX_HEADER_LINE_BYTES = 998
# RFC 2047 section 2: an encoded word is at most 75 characters; 45 bytes encode to 60.
ENCODED_WORD_BYTES = 45
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_FROM_NAME = re.compile(rb"from(?=[ \t]*:)", re.IGNORECASE)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_WORD = rb'(?:"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\r\n])*"|[A-Za-z0-9!#$%&\'*+/=?^_`{|}~.\x80-\xff-]+)'
_PHRASE = re.compile(_WORD + rb"(?:[ \t]+" + _WORD + rb")*")
_NAME_ADDR = re.compile(rb"(.*?)[ \t]*<[^<>]*>", re.DOTALL)
_ADDR_COMMENT = re.compile(rb"[^\s<>()\"]+[ \t]*\(([^()\\\"\x00-\x1f\x7f]*)\)")
_ATEXT_SPACE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")


def header_fields(content: bytes) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of each header field, continuation lines and line ends included, and the
    offset where the header section ends (its blank line, or the first line that is not a
    header field: from there on it is body, as email.parser also decides)."""
    fields: list[tuple[int, int]] = []
    pos = 0
    while pos < len(content):
        if content.startswith(b"\r\n", pos) or content.startswith(b"\n", pos):
            break
        nl = content.find(b"\n", pos)
        end = len(content) if nl < 0 else nl + 1
        if content[pos:pos + 1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], end)
        elif _FIELD_NAME.match(content, pos):
            fields.append((pos, end))
        else:
            break
        pos = end
    return fields, pos


def original_display(field: bytes) -> bytes:
    """The display name of a From: field as it is written, or b"" when there is none or it
    is not a plain phrase (a group, a list, stray brackets: better none than a broken one)."""
    value = _FOLD.sub(b"", field.split(b":", 1)[1]).strip()
    match = _NAME_ADDR.fullmatch(value)
    if match:
        display = match.group(1).strip()
        return display if _PHRASE.fullmatch(display) else b""
    match = _ADDR_COMMENT.fullmatch(value)          # old style: root (Cron Daemon)
    if match and match.group(1).strip():
        return b'"' + match.group(1).strip() + b'"'
    return b""


def encode_display(text: str) -> bytes:
    """A configured display name as a phrase: plain, quoted, or RFC 2047 encoded words."""
    if _ATEXT_SPACE.fullmatch(text):
        return text.encode("ascii")
    if text.isascii():
        return b'"' + text.encode("ascii") + b'"'   # config display names hold no " or \
    words, chunk = [], ""
    for char in text:
        if chunk and len((chunk + char).encode("utf-8")) > ENCODED_WORD_BYTES:
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return b" ".join(b"=?utf-8?b?" + base64.b64encode(w.encode("utf-8")) + b"?=" for w in words)


def from_line(identity: Identity, display: bytes, eol: bytes) -> bytes:
    if identity.display:
        display = encode_display(identity.display)
    address = identity.address.encode("utf-8")
    value = display + b" <" + address + b">" if display else address
    if len(b"From: " + value) > MAX_HEADER_LINE_BYTES:
        value = address
    return b"From: " + value + eol


def rewrite_message(content: bytes, identity: Identity) -> bytes:
    """`content` with its From: field(s) rewritten to `identity`, nothing else changed."""
    fields, header_end = header_fields(content)
    froms = [(start, end) for start, end in fields if _FROM_NAME.match(content, start)]
    if not froms:
        head = content[:header_end]
        eol = b"\n" if b"\n" in head and b"\r\n" not in head else b"\r\n"   # the queue's is CRLF
        lead = eol if head and not head.endswith(b"\n") else b""
        return head + lead + from_line(identity, b"", eol) + content[header_end:]
    first_start, first_end = froms[0]
    first_line_end = content.find(b"\n", first_start, first_end)
    eol = b"\r\n" if first_line_end > first_start and content[first_line_end - 1:first_line_end] == b"\r" else b"\n"
    out, pos = [], 0
    for i, (start, end) in enumerate(froms):
        out.append(content[pos:start])
        if i == 0:
            out.append(from_line(identity, original_display(content[start:end]), eol))
        out.append(b"X-Original-From" + content[start + len(b"from"):end])
        pos = end
    out.append(content[pos:])
    return b"".join(out)
