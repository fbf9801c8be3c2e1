"""downgrade: declared-8bit MIME parts to quoted-printable for a server without 8BITMIME."""

from __future__ import annotations

import quopri

from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.smarthost.downgrade import MAX_MIME_DEPTH, to_7bit

TEXT_8BIT = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"


def test_downgrade_8bit_text_becomes_quoted_printable_and_decodes_to_the_original():
    body = "Grüße aus dem Büro \r\n.dot line\r\n" + "ä" * 60 + "\r\n"
    out = to_7bit(TEXT_8BIT + b"Subject: scan\r\n\r\n" + body.encode())
    head, _, encoded = out.partition(b"\r\n\r\n")
    assert out.isascii()
    assert head == TEXT_8BIT.replace(b": 8bit", b": quoted-printable") + b"Subject: scan"
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert quopri.decodestring(encoded.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n") == body.encode()


def test_downgrade_multipart_converts_only_8bit_parts_and_relabels_the_container():
    message = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"b1\"\r\n"
               b"Content-Transfer-Encoding: 8bit\r\n\r\npreamble\r\n--b1\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\ncontent-transfer-encoding:  8BIT \r\n\r\ncaf\xc3\xa9\r\n"
               b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
               b"--b1\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--b1--\r\nepilogue\r\n")
    out = to_7bit(message)
    assert out == message.replace(b"Content-Transfer-Encoding: 8bit\r\n\r\npre",
                                  b"Content-Transfer-Encoding: 7bit\r\n\r\npre").replace(
        b"content-transfer-encoding:  8BIT \r\n\r\ncaf\xc3\xa9\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n")


def test_downgrade_leaves_non_mime_base64_binary_and_header_bytes_alone():
    non_mime = b"Subject: caf\xc3\xa9\r\n\r\ncaf\xc3\xa9\r\n"
    assert to_7bit(non_mime) == non_mime
    binary = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: binary\r\n\r\n\xff\xfe\r\n"
    assert to_7bit(binary) == binary
    header_only = b"MIME-Version: 1.0\r\nSubject: caf\xc3\xa9\r\n\r\nascii\r\n"
    assert to_7bit(header_only) == header_only


def test_downgrade_message_rfc822_is_converted_inside():
    inner = TEXT_8BIT + b"\r\n\xe9t\xe9\r\n"
    outer = b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + inner
    out = to_7bit(outer)
    assert out.isascii() and out.endswith(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=E9t=E9\r\n")
    assert b"message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n" in out


def test_downgrade_nesting_deeper_than_the_limit_is_left_as_it_is():
    message = TEXT_8BIT + b"\r\n\xe9\r\n"
    for _ in range(MAX_MIME_DEPTH + 1):
        message = b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + message
    assert to_7bit(message) == message


@settings(max_examples=200)
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n")))
def test_downgrade_any_8bit_body_round_trips_through_quoted_printable(body):
    out = to_7bit(TEXT_8BIT + b"\r\n" + body)
    head, _, encoded = out.partition(b"\r\n\r\n")
    if body.isascii():
        assert out == TEXT_8BIT + b"\r\n" + body
        return
    assert out.isascii() and b"\n" not in encoded.replace(b"\r\n", b"")
    assert quopri.decodestring(encoded.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n") == body
