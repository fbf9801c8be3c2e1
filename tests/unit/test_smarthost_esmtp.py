"""Unit tests for mta_lite.smarthost.esmtp: MAIL FROM parameters for the server's EHLO
extensions, unsafe addresses, the SIZE= count (pure, no sockets)."""

from __future__ import annotations

import pytest

from mta_lite.smarthost import esmtp

RELAY = "smtp.isp.example[192.0.2.1]:587"


# ---------------------------------------------------------------- MAIL FROM parameters

EXT = {"size": "10240000", "8bitmime": "", "pipelining": ""}


def test_plan_mail_ascii_message_gets_size_only():
    plan = esmtp.plan_mail(EXT, "a@lan.test", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n", False, RELAY)
    assert plan == esmtp.MailPlan(("SIZE=18",), "ascii")


def test_plan_mail_8bit_body_gets_body_8bitmime_when_offered():
    content = b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n"
    assert "BODY=8BITMIME" in esmtp.plan_mail(EXT, "a@lan.test", ["b@x.org"], content, False, RELAY).options
    assert esmtp.plan_mail({}, "a@lan.test", ["b@x.org"], content, False, RELAY).options == ()


def test_plan_mail_utf8_address_without_smtputf8_offer_bounces_5_6_7():
    reply = esmtp.plan_mail(EXT, "a@lan.test", ["jörg@bücher.example"], b"x\r\n", True, RELAY)
    assert (reply.code, reply.enhanced) == (554, "5.6.7")
    assert reply.text == f"SMTPUTF8 is required, but was not offered by host {RELAY}"


def test_plan_mail_smtputf8_flag_with_ascii_message_needs_no_offer():
    plan = esmtp.plan_mail(EXT, "a@lan.test", ["b@x.org"], b"Subject: plain\r\n\r\nx\r\n", True, RELAY)
    assert plan.encoding == "ascii" and "SMTPUTF8" not in plan.options


def test_plan_mail_utf8_headers_with_smtputf8_offer_use_it():
    plan = esmtp.plan_mail({**EXT, "smtputf8": ""}, "jörg@bücher.example", ["b@x.org"],
                        "Subject: Grüße\r\n\r\nx\r\n".encode(), True, RELAY)
    assert plan.encoding == "utf-8" and plan.options[-1] == "SMTPUTF8"


def test_plan_mail_over_the_servers_size_limit_bounces_5_3_4():
    reply = esmtp.plan_mail({"size": "10"}, "a@lan.test", ["b@x.org"], b"0123456789\r\n", False, RELAY)
    assert (reply.code, reply.enhanced) == (552, "5.3.4")
    assert reply.text == f"message size 12 exceeds size limit 10 of server {RELAY}"


@pytest.mark.parametrize("address, unsafe", [
    ("", False), ("bob@example.org", False), ('"john doe"@example.org', False),
    ("jörg@bücher.example", False), ("bob@example.org> SIZE=1", True), ("bob\r\nRSET@x", True),
    ("bob @example.org", True), ("<bob@example.org>", True),
])
def test_unsafe_address(address, unsafe):
    assert esmtp.unsafe_address(address) is unsafe


def test_wire_size_counts_crlf_and_a_missing_final_crlf():
    assert esmtp.wire_size(b"a\r\nb\r\n") == 6
    assert esmtp.wire_size(b"a\nb") == 6
