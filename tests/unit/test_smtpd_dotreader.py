"""dotreader: end-of-data detection, un-dot-stuffing, smuggling rejection, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.reply import R521_BARE_CR, R521_BARE_LF, R521_NUL
from mta_lite.smtpd.dotreader import MAX_DATA_LINE_BYTES, Content, DotReader, End, ProtocolError

BIG = 10**9


def run(chunks, max_bytes=BIG):
    """Feed chunks until a terminal event; return (content, terminal or None, reader, unfed)."""
    reader = DotReader(max_bytes)
    content = []
    for index, chunk in enumerate(chunks):
        for event in reader.feed(chunk):
            if isinstance(event, Content):
                content.append(event.data)
            else:
                return b"".join(content), event, reader, list(chunks[index + 1:])
    return b"".join(content), None, reader, []


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


def stuff(lines: list[bytes]) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def reference(data: bytes) -> tuple:
    """Obviously-correct byte-at-a-time reader: ("end", content, rest) / ("error",) / ("more",)."""
    lines, start, i = [], 0, 0
    while i < len(data):
        byte = data[i]
        if byte == 0 or byte == 0x0A:
            return ("error",)
        if byte == 0x0D:
            if i + 1 == len(data):
                return ("more",)
            if data[i + 1] != 0x0A:
                return ("error",)
            line, i = data[start:i + 2], i + 2
            start = i
            if line == b".\r\n":
                return ("end", b"".join(lines), data[i:])
            lines.append(line[1:] if line.startswith(b".") else line)
            continue
        i += 1
    return ("more",)


def outcome(chunks: list[bytes]) -> tuple:
    content, terminal, _, unfed = run(chunks)
    if isinstance(terminal, End):
        return ("end", content, terminal.rest + b"".join(unfed))
    return ("error",) if isinstance(terminal, ProtocolError) else ("more",)


# ---------------------------------------------------------------- examples

def test_dotreader_simple_message_returns_content_then_end():
    content, end, _, _ = run([b"Subject: x\r\n\r\nbody\r\n.\r\n"])
    assert content == b"Subject: x\r\n\r\nbody\r\n"
    assert end == End(b"")


def test_dotreader_dot_stuffed_lines_are_unstuffed():
    content, end, _, _ = run([b"..one\r\n...\r\n. \r\n.\r\n"])
    assert content == b".one\r\n..\r\n \r\n"
    assert isinstance(end, End)


def test_dotreader_empty_message_ends_at_first_line():
    content, end, reader, _ = run([b".\r\n"])
    assert (content, end, reader.size) == (b"", End(b""), 0)


def test_dotreader_bytes_after_end_are_returned_as_rest():
    _, end, _, _ = run([b"a\r\n.\r\nQUIT\r\n"])
    assert end == End(b"QUIT\r\n")


def test_dotreader_fed_byte_by_byte_finds_end():
    data = b"a\r\n.b\r\n.\r\nNOOP"
    content, end, _, _ = run([bytes([b]) for b in data])
    assert content == b"a\r\nb\r\n" and isinstance(end, End)


def test_dotreader_cr_at_chunk_end_then_lf_is_a_line_ending():
    content, end, _, _ = run([b"abc\r", b"\n.\r", b"\n"])
    assert content == b"abc\r\n" and isinstance(end, End)


def test_dotreader_cr_at_chunk_end_then_other_byte_is_bare_cr():
    _, error, _, _ = run([b"abc\r", b"x\r\n.\r\n"])
    assert error.reply == R521_BARE_CR


@pytest.mark.parametrize("data, reply", [
    (b"a\nb\r\n.\r\n", R521_BARE_LF),
    (b"a\rb\r\n.\r\n", R521_BARE_CR),
    (b"a\0b\r\n.\r\n", R521_NUL),
    (b"\n", R521_BARE_LF),
    (b"a\r\r\n", R521_BARE_CR),
])
def test_dotreader_bad_line_ending_or_nul_returns_protocol_error(data, reply):
    content, error, reader, _ = run([data])
    assert isinstance(error, ProtocolError) and error.reply == reply
    assert content == b"" and reader.done


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r\n.\r\r\n",
             b"\r\n\0.\r\n", b"\r\n.\0\r\n", b"\r\n.\r\0\n", b"\r\0\n.\r\n"]


@pytest.mark.parametrize("variant", SMUGGLING, ids=[repr(v) for v in SMUGGLING])
def test_dotreader_smuggling_variant_returns_protocol_error(variant):
    data = b"Subject: x\r\n\r\nhello" + variant + b"MAIL FROM:<evil@x>\r\n\r\nsmuggled\r\n.\r\n"
    content, terminal, _, _ = run([data])
    assert isinstance(terminal, ProtocolError) and terminal.reply.code == 521
    assert b"evil" not in content and b"smuggled" not in content


def test_dotreader_over_max_bytes_stops_content_and_reads_to_end():
    lines = [b"%04d" % i + b"x" * 20 for i in range(100)]
    content, end, reader, _ = run([stuff(lines) + b".\r\nQUIT\r\n"], max_bytes=100)
    assert isinstance(end, End) and end.rest == b"QUIT\r\n"
    assert reader.oversize and not reader.accepting
    assert len(content) <= 100
    assert reader.size == sum(len(line) + 2 for line in lines)


def test_dotreader_exactly_max_bytes_is_accepted():
    _, end, reader, _ = run([b"12345678\r\n.\r\n"], max_bytes=10)
    assert isinstance(end, End) and not reader.oversize


def test_dotreader_long_line_is_flagged_without_buffering_it():
    reader = DotReader(BIG)
    reader.feed(b"start\r\n")
    for _ in range(100):
        assert reader.feed(b"A" * 1000) == []
        assert len(reader._partial) < MAX_DATA_LINE_BYTES
    events = reader.feed(b"\r\nafter\r\n.\r\n")
    assert reader.line_too_long and not reader.accepting
    assert events == [End(b"")]


def test_dotreader_line_at_limit_is_accepted_and_one_more_byte_is_not():
    at_limit = b"A" * (MAX_DATA_LINE_BYTES - 2) + b"\r\n"
    content, _, reader, _ = run([at_limit + b".\r\n"])
    assert content == at_limit and not reader.line_too_long
    _, _, reader, _ = run([b"A" + at_limit + b".\r\n"])
    assert reader.line_too_long


def test_dotreader_feed_after_end_raises():
    reader = DotReader(BIG)
    reader.feed(b".\r\n")
    with pytest.raises(ValueError):
        reader.feed(b"x")


# ---------------------------------------------------------------- properties

@settings(max_examples=300)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=20))
def test_dotreader_arbitrary_bytes_never_crash_and_stay_bounded(data, cuts):
    reader = DotReader(500)
    terminals = 0
    for chunk in split(data, cuts):
        if reader.done:
            break
        events = reader.feed(chunk)
        assert all(isinstance(e, (Content, End, ProtocolError)) for e in events)
        assert all(isinstance(e, Content) for e in events[:-1])
        terminals += sum(not isinstance(e, Content) for e in events)
        assert len(reader._partial) < MAX_DATA_LINE_BYTES
    assert terminals == (1 if reader.done else 0)


ALPHABET = st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\0", b"\r\n.\r\n", b"\n.\n"])


@settings(max_examples=500)
@given(st.lists(ALPHABET, max_size=40), st.lists(st.integers(min_value=0), max_size=10))
def test_dotreader_agrees_with_bytewise_reference_whatever_the_chunking(pieces, cuts):
    data = b"".join(pieces)
    assert outcome(split(data, cuts)) == reference(data)


LINE = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))


@settings(max_examples=300)
@given(st.lists(LINE, max_size=30), st.binary(max_size=40), st.lists(st.integers(min_value=0), max_size=10))
def test_dotreader_valid_dot_stuffed_message_round_trips(lines, rest, cuts):
    message = b"".join(line + b"\r\n" for line in lines)
    result = outcome(split(stuff(lines) + b".\r\n" + rest, cuts))
    assert result == ("end", message, rest)


@settings(max_examples=300)
@given(st.lists(LINE, min_size=1, max_size=10), st.sampled_from(SMUGGLING), st.integers(min_value=0))
def test_dotreader_smuggling_variant_anywhere_is_rejected(lines, variant, position):
    at = position % (len(lines) + 1)
    head = stuff(lines[:at])[:-2] if at else b"x"      # the variant replaces a line ending
    data = head + variant + stuff(lines[at:]) + b".\r\n"
    content, terminal, _, _ = run([data])
    assert isinstance(terminal, ProtocolError)


# A whole chunk of plain CRLF lines takes the bulk path; fed a byte at a time, every byte
# after the first of a line goes down the line-by-line path: both must give the same result.
BULK_LINE = st.one_of(LINE, st.sampled_from([b".", b"..", b".x", b"x" * (MAX_DATA_LINE_BYTES - 2),
                                             b"x" * (MAX_DATA_LINE_BYTES - 1), b"y" * 25_000]))
BULK_TAIL = st.sampled_from([b".\r\nQUIT\r\n", b".\r\n", b"", b"x\ny\r\n.\r\n", b"a\rb\r\n.\r\n",
                             b"\0\r\n.\r\n", b"\n.\n.\r\n", b"partial"])


def _terminal(event, unfed: bytes) -> tuple:
    if isinstance(event, End):
        return ("end", event.rest + unfed)
    return ("error", event.reply)


def bytewise(data: bytes, max_bytes: int) -> tuple:
    reader = DotReader(max_bytes)
    content, terminal = [], None
    for i in range(len(data)):
        for event in reader.feed(data[i:i + 1]):
            if isinstance(event, Content):
                content.append(event.data)
            else:
                terminal = _terminal(event, data[i + 1:])
        if terminal:
            break
    return b"".join(content), terminal, reader.size, reader.oversize, reader.line_too_long


def whole(chunks: list[bytes], max_bytes: int) -> tuple:
    content, terminal, reader, unfed = run(chunks, max_bytes)
    term = None
    if terminal is not None:
        term = _terminal(terminal, b"".join(unfed))
    return content, term, reader.size, reader.oversize, reader.line_too_long


@settings(max_examples=150, deadline=None)
@given(st.lists(BULK_LINE, max_size=60), BULK_TAIL, st.sampled_from([BIG, 5_000, 40_000]),
       st.lists(st.integers(min_value=0), max_size=4))
def test_dotreader_bulk_chunks_agree_with_bytewise_feeding(lines, tail, max_bytes, cuts):
    data = stuff(lines) + tail
    assert whole(split(data, cuts), max_bytes) == bytewise(data, max_bytes)


def test_dotreader_bulk_chunk_of_many_lines_is_one_content_event():
    lines = [b"line %d" % i for i in range(300)] + [b".dot", b"..two"]
    events = DotReader(BIG).feed(stuff(lines) + b".\r\nQUIT\r\n")
    assert events == [Content(b"".join(line + b"\r\n" for line in lines)), End(b"QUIT\r\n")]


# ---------------------------------------------------------------- normalize (S2, LAN clients)

def normalized(chunks, max_bytes=BIG):
    """Like run(), with a normalizing reader; End's rest includes the chunks not fed."""
    reader = DotReader(max_bytes, normalize=True)
    content = []
    for index, chunk in enumerate(chunks):
        for event in reader.feed(chunk):
            if isinstance(event, Content):
                content.append(event.data)
            elif isinstance(event, End):
                return b"".join(content), End(event.rest + b"".join(chunks[index + 1:])), reader
            else:
                return b"".join(content), event, reader
    return b"".join(content), None, reader


