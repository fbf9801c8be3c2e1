"""Fuzz the DATA path end to end: client bytes -> DotReader (smtpd) -> queue content ->
the smarthost client's DATA encoding (esmtp.data_bytes, the same octets as aiosmtplib's:
tests/unit/test_smarthost_aiosmtplib.py) -> an RFC 5321 receiver (DotReader again).

Peer: none (pure). S2: whatever a
client sends, the content we accept has CRLF line endings only, and what we send on holds
no bare CR or LF and ends exactly where the accepted content ends, so nothing a client hides
in DATA can become a second message at the smarthost. The same holds for the normalizing
reader (LAN clients, Postfix 3.9 `normalize`), which besides ends the data only right after
a real CRLF.CRLF in the client's bytes. (tests/unit/test_smtpd_dotreader.py
checks the reader alone; tests/unit/test_smarthost_aiosmtplib.py the encoder alone.)
"""

from __future__ import annotations

import re

from hypothesis import example, given, strategies as st, target

from mta_lite.smarthost.esmtp import data_bytes
from mta_lite.smtpd.dotreader import Content, DotReader, End, ProtocolError
from tests.fuzz.profiles import fuzz_settings

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
PIECES = st.sampled_from([b"a", b"x y", b".", b"..", b"\r", b"\n", b"\r\n", b"\0", b"\r\n.\r\n", b"\n.\n",
                          b"\r.\r", b".\r\n", b"\r\n.", b"MAIL FROM:<a@b>\r\n", b"\xff\xfe", b"\r\n\r\n"])
DATA = st.one_of(st.lists(PIECES, max_size=40).map(b"".join), st.binary(max_size=300))


def feed_all(reader: DotReader, data: bytes, cuts: list[int]):
    """Feed in chunks cut at `cuts`; (content, terminal event or None)."""
    content, terminal, _ = feed_counting(reader, data, cuts)
    return content, terminal


def feed_counting(reader: DotReader, data: bytes, cuts: list[int]):
    """feed_all(), plus how many bytes of `data` the reader consumed up to its End."""
    content, terminal, start, consumed = b"", None, 0, len(data)
    points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    for point in points:
        if reader.done:
            break
        for event in reader.feed(data[start:point]):
            if isinstance(event, Content):
                content += event.data
            else:
                terminal = event
                if isinstance(event, End):
                    consumed = point - len(event.rest)
        start = point
    return content, terminal, consumed


@fuzz_settings(300)
@given(data=DATA, cuts=st.lists(st.integers(min_value=0), max_size=8), tail=st.booleans())
@example(data=b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x>\r\n", cuts=[], tail=True)
@example(data=b"..\r\n.\r\n", cuts=[1, 2, 3], tail=False)
@example(data=b"a\n.\nMAIL FROM:<evil@x>\r\n\r\n.\r\n", cuts=[2, 3, 4], tail=False)
@example(data=b"a\r\n.\r", cuts=[6], tail=True)
def test_data_path_relays_only_clean_content_ending_where_the_client_ended(data, cuts, tail):
    check_data_path(data, cuts, tail, normalize=False)


@fuzz_settings(300)
@given(data=DATA, cuts=st.lists(st.integers(min_value=0), max_size=8), tail=st.booleans())
@example(data=b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x>\r\n", cuts=[], tail=True)
@example(data=b"a\n.\r\nb\r\n.\nc", cuts=[1, 3, 5, 8], tail=True)
@example(data=b"\n\n.\n..\n", cuts=[1], tail=True)
def test_normalizing_data_path_relays_one_clean_message_ending_at_crlf_dot_crlf(data, cuts, tail):
    check_data_path(data, cuts, tail, normalize=True)


def check_data_path(data: bytes, cuts: list[int], tail: bool, normalize: bool) -> None:
    if tail:
        data += b"\r\n.\r\n"
    reader = DotReader(100_000, normalize=normalize)
    content, terminal, consumed = feed_counting(reader, data, cuts)
    if isinstance(terminal, ProtocolError):
        assert terminal.reply.code == 521
        return
    if not isinstance(terminal, End) or not reader.accepting:
        return                                  # still reading, or refused with 552: nothing queued
    target(float(len(content).bit_length()), label="log2 of accepted content bytes")
    assert not BARE.search(content) and b"\0" not in content
    # Only the client's real CRLF.CRLF (or a first line ".CRLF") ends the one message.
    assert data[:consumed] == b".\r\n" or data[:consumed].endswith(b"\r\n.\r\n")
    assert content == b"" or content.endswith(b"\r\n")
    wire = data_bytes(content)
    assert not BARE.search(wire) and wire.endswith(b"\r\n.\r\n")
    receiver = DotReader(100_000)
    relayed, end = feed_all(receiver, wire + b"QUIT\r\n", [])
    expected = content if content else b"\r\n"     # an empty message leaves as one empty line
    assert isinstance(end, End) and end.rest == b"QUIT\r\n" and relayed == expected
