"""Pins the aiosmtplib behaviour the smarthost client relies on, without sockets.

The client sends DATA the way aiosmtplib's SMTP.data() does, with esmtp.data_bytes() doing
aiosmtplib's encoding more cheaply: both must give the same octets, and they must (S2, G3)
dot-stuff every line that starts with "." (RFC 5321 section 4.5.2), send CRLF line endings
only, end with CRLF.CRLF, and count SIZE= the way esmtp.wire_size() does.
"""

from __future__ import annotations

import asyncio
import re

from hypothesis import given, settings, strategies as st

from aiosmtplib.protocol import SMTPProtocol, normalize_message_line_endings
from mta_lite.smarthost.esmtp import data_bytes, wire_size


class _FakeTransport(asyncio.Transport):
    """Records what the protocol writes and answers DATA with 354, the final dot with 250."""

    def __init__(self, protocol: SMTPProtocol) -> None:
        super().__init__()
        self.protocol, self.written = protocol, bytearray()

    def write(self, data: bytes) -> None:
        self.written += data
        answer = b"354 go ahead\r\n" if data == b"DATA\r\n" else b"250 2.0.0 Ok\r\n"
        asyncio.get_running_loop().call_soon(self.protocol.data_received, answer)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return default


def wire_bytes(content: bytes) -> bytes:
    """Exactly what aiosmtplib writes after DATA for this content."""
    async def send() -> bytes:
        protocol = SMTPProtocol(loop=asyncio.get_running_loop())
        transport = _FakeTransport(protocol)
        protocol.connection_made(transport)
        response = await protocol.execute_data_command(content, timeout=5)
        assert response.code == 250
        return bytes(transport.written[len(b"DATA\r\n"):])
    return asyncio.run(send())


def unstuff(wire: bytes) -> bytes:
    """What an RFC 5321 receiver makes of the DATA bytes: split at CRLF, drop one leading dot."""
    assert wire.endswith(b"\r\n.\r\n")
    lines = wire[: -len(b".\r\n")].split(b"\r\n")[:-1]
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_dotty_line = st.one_of(_line, _line.map(lambda b: b"." + b), st.sampled_from([b".", b"..", b". x"]))
crlf_content = st.lists(_dotty_line, min_size=1, max_size=12).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


def test_dot_stuffing_doubles_leading_dots_and_ends_with_the_final_dot():
    content = b"Subject: x\r\n\r\n.hidden\r\n.\r\n..two\r\nend .\r\n"
    assert wire_bytes(content) == b"Subject: x\r\n\r\n..hidden\r\n..\r\n...two\r\nend .\r\n.\r\n"


def test_bare_line_endings_leave_as_crlf():
    assert wire_bytes(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n.\r\n"


def test_content_without_final_crlf_gets_one():
    # Queued content always ends in CRLF; empty content would go out as one empty line.
    assert wire_bytes(b"last") == b"last\r\n.\r\n"
    assert wire_bytes(b"") == b"\r\n.\r\n"


@settings(max_examples=200, deadline=None)
@given(crlf_content)
def test_dot_stuffing_round_trips_any_crlf_content(content):
    wire = wire_bytes(content)
    assert unstuff(wire) == content
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n", wire)            # CRLF only, nothing bare
    assert b"\r\n.\r\n" not in b"\r\n" + wire[:-3]                 # no early end-of-data line


@given(st.binary(max_size=200))
def test_wire_size_counts_what_aiosmtplib_sends(content):
    assert wire_size(content) == len(normalize_message_line_endings(content))


_messy = st.lists(st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\n.",
                                   b"\r.", b"x" * 100]), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_messy, crlf_content, st.binary(max_size=200)))
def test_data_bytes_are_what_aiosmtplib_sends(content):
    assert data_bytes(content) == wire_bytes(content)
