"""bounce: RFC 3464 DSNs parse with stdlib email, carry the right fields, never loop (G6)."""

import email
import email.policy
import re

from hypothesis import given, settings, strategies as st

from mta_lite.qmgr import bounce
from mta_lite.qmgr.bounce import (NOTICE_NONE, NOTICE_POSTMASTER, NOTICE_SENDER, DsnRequest,
                                  FailedRecipient, build_dsn, choose_notice, failed_from_reply,
                                  header_block, status_of)
from mta_lite.qmgr.notices import load_template
from mta_lite.reply import Reply

from tests.support.qmgr import CONTENT, make_config

NOW = 1_700_000_000.0
TEMPLATE = load_template(make_config("/tmp"))


def _request(**over):
    fields = dict(hostname="relay.lan.test", queue_id="18B5A4E2C1D00ABC", sender="alice@example.com",
                  to="alice@example.com", arrival=NOW - 3600, now=NOW,
                  failed=(failed_from_reply("bob@example.org", Reply(550, "5.1.1", "no such user"),
                                            "smtp.isp.example[192.0.2.1]:587"),))
    fields.update(over)
    return DsnRequest(**fields)


def _parse(dsn: bytes):
    return email.message_from_bytes(dsn, policy=email.policy.default)


def _parts(dsn: bytes):
    return list(_parse(dsn).iter_parts())


def test_dsn_is_a_multipart_report_with_three_parts():
    msg = _parse(build_dsn(_request(), CONTENT, TEMPLATE))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not msg.defects


def test_dsn_top_headers():
    msg = _parse(build_dsn(_request(), CONTENT, TEMPLATE))
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@relay.lan.test>"
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].endswith("@relay.lan.test>") and "18B5A4E2C1D00ABC" in msg["Message-ID"]
    assert msg["Date"].datetime.timestamp() == NOW


def test_dsn_uses_crlf_line_endings_only():
    dsn = build_dsn(_request(), CONTENT, TEMPLATE)
    assert re.search(rb"(?<!\r)\n", dsn) is None and re.search(rb"\r(?!\n)", dsn) is None


def test_delivery_status_part_fields():
    status = _parts(build_dsn(_request(), CONTENT, TEMPLATE))[1]
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.lan.test"
    assert per_message["Arrival-Date"] == bounce.rfc5322_date(NOW - 3600)
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.org"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; smtp.isp.example"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"


def test_one_block_per_failed_recipient_and_no_remote_mta_when_none_reached():
    failed = (failed_from_reply("a@x.example", Reply(550, "5.1.1", "unknown"), "none"),
              failed_from_reply("b@x.example", Reply(552, "5.2.2", "mailbox full"), "none"))
    blocks = _parts(build_dsn(_request(failed=failed), CONTENT, TEMPLATE))[1].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; a@x.example", "rfc822; b@x.example"]
    assert [b["Status"] for b in blocks[1:]] == ["5.1.1", "5.2.2"]
    assert all(b["Remote-MTA"] is None for b in blocks[1:])


def test_returned_headers_part_has_headers_but_never_the_body():
    part = _parts(build_dsn(_request(), CONTENT, TEMPLATE))[2]
    text = part.get_payload() if isinstance(part.get_payload(), str) else part.as_string()
    raw = build_dsn(_request(), CONTENT, TEMPLATE)
    assert "Subject: quarterly report" in text and "Message-ID: <m1@example.com>" in text
    assert b"SECRET-BODY-TEXT" not in raw


def test_owner_template_file_is_used_when_configured(tmp_path):
    (tmp_path / "bounce-de.txt").write_text("Nicht zustellbar: $recipients\n", encoding="utf-8")
    cfg = make_config(str(tmp_path), bounce_template="bounce-de.txt")
    assert load_template(cfg) == "Nicht zustellbar: $recipients\n"


def test_human_text_fills_the_default_template():
    text = _parts(build_dsn(_request(), CONTENT, TEMPLATE))[0].get_content()
    assert "relay.lan.test" in text and "18B5A4E2C1D00ABC" in text
    assert "<bob@example.org>: host smtp.isp.example said: 550 5.1.1 no such user" in text
    assert "$" not in text


def test_owner_template_in_another_language_is_encoded_and_decodes_back():
    template = "Ihre Nachricht an\n$recipients\nkonnte nicht zugestellt werden: $reason — Grüße, $hostname\n$typo\n"
    dsn = build_dsn(_request(), CONTENT, template)
    assert dsn.isascii()                                # quoted-printable: no 8BITMIME needed
    text = _parts(dsn)[0].get_content()
    assert "Grüße, relay.lan.test" in text and "550 5.1.1 no such user" in text
    assert "$typo" in text                              # a misspelt placeholder stays, no crash


def test_hostile_reply_text_cannot_add_a_header_or_part():
    evil = Reply(550, "5.7.1", "no\r\nX-Injected: yes\r\n\r\n--boundary\r\nContent-Type: text/html")
    dsn = build_dsn(_request(failed=(failed_from_reply("b@x.example", evil, "h[1.2.3.4]:25"),)),
                    CONTENT, TEMPLATE)
    msg = _parse(dsn)
    assert len(list(msg.iter_parts())) == 3
    blocks = list(msg.iter_parts())[1].get_payload()
    assert blocks[1]["X-Injected"] is None and "X-Injected: yes" in blocks[1]["Diagnostic-Code"]


