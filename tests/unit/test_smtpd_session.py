"""session: the pure SMTP state machine (no sockets, no clock)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.config.schema import Listen
from mta_lite.reply import R354_DATA, Reply
from mta_lite.smtpd.conversation import MultilineReply
from mta_lite.smtpd.session import Session, SessionContext
from tests.support.dialogs import make_config

HOST = "relay.lan"
ADMIN = "admin@example.com"


def ctx(**over) -> SessionContext:
    base = dict(hostname=HOST, client_ip="192.168.1.20", in_mynetworks=True, admin_address=ADMIN,
                size_limit_bytes=1000, recipient_limit=3, hard_error_limit=5,
                free_bytes=lambda: 10**9, reserve_bytes=0)
    base.update(over)
    return SessionContext(**base)


def session(**over) -> Session:
    return Session(ctx(**over))


def say(s: Session, line: str | bytes) -> Reply:
    raw = line if isinstance(line, bytes) else line.encode("utf-8") + b"\r\n"
    return s.handle_line(raw)


def code(reply: Reply) -> str:
    return f"{reply.code} {reply.enhanced}".strip()


def in_tx(**over) -> Session:
    s = session(**over)
    say(s, "EHLO pc.lan")
    assert say(s, "MAIL FROM:<alice@example.com>").code == 250
    return s


# ---------------------------------------------------------------- HELO / EHLO

def test_greeting_names_host():
    assert str(session().greeting()) == f"220 {HOST} ESMTP"


def test_ehlo_advertises_extensions_without_auth_or_starttls():
    reply = say(session(), "EHLO pc.lan")
    assert isinstance(reply, MultilineReply)
    assert reply.lines == (HOST, "PIPELINING", "SIZE 1000", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8")
    assert reply.to_bytes().startswith(f"250-{HOST}\r\n250-PIPELINING\r\n".encode())
    assert reply.to_bytes().endswith(b"250 SMTPUTF8\r\n")


def test_ehlo_with_tls_available_advertises_starttls_until_active():
    s = session(starttls_available=True)
    assert "STARTTLS" in say(s, "EHLO pc").lines
    assert code(say(s, "STARTTLS")) == "220 2.0.0" and s.starttls_pending
    s.tls_started()
    assert s.helo is None and not s.starttls_pending
    assert "STARTTLS" not in say(s, "EHLO pc").lines


def test_ehlo_without_smtputf8_does_not_advertise_it():
    assert "SMTPUTF8" not in say(session(smtputf8=False), "EHLO pc").lines


def test_helo_replies_250_hostname_and_no_pipelining():
    s = session()
    assert str(say(s, "HELO pc")) == f"250 {HOST}"
    assert not s.pipelining_advertised


@pytest.mark.parametrize("name", ["pc\x01lan", "pc\tlan", "pc\x7f", "pc\x85lan", "pc\x1b[31m"])
def test_helo_with_control_chars_replies_501(name):
    s = session()
    assert code(say(s, f"HELO {name}")) == "501 5.5.2"
    assert code(say(s, f"EHLO {name}")) == "501 5.5.2"
    assert s.helo is None


@pytest.mark.parametrize("line", ["HELO", "EHLO   ", "EHLO " + "a" * 256])
def test_helo_without_or_with_overlong_name_replies_501(line):
    assert code(say(session(), line)) == "501 5.5.4"


def test_ehlo_resets_transaction():
    s = in_tx()
    say(s, "EHLO again")
    assert s.tx is None


# ---------------------------------------------------------------- MAIL

def test_mail_before_helo_replies_503():
    assert str(say(session(), "MAIL FROM:<a@b.example>")) == "503 5.5.1 Error: send HELO/EHLO first"


def test_mail_nested_replies_503():
    assert code(say(in_tx(), "MAIL FROM:<x@example.com>")) == "503 5.5.1"


@pytest.mark.parametrize("line, expect", [
    ("MAIL FROM:<a@example.com> SIZE=1001", "552 5.3.4"),
    ("MAIL FROM:<a@example.com> SIZE=1000", "250 2.1.0"),
    ("MAIL FROM:<a@example.com> SIZE=ten", "501 5.5.4"),
    ("MAIL FROM:<a@example.com> SIZE=\u00b2", "501 5.5.4"),
    ("MAIL FROM:<a@example.com> SIZE=" + "9" * 5000, "501 5.5.4"),
    ("MAIL FROM:<a@example.com> BODY=8BITMIME", "250 2.1.0"),
    ("MAIL FROM:<a@example.com> BODY=BINARYMIME", "501 5.5.4"),
    ("MAIL FROM:<a@example.com> AUTH=<>", "555 5.5.4"),
    ("MAIL FROM:<a@example.com> RET=HDRS", "555 5.5.4"),
    ("MAIL FROM:<a@example.com> SMTPUTF8=yes", "555 5.5.4"),
    ("MAIL FROM:<a@example.com> !!", "501 5.5.4"),
    ("MAIL FROM <a@example.com>", "501 5.5.4"),
    ("MAIL TO:<a@example.com>", "501 5.5.4"),
    ("mail from: <a@example.com>", "250 2.1.0"),
    ("MAIL FROM:<>", "250 2.1.0"),
    ("MAIL FROM:<@relay:a@example.com>", "553 5.1.7"),
    ("MAIL FROM:<a\x01@example.com>", "501 5.5.2"),
])
def test_mail_parameters_and_paths(line, expect):
    s = session()
    say(s, "EHLO pc")
    assert code(say(s, line)) == expect


def test_mail_size_over_limit_has_postfix_text():
    s = session()
    say(s, "EHLO pc")
    assert str(say(s, "MAIL FROM:<a@example.com> SIZE=5000")) == "552 5.3.4 Message size exceeds fixed limit"


def test_mail_parameters_after_helo_reply_555():
    s = session()
    say(s, "HELO pc")
    assert code(say(s, "MAIL FROM:<a@example.com> BODY=8BITMIME")) == "555 5.5.4"


def test_mail_utf8_address_needs_smtputf8():
    s = session()
    say(s, "EHLO pc")
    assert code(say(s, "MAIL FROM:<jürgen@example.com>")) == "553 5.1.7"
    assert code(say(s, "MAIL FROM:<jürgen@example.com> SMTPUTF8")) == "250 2.1.0"
    assert s.tx.smtputf8 and s.protocol == "UTF8SMTP"


def test_mail_unqualified_sender_gets_our_hostname():
    s = session()
    say(s, "EHLO pc")
    say(s, "MAIL FROM:<root>")
    assert s.tx.sender == f"root@{HOST}"


@pytest.mark.parametrize("free, expect", [(1499, "452 4.3.1"), (1500, "250 2.1.0")])
def test_mail_with_free_space_below_reserve_plus_one_and_half_limit_replies_452(free, expect):
    s = session(free_bytes=lambda: free + 100, reserve_bytes=100)
    say(s, "EHLO pc")
    assert code(say(s, "MAIL FROM:<a@example.com>")) == expect


def test_mail_when_free_space_unknown_replies_452():
    def broken() -> int:
        raise OSError("statvfs failed")
    s = session(free_bytes=broken)
    say(s, "EHLO pc")
    assert str(say(s, "MAIL FROM:<a@example.com>")) == "452 4.3.1 Insufficient system storage"


# ---------------------------------------------------------------- RCPT

def test_rcpt_without_mail_replies_503():
    s = session()
    say(s, "EHLO pc")
    assert str(say(s, "RCPT TO:<b@example.org>")) == "503 5.5.1 Error: need MAIL command"


def test_rcpt_outside_mynetworks_replies_554_relay_denied():
    s = in_tx(in_mynetworks=False)
    assert str(say(s, "RCPT TO:<Victim@Example.ORG>")) == "554 5.7.1 <Victim@example.org>: Relay access denied"
    assert s.tx.recipients == []
    assert s.reject_log(say(s, "RCPT TO:<x@y.example>")) == (
        "RCPT from [192.168.1.20]: 554 5.7.1 <x@y.example>: Relay access denied; "
        "from=<alice@example.com> to=<x@y.example> proto=ESMTP helo=<pc.lan>")


@pytest.mark.parametrize("rcpt", ["root", "root@localhost", f"postmaster@{HOST.upper()}", "<>",
                                  "a@example.org"])
def test_rcpt_outside_mynetworks_is_never_accepted(rcpt):
    s = in_tx(in_mynetworks=False)
    assert say(s, f"RCPT TO:<{rcpt.strip('<>')}>").code >= 500


def test_rcpt_over_limit_replies_452_and_is_not_an_error():
    s = in_tx()
    for n in range(3):
        assert say(s, f"RCPT TO:<r{n}@example.org>").code == 250
    assert str(say(s, "RCPT TO:<r9@example.org>")) == "452 4.5.3 Error: too many recipients"
    assert s.error_count == 0
    assert len(s.tx.recipients) == 3


@pytest.mark.parametrize("rcpt", ["root", "root@localhost", "Root@LOCALHOST.localdomain",
                                  f"postmaster@{HOST}", "cron@RELAY.LAN"])
def test_rcpt_local_is_rewritten_to_admin(rcpt):
    s = in_tx()
    assert code(say(s, f"RCPT TO:<{rcpt}>")) == "250 2.1.5"
    assert s.tx.recipients == [ADMIN]


def test_rcpt_duplicates_are_collapsed():
    s = in_tx()
    for rcpt in ("root", "root@localhost", "b@example.org", "b@EXAMPLE.org"):
        say(s, f"RCPT TO:<{rcpt}>")
    assert s.tx.recipients == [ADMIN, "b@example.org"]


def test_rcpt_local_without_admin_address_replies_550():
    assert code(say(in_tx(admin_address=""), "RCPT TO:<root>")) == "550 5.1.1"


@pytest.mark.parametrize("path", ["<>", "<@relay.example:v@example.org>", "<v%example.org@relay.lan>",
                                  "<example.org!v@relay.lan>", "<v@[10.0.0.1]>", '<"v@example.org"@relay.lan>',
                                  "<v@-bad-.example>", "<a b@example.org>"])
def test_rcpt_routing_forms_and_bad_syntax_reply_553(path):
    s = in_tx()
    assert code(say(s, f"RCPT TO:{path}")) == "553 5.1.3"
    assert s.tx.recipients == []


@pytest.mark.parametrize("line, expect", [("RCPT TO:<b@example.org> NOTIFY=NEVER", "555 5.5.4"),
                                          ("RCPT FROM:<b@example.org>", "501 5.5.4"),
                                          ("RCPT TO:<b\x02@example.org>", "501 5.5.2")])
def test_rcpt_bad_forms(line, expect):
    assert code(say(in_tx(), line)) == expect


# ---------------------------------------------------------------- DATA and the envelope

def test_data_without_mail_replies_503_and_without_rcpt_554():
    s = session()
    say(s, "EHLO pc")
    assert str(say(s, "DATA")) == "503 5.5.1 Error: need RCPT command"
    say(s, "MAIL FROM:<a@example.com>")
    assert str(say(s, "DATA")) == "554 5.5.1 Error: no valid recipients"


def test_data_with_recipient_replies_354_and_builds_envelope():
    s = in_tx()
    say(s, "RCPT TO:<b@example.org>")
    assert say(s, "DATA") is R354_DATA and s.in_data
    env = s.envelope()
    assert (env.sender, env.recipients, env.client_address, env.client_helo) == (
        "alice@example.com", ["b@example.org"], "192.168.1.20", "pc.lan")
    assert code(s.end_data(Reply(250, "2.0.0", "Ok: queued as X"))) == "250 2.0.0"
    assert s.tx is None and not s.in_data
    assert s.command_stats() == "ehlo=1 mail=1 rcpt=1 data=1 commands=4"


def test_data_with_argument_replies_501():
    s = in_tx()
    say(s, "RCPT TO:<b@example.org>")
    assert code(say(s, "DATA now")) == "501 5.5.4"


def test_end_data_with_protocol_error_closes_and_counts_failure():
    s = in_tx()
    say(s, "RCPT TO:<b@example.org>")
    say(s, "DATA")
    s.end_data(Reply(521, "5.5.2", "Error: bare <LF> received"), close=True)
    assert s.closing
    assert "data=0/1" in s.command_stats()


# ---------------------------------------------------------------- other commands

def test_rset_clears_transaction_and_rejects_arguments():
    s = in_tx()
    assert code(say(s, "RSET x")) == "501 5.5.4"
    assert str(say(s, "RSET")) == "250 2.0.0 Ok" and s.tx is None


def test_noop_vrfy_quit():
    s = session()
    assert str(say(s, "NOOP whatever")) == "250 2.0.0 Ok"
    assert code(say(s, "VRFY root")) == "252 2.0.0"
    assert code(say(s, "VRFY")) == "501 5.5.4"
    assert not s.closing
    assert str(say(s, "QUIT")) == "221 2.0.0 Bye" and s.closing


@pytest.mark.parametrize("setup, expect", [
    (dict(), "502 5.5.1"),
    (dict(starttls_available=True, tls_active=True), "554 5.5.1"),
])
def test_starttls_unavailable_or_active_is_refused(setup, expect):
    s = session(**setup)
    say(s, "EHLO pc")
    assert code(say(s, "STARTTLS")) == expect and not s.starttls_pending


def test_starttls_in_transaction_replies_503():
    s = in_tx(starttls_available=True)
    assert code(say(s, "STARTTLS")) == "503 5.5.1"


def test_auth_replies_503_not_enabled():
    assert str(say(session(), "AUTH PLAIN")) == "503 5.5.1 Error: authentication not enabled"


def test_unknown_command_replies_500():
    s = session()
    assert str(say(s, "XYZZY")) == "500 5.5.2 Error: command not recognized"
    assert s.last_verb == "UNKNOWN" and s.error_count == 1


@pytest.mark.parametrize("line", ["GET / HTTP/1.1", "POST /x", "CONNECT host:25", " EHLO x", "\x16\x03\x01"])
def test_forbidden_or_non_letter_command_replies_221_and_closes(line):
    s = session()
    assert code(say(s, line)) == "221 2.7.0" and s.closing


@pytest.mark.parametrize("raw, text", [(b"NOOP\n", "bare <LF>"), (b"NO\rOP\r\n", "bare <CR>"),
                                       (b"NO\0OP\r\n", "NUL"), (b"NOOP\r\r\n", "bare <CR>"),
                                       (b"NOOP", "bare <LF>")])
def test_command_with_bare_cr_lf_or_nul_replies_521_and_closes(raw, text):
    s = session()
    reply = s.handle_line(raw)
    assert code(reply) == "521 5.5.2" and text in reply.text and s.closing


def test_command_with_bad_utf8_replies_500():
    assert code(session().handle_line(b"EHLO \xff\xfe\r\n")) == "500 5.5.2"


def test_empty_command_replies_500():
    assert code(say(session(), "")) == "500 5.5.2"


def test_overlong_line_replies_500_or_521_for_bare_lf():
    s = session()
    assert str(s.handle_overlong(b"A\r\n"[-2:])) == "500 5.5.2 Error: line too long" and not s.closing
    assert code(s.handle_overlong(b"A\n")) == "521 5.5.2" and s.closing


def test_error_limit_reached_gives_421_with_hostname():
    s = session(hard_error_limit=2)
    say(s, "X1")
    assert s.over_error_limit() is None
    say(s, "X2")
    assert str(s.over_error_limit()) == f"421 4.7.0 {HOST} Error: too many errors" and s.closing


def test_command_stats_show_failures_like_postfix():
    s = session()
    for line in ("EHLO pc", "MAIL FROM:<a@example.com>", "RCPT TO:<@x:y@z.example>", "BOGUS", "QUIT"):
        say(s, line)
    assert s.command_stats() == "ehlo=1 mail=1 rcpt=0/1 quit=1 unknown=0/1 commands=3/5"


@pytest.mark.parametrize("steps, tls, proto", [
    (["HELO pc"], False, "SMTP"), (["EHLO pc"], False, "ESMTP"), (["EHLO pc"], True, "ESMTPS"),
    (["EHLO pc", "MAIL FROM:<a@example.com> SMTPUTF8"], True, "UTF8SMTPS"),
])
def test_protocol_name_follows_helo_tls_and_smtputf8(steps, tls, proto):
    s = session(tls_active=tls)
    for line in steps:
        say(s, line)
    assert s.protocol == proto


def test_received_header_names_single_recipient_only():
    date = datetime(2024, 2, 29, 12, 0, tzinfo=timezone.utc)
    s = in_tx()
    say(s, "RCPT TO:<b@example.org>")
    assert b"\tfor <b@example.org>; Thu, 29 Feb 2024 12:00:00 +0000\r\n" in s.received_header("Q1", date)
    say(s, "RCPT TO:<c@example.org>")
    assert b"for <" not in s.received_header("Q1", date)


# ---------------------------------------------------------------- properties

@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_session_any_command_line_gets_a_reply_never_an_exception(raw):
    s = in_tx()
    reply = s.handle_line(raw + b"\r\n")
    assert isinstance(reply, Reply) and 200 <= reply.code < 600
    assert "Error(" not in reply.text and "Traceback" not in reply.text


@settings(max_examples=300)
@given(st.text(max_size=120))
def test_session_outside_mynetworks_never_accepts_a_recipient(addr):
    s = in_tx(in_mynetworks=False)
    reply = s.handle("RCPT TO:" + addr)
    assert reply.code >= 500 and s.tx.recipients == []


@settings(max_examples=300)
@given(st.text(max_size=100))
def test_session_accepted_recipient_is_plain_and_clean(addr):
    s = in_tx()
    if s.handle(f"RCPT TO:<{addr}>").code == 250:
        rcpt = s.tx.recipients[-1]
        assert rcpt.count("@") == 1 and not any(c in rcpt for c in "%!<>[]\r\n\0")


def test_line_error_after_rcpt_is_not_attributed_to_rcpt():
    s = in_tx()
    say(s, "RCPT TO:<b@example.org>")
    s.handle_line(b"DATA\n")
    assert s.last_verb == "UNKNOWN"


# ---------------------------------------------------------------- bare LF (S2)

def test_bare_lf_command_with_normalize_is_taken_as_crlf_and_noted():
    s = session(normalize_bare_lf=True)
    assert say(s, b"EHLO scanner\n").code == 250
    assert s.bare_lf_seen
    assert say(s, b"MAIL FROM:<a@example.com>\n").code == 250


def test_bare_lf_command_without_normalize_replies_521_and_closes():
    s = session()
    assert code(say(s, b"EHLO scanner\n")) == "521 5.5.2" and s.closing and not s.bare_lf_seen


@pytest.mark.parametrize("raw", [b"EHLO a\rb\n", b"EHLO a\0\n"])
def test_bare_cr_or_nul_with_normalize_still_replies_521(raw):
    s = session(normalize_bare_lf=True)
    assert code(say(s, raw)) == "521 5.5.2" and s.closing


@pytest.mark.parametrize("in_mynetworks, auth, mode, expected", [
    (True, "none", "normalize", True), (False, "none", "normalize", False),
    (True, "required", "normalize", False), (True, "none", "reject", False)])
def test_normalize_only_for_mynetworks_on_a_listener_without_required_auth(in_mynetworks, auth, mode, expected):
    listen = Listen("127.0.0.1", 0, bare_newline=mode, auth=auth)
    cfg = make_config(Path("/nonexistent"), listen=listen,
                      mynetworks=("192.168.1.0/24",) if in_mynetworks else ("10.0.0.0/8",))
    assert SessionContext.from_config(cfg, "192.168.1.20", lambda: 0, listen=listen).normalize_bare_lf is expected


@pytest.mark.parametrize("in_mynetworks, completes", [(True, True), (False, False)])
def test_completes_headers_only_for_mynetworks_or_logged_in_users(in_mynetworks, completes):
    s = session(in_mynetworks=in_mynetworks)
    assert s.completes_headers is completes
    s.auth.user = "alice"
    assert s.completes_headers
