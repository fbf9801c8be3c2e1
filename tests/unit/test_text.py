"""text: untrusted text made safe for one log field or reply line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mta_lite.text import MAX_FIELD_CHARS, printable


def test_printable_replaces_control_and_line_breaks_with_question_marks():
    assert printable("a\r\nb\x00c\u2028d\x85e\udcff") == "a??b?c?d?e?"


def test_printable_keeps_printable_unicode_and_cuts_at_limit():
    assert printable("grüße" * 100) == ("grüße" * 100)[:MAX_FIELD_CHARS]
    assert printable("abcdef", 3) == "abc" and printable("x" * 500, None) == "x" * 500


def test_printable_escape_shows_what_was_sent_as_ascii():
    assert printable("EHLO bot\r\n\x00é\\", escape=True) == "EHLO bot\\r\\n\\x00\\xe9\\\\"
    assert printable("\r" * 300, escape=True) == "\\r" * (MAX_FIELD_CHARS // 2)


@given(st.text(), st.booleans())
def test_printable_any_text_gives_one_bounded_printable_field(text, escape):
    field = printable(text, escape=escape)
    assert field.isprintable() and len(field) <= MAX_FIELD_CHARS
    assert field.encode("utf-8").decode("utf-8") == field     # no lone surrogate left