def test_dotreader_normalize_bare_lf_lines_become_crlf():
    content, end, reader = normalized([b"Subject: x\n\nline\n..dot\n.\r\n"])
    assert end is None                    # ".\r\n" after a bare-LF line is not the end
    content2, end2, _ = normalized([b"Subject: x\n\nline\n..dot\r\n.\r\n"])
    assert content2 == b"Subject: x\r\n\r\nline\r\n.dot\r\n" and end2 == End(b"")
    assert reader.bare_lf


@pytest.mark.parametrize("data", [b"a\n.\nb\r\n.\r\n", b"a\r\n.\nb\r\n.\r\n", b"a\n.\r\nb\r\n.\r\n"])
def test_dotreader_normalize_bare_lf_dot_line_is_content_kept_as_dot(data):
    content, end, _ = normalized([data])
    assert content == b"a\r\n.\r\nb\r\n" and end == End(b"")


def test_dotreader_normalize_dot_line_split_across_chunks_still_needs_crlf():
    content, end, _ = normalized([b"a\r", b"\n.", b"\r", b"\n", b"rest"])
    assert content == b"a\r\n" and end == End(b"rest")
    content, end, _ = normalized([b"a\r", b"\n.", b"\n", b"b\r\n.\r\nrest"])
    assert content == b"a\r\n.\r\nb\r\n" and end == End(b"rest")


