"""The console's line framing (board/console_lines.py): any chunking gives the same lines, a
line over the cap comes out as noise (None) without being kept, replies are ASCII + CRLF."""

from mta_lite_board.console_lines import MAX_LINE_BYTES, LineReader, ascii_line, printable

STREAM = b"HELLO\r\nSTATUS\n\rLOG 5\r" + b"X" * (MAX_LINE_BYTES + 1) + b"\nHELP\r\n" + b"QUE"


def test_line_reader_gives_the_same_lines_whatever_the_chunking():
    whole = LineReader().feed(STREAM)
    assert whole == [b"HELLO", b"", b"STATUS", b"", b"LOG 5", None, b"HELP", b""]
    for size in (1, 2, 7, 1000):
        reader = LineReader()
        lines = [line for i in range(0, len(STREAM), size) for line in reader.feed(STREAM[i:i + size])]
        assert lines == whole
        assert reader.feed(b"UE\n") == [b"QUEUE"]


def test_line_reader_keeps_no_more_than_the_cap_of_a_long_line():
    reader = LineReader()
    reader.feed(b"A" * MAX_LINE_BYTES)
    assert reader.feed(b"A" * (10 * MAX_LINE_BYTES)) == []
    assert len(reader._line) == 0
    assert reader.feed(b"\nOK\n") == [None, b"OK"]
    assert LineReader().feed(b"B" * MAX_LINE_BYTES + b"\n") == [b"B" * MAX_LINE_BYTES]


def test_reply_lines_are_printable_ascii_with_crlf():
    assert ascii_line("OK") == b"OK\r\n"
    assert ascii_line("caf\u00e9\x07") == b"caf\\xe9\\x07\r\n"
    assert printable(b"CONFIG SHOW") and not printable(b"A\x00B") and not printable(b"\xff")