def test_undecodable_bytes_in_a_reply_or_address_do_not_break_the_dsn():
    failed = (failed_from_reply("x\udcff@y.example", Reply(550, "5.1.1", "bad \udcff bytes"), "none"),)
    msg = _parse(build_dsn(_request(failed=failed), CONTENT, TEMPLATE))
    assert "bad ? bytes" in list(msg.iter_parts())[1].get_payload()[1]["Diagnostic-Code"]


def test_boundary_is_absent_from_returned_headers_crafted_to_contain_it():
    req = _request()
    base = f"{req.queue_id}.{int(req.now)}/{req.hostname}"
    content = f"Subject: x\r\nX-Trap: --{base}\r\n\r\nbody\r\n".encode()
    msg = _parse(build_dsn(req, content, TEMPLATE))
    assert len(list(msg.iter_parts())) == 3 and not msg.defects


def test_header_block_stops_at_the_empty_line_and_at_the_size_limit():
    assert header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n") == b"A: 1\r\nB: 2\r\n"
    assert header_block(b"\r\nbody only\r\n") == b""
    assert header_block(b"A: 1\r\nB: 2") == b"A: 1\r\nB: 2\r\n"
    long = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 60) for i in range(2000))
    cut = header_block(long, limit=1000)
    assert len(cut) <= 1000 and cut.endswith(b"\r\n") and cut.count(b"\r\n") == len(cut.splitlines())


def test_expired_recipient_is_reported_with_4_4_7():
    failed = (FailedRecipient("b@x.example", "4.4.7", "message expired in queue (last error: 451 4.3.0 later)",
                              "451 4.3.0 later"),)
    block = _parts(build_dsn(_request(failed=failed), CONTENT, TEMPLATE))[1].get_payload()[1]
    assert (block["Action"], block["Status"]) == ("failed", "4.4.7")
    assert block["Diagnostic-Code"] == "smtp; 451 4.3.0 later"


def test_postmaster_notice_subject_and_note():
    req = _request(to="postmaster@lan.test", sender="", kind=NOTICE_POSTMASTER, note="Postmaster notice: x")
    msg = _parse(build_dsn(req, CONTENT, TEMPLATE))
    assert msg["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert list(msg.iter_parts())[0].get_content().startswith("Postmaster notice: x")


def test_status_of_falls_back_to_the_class_code():
    assert status_of(Reply(550, "5.1.1", "x")) == "5.1.1"
    assert status_of(Reply(554, "", "x")) == "5.0.0"
    assert status_of(Reply(451, "bogus", "x")) == "4.0.0"
    assert status_of(Reply(250, "2.0.0", "ok")) == "2.0.0"


# ---------------------------------------------------------------- who gets a notice (G6)

def test_notice_goes_to_the_original_sender():
    assert choose_notice("alice@example.com", False, ["b@x"], "pm@lan") == \
        bounce.Notice("alice@example.com", NOTICE_SENDER)


def test_no_notice_for_the_null_sender():
    notice = choose_notice("", False, ["b@x"], "pm@lan")
    assert notice.kind == NOTICE_NONE and notice.to == ""


def test_failed_notice_goes_to_the_postmaster_as_a_double_bounce():
    notice = choose_notice("", True, ["alice@example.com"], "pm@lan")
    assert (notice.to, notice.kind) == ("pm@lan", NOTICE_POSTMASTER)


def test_failed_postmaster_notice_is_dropped_never_looped():
    notice = choose_notice("", True, ["PM@lan"], "pm@lan")
    assert notice.kind == NOTICE_NONE and "discarded" in notice.why


def test_unqualified_sender_notice_goes_to_the_postmaster():
    notice = choose_notice("scanner", False, ["b@x"], "pm@lan")
    assert (notice.to, notice.kind) == ("pm@lan", NOTICE_SENDER) and "unqualified" in notice.why


_HEADER_LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                       max_size=100)
_PEER_TEXT = st.text(st.characters(), max_size=300)          # surrogates included


@settings(max_examples=150, deadline=None)
@given(text=_PEER_TEXT, rcpt=st.text(st.characters(), min_size=1, max_size=80),
       lines=st.lists(_HEADER_LINE, max_size=8))
def test_any_reply_recipient_or_headers_give_a_well_formed_dsn(text, rcpt, lines):
    head = "".join(line + "\r\n" for line in lines).encode("utf-8")
    failed = (failed_from_reply(rcpt, Reply(550, "5.1.1", text), "h[192.0.2.1]:25"),)
    dsn = build_dsn(_request(failed=failed), head + b"\r\nbody\r\n", TEMPLATE + text)
    assert re.search(rb"(?<!\r)\n", dsn) is None and re.search(rb"\r(?!\n)", dsn) is None
    assert all(len(line) <= 998 for line in dsn.split(b"\r\n"))
    kinds = [p.get_content_type() for p in _parse(dsn).iter_parts()]
    assert len(kinds) == 3 and kinds[0] == "text/plain"
    assert kinds[1] in ("message/delivery-status", "message/global-delivery-status")
    assert kinds[2] in ("text/rfc822-headers", "message/global-headers")