def test_dotreader_normalize_empty_message_and_crlf_only_input_unchanged():
    assert normalized([b".\r\nQUIT\r\n"])[1] == End(b"QUIT\r\n")
    data = b"x\r\n..y\r\n\r\n.\r\n"
    assert normalized([data])[:2] == run([data])[:2]
    assert not normalized([data])[2].bare_lf


@pytest.mark.parametrize("data, reply", [
    (b"a\rb\r\n.\r\n", R521_BARE_CR), (b"a\r\rb\n", R521_BARE_CR), (b"a\r.\n", R521_BARE_CR),
    (b"a\0\n", R521_NUL), (b"a\r\n.\r.\r\n", R521_BARE_CR)])
def test_dotreader_normalize_still_refuses_bare_cr_and_nul(data, reply):
    content, terminal, _ = normalized([data])
    assert isinstance(terminal, ProtocolError) and terminal.reply == reply


@settings(max_examples=300)
@given(st.lists(ALPHABET, max_size=40), st.lists(st.integers(min_value=0), max_size=10))
def test_dotreader_normalize_agrees_with_strict_on_strict_input_and_ignores_chunking(pieces, cuts):
    def kind(result):
        content, terminal, _ = result
        if isinstance(terminal, ProtocolError):
            return ("error",)
        return ("end", content, terminal.rest) if isinstance(terminal, End) else ("more",)
    data = b"".join(pieces)
    whole = kind(normalized([data]))
    assert whole == kind(normalized(split(data, cuts)))
    strict = outcome([data])
    if strict[0] == "end" or b"\n" not in data.replace(b"\r\n", b""):
        assert whole == strict            # up to the end, or without any bare LF: no change
