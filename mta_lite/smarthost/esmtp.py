"""esmtp — what the server's EHLO extensions mean for one message: the MAIL FROM parameters.

Pure: no I/O. data_bytes() encodes a message for after DATA exactly as aiosmtplib's
SMTP.data() would (CRLF line endings, a final CRLF, dot-stuffing, the final dot), cheaply
for the usual all-CRLF content; DataEncoder produces the same octets from the message in
chunks of any size, and Scan the facts plan_mail() needs (ContentFacts), so a big message
is never whole in memory. plan_mail() chooses SIZE=, BODY=8BITMIME and SMTPUTF8 from the extensions the
server offered, and decides which messages this server can never take (Postfix's 5.6.7 when
SMTPUTF8 is needed but not offered, 5.3.4 over its SIZE). unsafe_address() keeps an address
that would change the command line (a ">", a space, a CR LF) off the wire.

Guarantees: DataEncoder's output, chunk by chunk, is data_bytes() of the whole message
whatever the chunk boundaries (a CR at the end of one chunk and its LF at the start of the
next, a "." starting a line at the start of a chunk); Scan's facts are facts_of() of the
whole message. SIZE= counts the octets as aiosmtplib sends them (RFC 1870 section 3: CRLFs
counted, dot-stuffing not); SMTPUTF8 is only used when offered; a message refused here is
refused for good (5xx) and nothing of it was sent.
Must never: put an address on a command line that could smuggle a second command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mta_lite.reply import Reply
from mta_lite.smarthost.replies import CONTROL_CHARS, clean_text

_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\]|\\.)*"')
_UNSAFE_OUTSIDE_QUOTES = re.compile(r'[\s<>"]')
# The same line-ending rule aiosmtplib applies before it sends DATA, so SIZE= matches the
# octets on the wire (RFC 1870 section 3: CRLFs counted, dot-stuffing not).
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")


@dataclass(frozen=True)
class ContentFacts:
    """What plan_mail() needs of a message: its size on the wire (SIZE=), whether it is all
    ASCII (BODY=8BITMIME, the 7-bit downgrade) and whether its header section is (SMTPUTF8);
    and whether its lines all end in CRLF already (data_bytes() then rewrites nothing)."""

    wire_size: int
    isascii: bool
    headers_ascii: bool
    crlf_only: bool = False


@dataclass(frozen=True)
class MailPlan:
    """The MAIL FROM parameters for one transaction and how addresses are encoded."""

    options: tuple[str, ...]
    encoding: str               # "utf-8" when SMTPUTF8 is used, else "ascii"


def _crlf_only(content: bytes) -> bool:
    crlf = content.count(b"\r\n")
    return crlf == content.count(b"\n") == content.count(b"\r")


def data_bytes(content: bytes, crlf_only: bool | None = None) -> bytes:
    """What goes on the wire after the 354: CRLF line endings, a final CRLF, every line that
    starts with "." stuffed with another (RFC 5321 section 4.5.2), then ".CRLF". The same
    octets as aiosmtplib's DATA encoding (tests pin it), without its two regular-expression
    passes over the whole message for content that is CRLF already, as queued mail is.
    `crlf_only`: what ContentFacts found already (None: look)."""
    if not (_crlf_only(content) if crlf_only is None else crlf_only):
        content = _LINE_END.sub(b"\r\n", content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def wire_size(content: bytes, crlf_only: bool | None = None) -> int:
    """Octets of the message as sent in DATA: CRLF line endings, final CRLF, no dot-stuffing."""
    if _crlf_only(content) if crlf_only is None else crlf_only:
        # Queued mail is CRLF already (smtpd refuses bare CR and normalizes or refuses bare
        # LF; sendmail normalises): counting is much cheaper than rewriting a copy of the message.
        return len(content) + (0 if content.endswith(b"\r\n") else 2)
    normalised = _LINE_END.sub(b"\r\n", content)
    return len(normalised) + (0 if normalised.endswith(b"\r\n") else 2)


class DataEncoder:
    """data_bytes() in pieces: feed() each chunk of the message in order, then end(); the
    outputs joined are data_bytes() of the chunks joined. A CR at the end of a chunk is held
    back until the next one shows whether its LF follows."""

    def __init__(self) -> None:
        self._held = b""                # a trailing CR, not yet known to be bare
        self._line_start = True         # the next byte starts a line (so a "." is stuffed)
        self._wrote = False

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        self._held = b"\r" if data.endswith(b"\r") else b""
        if self._held:
            data = data[:-1]
        if not data:
            return b""
        if not _crlf_only(data):
            data = _LINE_END.sub(b"\r\n", data)
        stuffed = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._wrote = True
        self._line_start = stuffed.endswith(b"\n")
        return stuffed

    def end(self) -> bytes:
        """The rest: a held CR as CRLF, the final CRLF if the message lacks one, ".CRLF"."""
        tail = b"\r\n" if self._held else b""
        if not tail and not (self._wrote and self._line_start):
            tail = b"\r\n"
        self._held = b""
        return tail + b".\r\n"


_NON_ASCII = re.compile(rb"[\x80-\xff]")
_BLANK_LINE = b"\r\n\r\n"


class Scan:
    """facts_of() in pieces: feed() each chunk in order, then facts()."""

    def __init__(self) -> None:
        self.length = self.crlf = self.lf = self.cr = 0
        self.last = b""                 # the last bytes seen (up to 3: a blank line across chunks)
        self.blank_at = -1              # where the first CRLF CRLF starts, -1 until seen
        self.non_ascii_at = -1          # the first byte over 127, -1 until seen

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.last.endswith(b"\r") and chunk.startswith(b"\n"):
            self.crlf += 1
        self.crlf += chunk.count(b"\r\n")
        self.lf += chunk.count(b"\n")
        self.cr += chunk.count(b"\r")
        if self.blank_at < 0:
            self.blank_at = self._blank_line(chunk)
        if self.non_ascii_at < 0 and not chunk.isascii():
            self.non_ascii_at = self.length + _NON_ASCII.search(chunk).start()
        self.length += len(chunk)
        self.last = (self.last + chunk[-3:])[-3:]

    def _blank_line(self, chunk: bytes) -> int:
        """Where the first CRLF CRLF starts, if it ends in `chunk`; -1 if it does not."""
        across = (self.last + chunk[:3]).find(_BLANK_LINE)
        if across >= 0:
            return self.length - len(self.last) + across
        found = chunk.find(_BLANK_LINE)
        return self.length + found if found >= 0 else -1

    def facts(self) -> ContentFacts:
        size = self.length + (self.lf - self.crlf) + (self.cr - self.crlf)
        if not self.last or self.last[-1:] not in (b"\r", b"\n"):
            size += 2
        headers_ascii = self.non_ascii_at < 0 or 0 <= self.blank_at < self.non_ascii_at
        crlf_only = self.crlf == self.lf == self.cr
        return ContentFacts(size, self.non_ascii_at < 0, headers_ascii, crlf_only)


def facts_of(content: bytes) -> ContentFacts:
    """The ContentFacts of a message in memory."""
    headers = content.split(_BLANK_LINE, 1)[0]
    crlf_only = _crlf_only(content)
    return ContentFacts(wire_size(content, crlf_only), content.isascii(), headers.isascii(), crlf_only)


def unsafe_address(address: str) -> bool:
    """True if the address cannot go on a command line as it is (never true for parsed mail)."""
    if CONTROL_CHARS.search(address):
        return True
    return bool(_UNSAFE_OUTSIDE_QUOTES.search(_QUOTED_LOCAL.sub("", address, count=1)))


def _size_limit(extensions: dict[str, str]) -> int:
    value = extensions.get("size", "").strip()
    return int(value) if value.isdigit() else 0


def plan_mail(extensions: dict[str, str], sender: str, recipients: list[str],
              content: bytes | ContentFacts, smtputf8: bool, relay: str) -> MailPlan | Reply:
    """MAIL FROM parameters for the server's EHLO extensions, or the permanent Reply for a
    message this server can never take (Postfix: 5.6.7 for SMTPUTF8, 5.3.4 for SIZE).
    `content` is the message, or its facts when it is not in memory."""
    facts = content if isinstance(content, ContentFacts) else facts_of(content)
    if unsafe_address(sender):
        return Reply(553, "5.1.7", f"<{clean_text(sender)}>: Sender address rejected: unsupported address form")
    utf8_addresses = not all(address.isascii() for address in [sender, *recipients])
    needs_utf8 = utf8_addresses or (smtputf8 and not facts.headers_ascii)
    offers_utf8 = "smtputf8" in extensions
    if needs_utf8 and not offers_utf8:
        return Reply(554, "5.6.7", f"SMTPUTF8 is required, but was not offered by host {relay}")
    size, limit = facts.wire_size, _size_limit(extensions)
    if limit and size > limit:
        return Reply(552, "5.3.4", f"message size {size} exceeds size limit {limit} of server {relay}")
    options = []
    if "size" in extensions:
        options.append(f"SIZE={size}")
    if not facts.isascii and "8bitmime" in extensions:
        options.append("BODY=8BITMIME")
    use_utf8 = (smtputf8 or utf8_addresses) and offers_utf8
    if use_utf8:
        options.append("SMTPUTF8")
    return MailPlan(tuple(options), "utf-8" if use_utf8 else "ascii")


def unsafe_recipient(recipient: str) -> Reply:
    return Reply(553, "5.1.3", f"<{clean_text(recipient)}>: Recipient address rejected: unsupported address form")
