"""qmgr rewrite: From: rewriting on bytes (nothing else changes), and rewriting at delivery."""

from __future__ import annotations

import email.parser
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.envelope import Envelope
from mta_lite.identity import Identity
from mta_lite.qmgr.resolve import resolve
from mta_lite.qmgr.rewrite import encode_display, header_fields, original_display, rewrite_message

from tests.support.qmgr import async_test, make_config, running
from tests.support.waiting import wait_until_async

NEW = Identity("printer@example.com")
RECEIVED = b"Received: from pc (unknown [192.168.1.10])\r\n\tby relay.lan (mta-lite) with ESMTP id A1;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"


def test_rewrite_message_replaces_from_and_keeps_original_byte_for_byte():
    msg = RECEIVED + b"From: Printer <root@printer.lan>\r\nTo: bob@example.org\r\nSubject: scan\r\n\r\nbody\r\n"
    assert rewrite_message(msg, NEW) == (
        RECEIVED + b"From: Printer <printer@example.com>\r\nX-Original-From: Printer <root@printer.lan>\r\n"
        b"To: bob@example.org\r\nSubject: scan\r\n\r\nbody\r\n")


def test_rewrite_message_folded_from_is_kept_folded():
    msg = (b"Subject: a\r\nFrom: \"Cron Daemon\"\r\n  (on pi)\r\n\t<root@pi.lan>\r\nTo: x@y.example\r\n"
           b"\r\nFrom: in the body\r\n")
    assert rewrite_message(msg, NEW) == (
        b"Subject: a\r\nFrom: printer@example.com\r\nX-Original-From: \"Cron Daemon\"\r\n  (on pi)\r\n"
        b"\t<root@pi.lan>\r\nTo: x@y.example\r\n\r\nFrom: in the body\r\n")


def test_rewrite_message_folded_display_name_is_unfolded_into_new_from():
    msg = b"From: Cron\r\n Daemon <root@pi.lan>\r\n\r\nx"
    assert rewrite_message(msg, NEW).startswith(b"From: Cron Daemon <printer@example.com>\r\n"
                                                b"X-Original-From: Cron\r\n Daemon <root@pi.lan>\r\n")


def test_rewrite_message_several_from_fields_leave_exactly_one():
    msg = b"From: a@evil.example\r\nSubject: s\r\nfrom : b@evil.example\r\n\r\nbody"
    out = rewrite_message(msg, NEW)
    assert out == (b"From: printer@example.com\r\nX-Original-From: a@evil.example\r\nSubject: s\r\n"
                   b"X-Original-From : b@evil.example\r\n\r\nbody")
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(out)
    assert headers.get_all("From") == ["printer@example.com"]


def test_rewrite_message_without_from_adds_one_after_the_headers():
    msg = RECEIVED + b"Subject: no from\r\n\r\nFrom: body line\r\n"
    assert rewrite_message(msg, NEW) == RECEIVED + b"Subject: no from\r\nFrom: printer@example.com\r\n\r\nFrom: body line\r\n"


def test_rewrite_message_headers_only_without_final_newline_gets_its_own_line():
    assert rewrite_message(b"Subject: x", NEW) == b"Subject: x\r\nFrom: printer@example.com\r\n"


def test_rewrite_message_lf_only_message_stays_lf():
    assert rewrite_message(b"From: a@b.example\nTo: c@d.example\n\nbody\n", NEW) == (
        b"From: printer@example.com\nX-Original-From: a@b.example\nTo: c@d.example\n\nbody\n")


def test_rewrite_message_encoded_word_display_is_kept_as_is():
    msg = b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <root@pi.lan>\r\n\r\n"
    assert rewrite_message(msg, NEW).startswith(b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <printer@example.com>\r\n")


def test_rewrite_message_configured_display_replaces_the_original():
    msg = b"From: Scanner 3000 <scan@scanner.local>\r\n\r\n"
    out = rewrite_message(msg, Identity("scanner@example.com", "Office Scanner"))
    assert out.startswith(b"From: Office Scanner <scanner@example.com>\r\nX-Original-From: Scanner 3000")


def test_rewrite_message_not_a_header_line_ends_the_header_section():
    msg = b"Subject: s\r\nthis is not a header\r\nFrom: x@y.example\r\n"
    assert rewrite_message(msg, NEW) == b"Subject: s\r\nFrom: printer@example.com\r\n" + msg[12:]


def test_original_display_forms():
    assert original_display(b"From: root (Cron Daemon)\r\n") == b'"Cron Daemon"'
    assert original_display(b"From: \"Doe, John\" <j@x.example>\r\n") == b'"Doe, John"'
    assert original_display(b"From: <j@x.example>\r\n") == b""
    assert original_display(b"From: undisclosed:;\r\n") == b""
    assert original_display(b"From: a <b> <c@d.example>\r\n") == b""
    assert original_display(b"From: x@y.example, z@w.example\r\n") == b""


def test_encode_display_plain_quoted_and_encoded_words():
    assert encode_display("Office Scanner") == b"Office Scanner"
    assert encode_display("Office (2nd floor)") == b'"Office (2nd floor)"'
    long = encode_display("Bürodrucker im Erdgeschoss links neben der Küche, Raum 12")
    words = long.split(b" ")
    assert len(words) > 1 and all(w.startswith(b"=?utf-8?b?") and len(w) <= 75 for w in words)
    decoded = email.header.decode_header(long.decode())
    assert b"".join(part for part, _ in decoded).decode() == "Bürodrucker im Erdgeschoss links neben der Küche, Raum 12"


_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,12}", fullmatch=True).filter(lambda n: n.lower() != "from")
_VALUE = st.from_regex(r"[ -~]{0,40}", fullmatch=True)
_FIELD = st.tuples(_NAME, _VALUE, st.lists(_VALUE, max_size=2))


