"""headers: missing Date:, Message-ID:, From: added at queue time; nothing else changes."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.smtpd.headers import MAX_HEADER_SCAN_BYTES, MissingHeaders

DATE = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
ADDED_DATE = b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
ADDED_ID = b"Message-ID: <20231114221320.A0001@relay.lan>\r\n"


def fix(chunks: list[bytes], sender: str = "scanner@lan.test") -> tuple[bytes, list[str]]:
    fixer = MissingHeaders(queue_id="A0001", date=DATE, hostname="relay.lan", sender=sender)
    out = b"".join(fixer.feed(chunk) for chunk in chunks) + fixer.finish()
    return out, fixer.added


def test_headers_all_missing_are_added_after_the_last_header_line():
    out, added = fix([b"Subject: scan\r\n\r\nbody\r\n"])
    assert out == b"Subject: scan\r\n" + ADDED_DATE + ADDED_ID + b"From: scanner@lan.test\r\n\r\nbody\r\n"
    assert added == ["Date", "Message-ID", "From"]


def test_headers_present_in_any_case_are_not_added_and_message_is_unchanged():
    message = b"date: x\r\nMESSAGE-ID: <a@b>\r\nFrom : Scanner\r\n <s@lan.test>\r\n\r\nbody\r\nDate: no\r\n"
    assert fix([message]) == (message, [])


def test_headers_only_the_missing_ones_are_added():
    out, added = fix([b"From: s@lan.test\r\nDate: x\r\n\r\nb\r\n"])
    assert out == b"From: s@lan.test\r\nDate: x\r\n" + ADDED_ID + b"\r\nb\r\n" and added == ["Message-ID"]


def test_headers_body_without_header_section_gets_a_separating_empty_line():
    out, _ = fix([b"scan done\r\nline\r\n"])
    assert out.endswith(b"From: scanner@lan.test\r\n\r\nscan done\r\nline\r\n") and out.startswith(ADDED_DATE)


def test_headers_null_sender_gets_mailer_daemon_from():
    out, _ = fix([b"Subject: x\r\n\r\n"], sender="")
    assert b"From: MAILER-DAEMON@relay.lan\r\n" in out


def test_headers_message_of_header_lines_only_gets_fields_at_the_end():
    assert fix([b"Subject: x\r\n"])[0] == b"Subject: x\r\n" + ADDED_DATE + ADDED_ID + b"From: scanner@lan.test\r\n"
    assert fix([])[0] == ADDED_DATE + ADDED_ID + b"From: scanner@lan.test\r\n"


def test_headers_over_the_scan_limit_pass_unchanged_with_nothing_added():
    big = b"X-Junk: " + b"y" * 100 + b"\r\n"
    message = big * (MAX_HEADER_SCAN_BYTES // len(big) + 2) + b"\r\nbody\r\n"
    assert fix([message]) == (message, [])


@settings(max_examples=200)
@given(st.lists(st.sampled_from([b"Subject: x\r\n", b" folded\r\n", b"\r\n", b"body line\r\n",
                                 b"Date: d\r\n", b"Message-Id: <m@x>\r\n", b"FROM: f\r\n", b"X: y\r\n"]),
                max_size=12),
       st.lists(st.integers(min_value=0, max_value=12), max_size=4))
def test_headers_only_add_lines_whatever_the_chunking(lines, cuts):
    message = b"".join(lines)
    whole, added = fix([message])
    points = sorted({0, len(lines), *[min(c, len(lines)) for c in cuts]})
    chunked, _ = fix([b"".join(lines[a:b]) for a, b in zip(points, points[1:])])
    assert whole == chunked
    removed = whole
    for name in added:
        removed = removed.replace(next(l for l in whole.split(b"\r\n") if l.startswith(name.encode() + b":")) + b"\r\n", b"", 1)
    # At most the empty line that separates added fields from a body without one.
    separated = [b"".join(lines[:i] + [b"\r\n"] + lines[i:]) for i in range(len(lines))]
    assert removed == message or (added and removed in separated)
