"""dotreader — incremental reader for the SMTP DATA stream, pure.

DotReader.feed(bytes) takes whatever the socket delivered and returns events: Content
(un-dot-stuffed message bytes, CRLF line endings kept), then at most one terminal event:
End (the `<CRLF>.<CRLF>` was seen; carries the bytes that followed it, which are the next
pipelined commands) or ProtocolError (carries the 521 reply to give before closing).

Two modes, chosen per client by the engine (S2):
- strict (normalize=False): every LF must be preceded by CR and every CR followed by LF,
  and NUL never appears; anything else is a ProtocolError before any later byte is looked
  at, so no smuggled end-of-data (`<LF>.<LF>`, `<CR>.<CR>`, `<CR><LF>.<CR>`, ...) is ever
  taken for the real one.
- normalize=True (Postfix 3.9 `smtpd_forbid_bare_newline = normalize`, for LAN devices): a
  line ending in a bare LF is taken as ending in CRLF (`bare_lf` records that it happened).
  The end of data is still only `.<CR><LF>` after a real `<CR><LF>`: a dot line ended by a
  bare LF, or following a line ended by one, is an ordinary content line "." and is passed
  on as `.<CR><LF>` (not un-stuffed), so it leaves dot-stuffed and nothing after it can
  become a second message. Bare CR and NUL are still a ProtocolError.
Guarantees (both modes): the end of data is recognised only as a line that is exactly
`.<CR><LF>` after a `<CR><LF>` or at the start (RFC 5321 section 4.1.1.4); Content only
ever holds CRLF line endings. Results do not depend on how the input is chunked.
Speed: a chunk of plain CRLF lines (the usual case) is checked and un-stuffed with a few
C-level scans over the whole chunk; anything unusual in it (bare CR or LF, NUL, an
over-long line, the size limit) sends that chunk down the line-by-line path instead, so
both give the same events.
Memory is bounded: complete lines are passed on at once; at most one partial line of
MAX_DATA_LINE_BYTES is held. Past max_bytes, or once a line is over-long, no more Content
is emitted but the reader keeps scanning to the end so the session stays in step.
SECURITY: this parses untrusted bytes (S2); it only compares and slices them.
Must never: normalise a bare CR into a line ending, take a bare LF for CRLF in strict mode,
end the data at anything but CRLF.CRLF, or emit content after an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from mta_lite.reply import R521_BARE_CR, R521_BARE_LF, R521_NUL, Reply

# RFC 5321 section 4.5.3.1.6 limits a text line to 1000 octets including CRLF. Real senders
# (HTML mailers, scanners base64-ing without wrapping) exceed that, and the smarthost, not
# us, is the judge of what it relays; so we are ten times as generous. The cap exists to
# bound the one partial line we must buffer, not to police content.
MAX_DATA_LINE_BYTES = 10_000

_CRLF = b"\r\n"
_END_LINE = b".\r\n"


@dataclass(frozen=True)
class Content:
    """Message bytes, un-dot-stuffed, with CRLF line endings."""

    data: bytes


@dataclass(frozen=True)
class End:
    """End of data seen; `rest` is what the client sent after it (pipelined commands)."""

    rest: bytes


@dataclass(frozen=True)
class ProtocolError:
    """Bare CR, bare LF or NUL: reply with `reply`, queue nothing, close the connection."""

    reply: Reply
    reason: str


Event = Content | End | ProtocolError


class DotReader:
    """Feed it DATA bytes; see the module docstring for the events it returns."""

    def __init__(self, max_bytes: int, normalize: bool = False) -> None:
        self.max_bytes = max_bytes
        self.normalize = normalize     # take a bare LF line end as CRLF (S2, LAN clients)
        self.bare_lf = False           # normalize: some line ended in a bare LF
        self.size = 0                  # content bytes seen so far (after un-stuffing)
        self.oversize = False          # size went past max_bytes
        self.line_too_long = False     # some line was longer than MAX_DATA_LINE_BYTES
        self.done = False              # End or ProtocolError was returned
        self._partial = bytearray()    # the current line, not yet ended by LF
        self._skipping = False         # inside an over-long line: drop its bytes
        self._pending_cr = False       # the bytes fed so far end with a CR
        self._after_crlf = True        # the last complete line ended in a real CRLF (or none yet)

    @property
    def accepting(self) -> bool:
        """True while content is still being passed on (not oversize, no long line)."""
        return not (self.oversize or self.line_too_long)

    def feed(self, data: bytes) -> list[Event]:
        if self.done:
            raise ValueError("DotReader.feed() after the end of data")
        head = 0
        if not self._at_line_start():
            nl = data.find(b"\n")            # finish the line under way the careful way
            head = len(data) if nl < 0 else nl + 1
        events = self._feed_lines(data[:head]) if head else []
        if self.done and isinstance(events[-1], End):
            events[-1] = End(data[head:])       # the end line was the one under way
        if self.done or head == len(data):
            return events
        body = data[head:] if head else data
        bulk = self._feed_bulk(body)
        return events + (bulk if bulk is not None else self._feed_lines(body))

    def _feed_lines(self, data: bytes) -> list[Event]:
        """The careful path: line by line, every check in the order the bytes came."""
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl < 0 else nl + 1
            piece = data[pos:end]
            pos = end
            crlf = piece.endswith(_CRLF) or (self._pending_cr and piece == b"\n")
            error = self._check(piece, complete=nl >= 0)
            if error is not None:
                self.done = True
                return self._content(out) + [error]
            if nl < 0:
                self._extend_partial(piece)
                break
            line = self._complete_line(piece)
            if line == _END_LINE and crlf and self._after_crlf:
                self.done = True
                return self._content(out) + [End(data[pos:])]
            self._after_crlf = crlf
            if line is not None:
                self._take(line if crlf else line[:-1] + _CRLF, out)
        return self._content(out)

    # ------------------------------------------------------------------ bulk path

    def _at_line_start(self) -> bool:
        """Nothing held over from earlier input: the next byte starts a line after a CRLF."""
        return not (self._partial or self._skipping or self._pending_cr) and self._after_crlf

    def _feed_bulk(self, data: bytes) -> list[Event] | None:
        """Whole CRLF lines checked and un-stuffed with a few scans over the whole chunk
        (bytes.count/find/replace) instead of per line. None when the chunk holds anything
        unusual (a bare CR or LF, NUL, an over-long line, the size limit reached): then the
        line-by-line path decides, so the events are the same either way."""
        if not (self.accepting and self._at_line_start()):
            return None
        if data.startswith(_END_LINE):
            end = 0
        else:
            found = data.find(b"\r\n.\r\n")
            end = found + 2 if found >= 0 else -1
        cut = end if end >= 0 else data.rfind(b"\n") + 1     # whole lines only
        body = data[:cut]
        if not self._clean(body) or self.size + len(body) > self.max_bytes:
            return None
        if body[:1] == b".":
            body = body[1:]                         # RFC 5321 section 4.5.2: the first line,
        body = body.replace(b"\r\n.", b"\r\n")      # then every other line starting with a dot
        self.size += len(body)
        events: list[Event] = [Content(body)] if body else []
        if end >= 0:
            self.done = True
            return events + [End(data[end + len(_END_LINE):])]
        rest = data[cut:]                           # a partial line: the careful path holds it
        return events + (self._feed_lines(rest) if rest else [])

    @staticmethod
    def _clean(body: bytes) -> bool:
        """Complete lines, each ending in CRLF with no other CR or LF, no NUL, none too long."""
        if not body:
            return True
        if not body.endswith(_CRLF) or b"\0" in body:
            return False
        crlfs = body.count(_CRLF)
        if body.count(b"\r") != crlfs or body.count(b"\n") != crlfs:
            return False
        start = 0
        while len(body) - start > MAX_DATA_LINE_BYTES:
            # The last LF within the next MAX_DATA_LINE_BYTES ends every line that starts
            # before it: none of those is too long; none at all means this one is.
            last = body.rfind(b"\n", start, start + MAX_DATA_LINE_BYTES)
            if last < 0:
                return False
            start = last + 1
        return True

    # ------------------------------------------------------------------ internals

    def _check(self, piece: bytes, complete: bool) -> ProtocolError | None:
        """Validate one piece: a line ending in LF (complete) or the tail of the input."""
        if b"\0" in piece:
            return ProtocolError(R521_NUL, "NUL character in data")
        crs = piece.count(b"\r")
        if self._pending_cr:
            # The previous piece ended with CR: this one must be exactly the LF.
            if piece != b"\n":
                return ProtocolError(R521_BARE_CR, "CR not followed by LF")
            self._pending_cr = False
            return None
        if complete:
            if not piece.endswith(_CRLF):
                if not self.normalize:
                    return ProtocolError(R521_BARE_LF, "LF not preceded by CR")
                if crs:
                    return ProtocolError(R521_BARE_CR, "CR not followed by LF")
                self.bare_lf = True
                return None
            if crs != 1:
                return ProtocolError(R521_BARE_CR, "CR not followed by LF")
            return None
        if crs > 1 or (crs == 1 and not piece.endswith(b"\r")):
            return ProtocolError(R521_BARE_CR, "CR not followed by LF")
        self._pending_cr = crs == 1
        return None

    def _extend_partial(self, piece: bytes) -> None:
        if self._skipping:
            return
        self._partial += piece
        if len(self._partial) >= MAX_DATA_LINE_BYTES:
            # With at least the LF still to come the line is over the limit already.
            self.line_too_long = True
            self._skipping = True
            self._partial.clear()

    def _complete_line(self, piece: bytes) -> bytes | None:
        """The whole line ending in CRLF, or None when it was over-long (dropped)."""
        if self._skipping:
            self._skipping = False
            return None
        line = bytes(self._partial) + piece if self._partial else piece
        self._partial.clear()
        if len(line) > MAX_DATA_LINE_BYTES:
            self.line_too_long = True
            return None
        return line

    def _take(self, line: bytes, out: list[bytes]) -> None:
        # RFC 5321 section 4.5.2: remove one leading dot. A lone "." reaching here is a
        # normalized dot line that did not end the data: it stays ".", so it leaves stuffed.
        if line.startswith(b".") and line != _END_LINE:
            line = line[1:]
        self.size += len(line)
        if self.size > self.max_bytes:
            self.oversize = True
        if self.accepting:
            out.append(line)

    @staticmethod
    def _content(out: list[bytes]) -> list[Event]:
        return [Content(b"".join(out))] if out else []