@settings(max_examples=200)
@given(st.lists(_FIELD, max_size=6), st.integers(0, 6), st.lists(_VALUE, max_size=2),
       st.binary(max_size=200), st.sampled_from([b"\r\n", b"\n"]))
def test_rewrite_message_changes_nothing_but_the_from_lines(fields, at, from_folds, body, eol):
    lines = [f"{n}: {v}".encode() + eol + b"".join(b"\t" + f.encode() + eol for f in folds)
             for n, v, folds in fields]
    original_from = b"From: Someone <some@where.example>" + eol + b"".join(b" " + f.encode() + eol for f in from_folds)
    lines.insert(min(at, len(lines)), original_from)
    msg = b"".join(lines) + eol + body
    out = rewrite_message(msg, NEW)
    original = out.index(b"X-Original-From:")
    new_start = out.rfind(b"\n", 0, original - 1) + 1
    new_line = out[new_start:original]
    assert new_line.startswith(b"From: ") and new_line.endswith(b"<printer@example.com>" + eol) or \
        new_line == b"From: printer@example.com" + eol
    assert out[:new_start] + b"From" + out[original + len(b"X-Original-From"):] == msg
    assert header_fields(out)[1] == header_fields(msg)[1] + len(new_line) + len(b"X-Original-")


@given(st.binary(max_size=400))
def test_rewrite_message_arbitrary_bytes_never_raise_and_keep_the_rest(content):
    out = rewrite_message(content, NEW)
    assert b"From: " in out and len(out) >= len(content)


def test_resolve_null_sender_is_never_rewritten(tmp_path):
    cfg = make_config(str(tmp_path), rewrite={"clients": {"0.0.0.0/0": "x@example.com"}})
    assert resolve(cfg, Envelope("", ["a@b.example"], "192.0.2.7")).rewrite is None
    assert resolve(cfg, Envelope("a@b.example", ["c@d.example"], "192.0.2.7")).sender == "x@example.com"


def test_resolve_routes_by_the_rewritten_senders_account(tmp_path):
    cfg = make_config(str(tmp_path), rewrite={"senders": {"root@printer.lan": "scan@work.example"}})
    out = resolve(cfg, Envelope("root@printer.lan", ["a@b.example"], "192.0.2.7"))
    assert (out.sender, out.account) == ("scan@work.example", "work:alice@work.example")
    assert out.route.relay.name == "work" and out.rewrite.rule == "rewrite.senders root@printer.lan"


def test_client_rewrite_skips_a_logged_in_submission(tmp_path):
    """A laptop whose user logged in from a LAN address mapped by [rewrite.clients] keeps
    the user's own sender: the login says who sent it, not the network."""
    cfg = make_config(str(tmp_path), rewrite={"clients": {"192.0.2.0/24": "scan@work.example"}})
    by_client = resolve(cfg, Envelope("me@example.com", ["a@b.example"], "192.0.2.7"))
    assert by_client.account == "work:alice@work.example"      # the scanner's identity
    logged_in = resolve(cfg, Envelope("me@example.com", ["a@b.example"], "192.0.2.7", sasl_username="alice"))
    assert (logged_in.sender, logged_in.account, logged_in.rewrite) == ("me@example.com", "isp", None)


@async_test
async def test_delivery_rewrites_envelope_and_from_but_not_the_queue_file(caplog):
    caplog.set_level("INFO", logger="mta_lite.qmgr")
    content = b"From: Printer <root@printer.lan>\r\nSubject: scan\r\n\r\nbody\r\n"
    async with running(rewrite={"senders": {"root@printer.lan": "Work Printer <printer@work.example>"}}) as h:
        queue_id = h.queue(sender="root@printer.lan", content=content)
        with open(h.spool.path("incoming", queue_id), "rb") as handle:
            queued = handle.read()
        await h.start()
        await wait_until_async(lambda: h.pool.calls)
        await h.settle()
    call = h.pool.calls[0]
    assert (call.account, call.sender) == ("work:alice@work.example", "printer@work.example")
    assert call.content == (b"From: Work Printer <printer@work.example>\r\n"
                            b"X-Original-From: Printer <root@printer.lan>\r\nSubject: scan\r\n\r\nbody\r\n")
    assert content in queued            # the queue file stayed as received
    assert f"{queue_id}: sender rewritten: from=<root@printer.lan> to=<printer@work.example> " \
           f"(rewrite.senders root@printer.lan)" in caplog.text


@async_test
async def test_delivery_local_sender_goes_out_as_admin_address():
    async with running() as h:
        h.queue(sender=f"root@{h.cfg.hostname}", content=b"From: root\r\nSubject: cron\r\n\r\nx\r\n")
        await h.start()
        await wait_until_async(lambda: h.pool.calls)
        await h.settle()
    assert h.pool.calls[0].sender == h.cfg.admin_address
    assert h.pool.calls[0].content.startswith(f"From: {h.cfg.admin_address}\r\nX-Original-From: root\r\n".encode())


@async_test
async def test_delivery_without_rule_sends_content_unchanged():
    async with running() as h:
        h.queue(sender="alice@example.com")
        await h.start()
        await wait_until_async(lambda: h.pool.calls)
        await h.settle()
    from tests.support.qmgr import CONTENT
    assert (h.pool.calls[0].sender, h.pool.calls[0].content) == ("alice@example.com", CONTENT)
