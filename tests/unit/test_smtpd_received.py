"""received: the Received: trace header is well-formed and cannot be injected into."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.smtpd.received import received_header

DATE = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)


def header(**over) -> bytes:
    args = dict(helo="pc.lan", client_ip="192.168.1.20", hostname="relay.lan", queue_id="4F2A1B",
                protocol="ESMTPS", recipient="bob@example.org", date=DATE)
    args.update(over)
    return received_header(**args)


def test_received_header_has_postfix_shape():
    assert header() == (b"Received: from pc.lan (unknown [192.168.1.20])\r\n"
                        b"\tby relay.lan (mta-lite) with ESMTPS id 4F2A1B\r\n"
                        b"\tfor <bob@example.org>; Tue, 14 Nov 2023 22:13:20 +0000\r\n")


def test_received_header_without_single_recipient_puts_date_on_own_line():
    assert header(recipient=None).endswith(b" id 4F2A1B;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n")


def test_received_header_keeps_the_given_timezone():
    local = DATE.astimezone(timezone(timedelta(hours=2)))
    assert header(date=local).endswith(b"Wed, 15 Nov 2023 00:13:20 +0200\r\n")


def test_received_header_injection_attempt_in_helo_is_neutralised():
    out = header(helo="pc\r\nX-Injected: yes (a) <b>;")
    assert out.count(b"\r\n") == 3 and b"\nX-Injected" not in out
    assert out.startswith(b"Received: from pc??X-Injected:?yes??a???b?? (unknown")


def test_received_header_empty_helo_reads_unknown():
    assert header(helo="").startswith(b"Received: from unknown (unknown [")


@settings(max_examples=400)
@given(st.text(max_size=300), st.text(max_size=300), st.text(max_size=80))
def test_received_header_any_input_gives_three_clean_lines(helo, recipient, hostname):
    out = header(helo=helo, recipient=recipient or None, hostname=hostname).decode("utf-8")
    lines = out.split("\r\n")
    assert lines[-1] == "" and len(lines) == 4
    assert lines[0].startswith("Received: from ") and all(line.startswith("\t") for line in lines[1:3])
    for line in lines[:3]:
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", line)
        assert all(c.isprintable() or c == "\t" for c in line)
        assert len(line.encode("utf-8")) < 998
