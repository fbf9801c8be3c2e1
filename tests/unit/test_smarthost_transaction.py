"""Unit tests for mta_lite.smarthost.transaction: reply meaning, failure wording, MAIL FROM
parameters, and one Transaction driven by a scripted fake aiosmtplib (no sockets)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl

import pytest
from hypothesis import given, settings, strategies as st

from aiosmtplib.errors import SMTPDataError, SMTPReadTimeoutError, SMTPServerDisconnected
from aiosmtplib.response import SMTPResponse
from mta_lite.config.schema import MASK, Relay, Route, Secret
from mta_lite.maillog import secret_forms
from mta_lite.reply import Reply
from mta_lite.smarthost import transaction as tx
from mta_lite.smarthost.client import Session
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT

RELAY = "smtp.isp.example[192.0.2.1]:587"
PASSWORD = "hunter2-Secret"


# ---------------------------------------------------------------- replies

@pytest.mark.parametrize("code, status", [
    (250, SENT), (251, SENT), (421, DEFER), (450, DEFER), (451, DEFER), (452, DEFER),
    (550, BOUNCE), (552, BOUNCE), (554, BOUNCE), (354, DEFER), (199, DEFER), (-1, DEFER),
])
def test_status_of_only_5xx_bounces(code, status):
    assert tx.status_of(Reply(code, "", "")) == status


def test_server_reply_keeps_the_servers_words_and_names_the_command():
    reply = tx.server_reply(550, "5.1.1 <bob@example.org>: User unknown", "in reply to RCPT TO command")
    assert (reply.code, reply.enhanced) == (550, "5.1.1")
    assert reply.text == "<bob@example.org>: User unknown (in reply to RCPT TO command)"
    assert str(reply) == "550 5.1.1 <bob@example.org>: User unknown (in reply to RCPT TO command)"


def test_server_reply_for_2xx_is_the_bare_reply():
    reply = tx.server_reply(250, "2.0.0 Ok: queued as 4Xyz", "in reply to end of DATA command")
    assert str(reply) == "250 2.0.0 Ok: queued as 4Xyz"


def test_server_reply_without_enhanced_code_gets_the_class_default():
    reply = tx.server_reply(452, "Too many recipients", "in reply to RCPT TO command")
    assert str(reply) == "452 4.0.0 Too many recipients (in reply to RCPT TO command)"


def test_protocol_error_is_transient_and_quotes_the_reply():
    reply = tx.protocol_error(354, "go ahead", "in reply to RCPT TO command")
    assert str(reply) == "451 4.5.0 protocol error: unexpected reply '354 go ahead' (in reply to RCPT TO command)"


@pytest.mark.parametrize("code, text, enhanced", [
    (452, "Too many recipients", "4.0.0"),          # no enhanced code given
    (550, "4.1.1 mixed up", "5.1.1"),               # the reply code's class wins (RFC 3463)
    (451, "4.7.1234 too long", "4.0.0"),
    (554, "5.7.1 blocked", "5.7.1"),
])
def test_enhanced_code_follows_the_reply_code(code, text, enhanced):
    assert tx.enhanced_of(code, text) == enhanced


def test_soften_turns_5xx_into_its_4xx_twin():
    assert tx.soften(Reply(535, "5.7.8", "x")) == Reply(435, "4.7.8", "x")
    assert tx.soften(Reply(454, "4.7.0", "x")) == Reply(454, "4.7.0", "x")


def test_auth_failed_is_transient_and_masks_an_echoed_payload():
    payload = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    secrets = tuple(secret_forms(PASSWORD, ["alice"]))
    reply = tx.auth_failed(535, f"5.7.8 bad credentials {payload} {PASSWORD}", RELAY, secrets)
    assert (reply.code, reply.enhanced) == (435, "4.7.8")
    assert reply.text == f"SASL authentication failed; server {RELAY} said: 535 5.7.8 bad credentials {MASK} {MASK}"


def test_clean_text_joins_lines_replaces_controls_and_caps():
    assert tx.clean_text("5.7.1 first\nsecond\x00\x1b[31m") == "5.7.1 first second??[31m"
    long = tx.clean_text("x" * 5000)
    assert len(long) == tx.MAX_SERVER_TEXT_CHARS + 3 and long.endswith("...")


def test_clean_text_masks_a_secret_that_only_appears_once_lines_are_joined():
    secrets = tuple(secret_forms("correct horse", ["alice"]))
    assert tx.clean_text("535 5.7.8 correct\nhorse rejected", secrets) == f"535 5.7.8 {MASK} rejected"


@settings(max_examples=200)
@given(st.text(max_size=300), st.text(max_size=300),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=8, max_size=20))
def test_clean_text_never_lets_a_secret_or_control_character_through(before, after, password):
    secrets = tuple(secret_forms(password, ["alice@example.test"]))
    payload = base64.b64encode(f"\0alice@example.test\0{password}".encode()).decode()
    text = tx.clean_text(f"{before}{password}{after}{payload}", secrets)
    assert password not in text and payload not in text
    assert not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in text)


# ---------------------------------------------------------------- failures without a reply

def test_certificate_failure_in_the_cause_chain_is_4_7_5_with_the_reason():
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "Hostname mismatch, certificate is not valid for 'smtp.isp.example'."
    wrapped = ConnectionError("Error connecting")
    wrapped.__cause__ = cause
    reply = tx.failure_reply(wrapped, RELAY, "receiving the initial server greeting")
    assert (reply.code, reply.enhanced) == (451, "4.7.5")
    assert reply.text == (f"Server certificate not verified: {RELAY}: "
                          "Hostname mismatch, certificate is not valid for 'smtp.isp.example'.")


@pytest.mark.parametrize("exc, text", [
    (SMTPReadTimeoutError("Timed out waiting for server response"),
     f"conversation with {RELAY} timed out while sending RCPT TO"),
    (SMTPServerDisconnected("Connection lost"), f"lost connection with {RELAY} while sending RCPT TO"),
    (ConnectionResetError(104, "reset"), f"lost connection with {RELAY} while sending RCPT TO"),
])
def test_timeouts_and_lost_connections_are_4_4_2(exc, text):
    reply = tx.failure_reply(exc, RELAY, "sending RCPT TO")
    assert (reply.code, reply.enhanced, reply.text) == (451, "4.4.2", text)


def test_connect_and_dns_failures_read_like_postfix():
    refused = tx.connect_failure("smtp.isp.example", "192.0.2.1", 587,
                                 ConnectionRefusedError(111, "Connect call failed ('192.0.2.1', 587)"))
    assert (refused.enhanced, refused.text) == ("4.4.1", "connect to smtp.isp.example[192.0.2.1]:587: Connection refused")
    timed_out = tx.connect_failure("smtp.isp.example", "192.0.2.1", 587, TimeoutError())
    assert timed_out.text.endswith(": Connection timed out")
    dns = tx.dns_failure("smtp.isp.example", socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert (dns.code, dns.enhanced) == (451, "4.4.3")
    assert dns.text == "Host or domain name not found. Name service error for name=smtp.isp.example: Name or service not known"


# ---------------------------------------------------------------- MAIL FROM parameters

EXT = {"size": "10240000", "8bitmime": "", "pipelining": ""}


def test_plan_mail_ascii_message_gets_size_only():
    plan = tx.plan_mail(EXT, "a@lan.test", ["b@example.org"], b"Subject: x\r\n\r\nhi\r\n", False, RELAY)
    assert plan == tx.MailPlan(("SIZE=18",), "ascii")


def test_plan_mail_8bit_body_gets_body_8bitmime_when_offered():
    content = b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n"
    assert "BODY=8BITMIME" in tx.plan_mail(EXT, "a@lan.test", ["b@x.org"], content, False, RELAY).options
    assert tx.plan_mail({}, "a@lan.test", ["b@x.org"], content, False, RELAY).options == ()


def test_plan_mail_utf8_address_without_smtputf8_offer_bounces_5_6_7():
    reply = tx.plan_mail(EXT, "a@lan.test", ["jörg@bücher.example"], b"x\r\n", True, RELAY)
    assert (reply.code, reply.enhanced) == (554, "5.6.7")
    assert reply.text == f"SMTPUTF8 is required, but was not offered by host {RELAY}"


def test_plan_mail_smtputf8_flag_with_ascii_message_needs_no_offer():
    plan = tx.plan_mail(EXT, "a@lan.test", ["b@x.org"], b"Subject: plain\r\n\r\nx\r\n", True, RELAY)
    assert plan.encoding == "ascii" and "SMTPUTF8" not in plan.options


def test_plan_mail_utf8_headers_with_smtputf8_offer_use_it():
    plan = tx.plan_mail({**EXT, "smtputf8": ""}, "jörg@bücher.example", ["b@x.org"],
                        "Subject: Grüße\r\n\r\nx\r\n".encode(), True, RELAY)
    assert plan.encoding == "utf-8" and plan.options[-1] == "SMTPUTF8"


def test_plan_mail_over_the_servers_size_limit_bounces_5_3_4():
    reply = tx.plan_mail({"size": "10"}, "a@lan.test", ["b@x.org"], b"0123456789\r\n", False, RELAY)
    assert (reply.code, reply.enhanced) == (552, "5.3.4")
    assert reply.text == f"message size 12 exceeds size limit 10 of server {RELAY}"


@pytest.mark.parametrize("address, unsafe", [
    ("", False), ("bob@example.org", False), ('"john doe"@example.org', False),
    ("jörg@bücher.example", False), ("bob@example.org> SIZE=1", True), ("bob\r\nRSET@x", True),
    ("bob @example.org", True), ("<bob@example.org>", True),
])
def test_unsafe_address(address, unsafe):
    assert tx.unsafe_address(address) is unsafe


def test_wire_size_counts_crlf_and_a_missing_final_crlf():
    assert tx.wire_size(b"a\r\nb\r\n") == 6
    assert tx.wire_size(b"a\nb") == 6


# ---------------------------------------------------------------- one transaction, scripted

class FakeSMTP:
    """Stands in for aiosmtplib.SMTP: scripted replies per verb, records what was sent."""

    def __init__(self, script: dict[bytes, list] | None = None, data=(250, "2.0.0 Ok: queued as X"),
                 extensions: dict[str, str] | None = None) -> None:
        self.script, self.data_outcome = script or {}, data
        self.esmtp_extensions = EXT if extensions is None else extensions
        self.sent: list[bytes] = []
        self.is_connected = True

    async def execute_command(self, *args: bytes) -> SMTPResponse:
        self.sent.append(b" ".join(args))
        outcome = self.script.get(args[0], []).pop(0) if self.script.get(args[0]) else (250, "2.0.0 Ok")
        if isinstance(outcome, BaseException):
            self.is_connected = False
            raise outcome
        if outcome[0] == 421:
            self.is_connected = False       # as aiosmtplib does
        return SMTPResponse(*outcome)

    async def data(self, content: bytes) -> SMTPResponse:
        self.sent.append(b"DATA")
        if isinstance(self.data_outcome, BaseException):
            if not isinstance(self.data_outcome, SMTPDataError):
                self.is_connected = False       # timeouts and disconnects close, as aiosmtplib does
            raise self.data_outcome
        if self.data_outcome[0] != 250:
            raise SMTPDataError(*self.data_outcome)
        return SMTPResponse(*self.data_outcome)

    def close(self) -> None:
        self.is_connected = False


class RecordingSession(Session):
    """The real Session, noting the deadline of every step it runs."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.timeouts: list[float | None] = []

    async def run(self, step, timeout_s=None):
        self.timeouts.append(timeout_s)
        return await super().run(step, timeout_s)


def transact(smtp: FakeSMTP, recipients: list[str], content: bytes = b"Subject: x\r\n\r\nx\r\n"):
    route = Route(Relay(name="isp", host="smtp.isp.example", timeout_s=10.0), "alice", Secret(PASSWORD))
    session = RecordingSession(smtp, route, RELAY)
    result = asyncio.run(tx.Transaction(session, "a@lan.test", recipients, content, False).run())
    return result, session


def verbs(smtp: FakeSMTP) -> list[bytes]:
    return [line.split(b" ")[0] for line in smtp.sent]


def test_transaction_all_accepted_all_sent():
    smtp = FakeSMTP()
    result, session = transact(smtp, ["b@x.org", "c@x.org"])
    assert [r.status for r in result.recipients] == [SENT, SENT]
    assert verbs(smtp) == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]
    assert smtp.sent[0] == b"MAIL FROM:<a@lan.test> SIZE=17"
    assert session.alive and result.relay == RELAY


def test_transaction_no_recipient_accepted_sends_rset_not_data():
    smtp = FakeSMTP({b"RCPT": [(550, "5.1.1 no"), (450, "4.2.0 later")]})
    result, session = transact(smtp, ["b@x.org", "c@x.org"])
    assert [r.status for r in result.recipients] == [BOUNCE, DEFER]
    assert verbs(smtp) == [b"MAIL", b"RCPT", b"RCPT", b"RSET"]
    assert session.alive


def test_transaction_421_at_rcpt_defers_everyone_still_pending():
    smtp = FakeSMTP({b"RCPT": [(250, "ok"), (421, "4.3.2 shutting down"), (250, "ok")]})
    result, session = transact(smtp, ["b@x.org", "c@x.org", "d@x.org"])
    assert [r.status for r in result.recipients] == [DEFER, DEFER, DEFER]
    assert all(r.reply.code == 421 for r in result.recipients)
    assert verbs(smtp) == [b"MAIL", b"RCPT", b"RCPT"] and not session.alive


def test_transaction_3xx_at_rcpt_is_a_protocol_error_never_sent():
    smtp = FakeSMTP({b"RCPT": [(354, "go ahead")]})
    result, session = transact(smtp, ["b@x.org"])
    assert [r.status for r in result.recipients] == [DEFER]
    assert result.recipients[0].reply.enhanced == "4.5.0"
    assert b"DATA" not in smtp.sent and not session.alive


def test_transaction_250_instead_of_354_is_not_a_delivery():
    smtp = FakeSMTP(data=SMTPDataError(250, "2.0.0 Ok"))   # aiosmtplib raises when DATA gets no 354
    result, session = transact(smtp, ["b@x.org"])
    assert [r.status for r in result.recipients] == [DEFER] and not session.alive


def test_transaction_unsafe_recipient_bounces_without_going_on_the_wire():
    smtp = FakeSMTP()
    result, _ = transact(smtp, ["bad>@x.org", "b@x.org"])
    assert [r.status for r in result.recipients] == [BOUNCE, SENT]
    assert result.recipients[0].reply.enhanced == "5.1.3"
    assert not any(b"bad" in line for line in smtp.sent)


def test_transaction_data_timeout_grows_with_the_message():
    content = b"x" * 100_000 + b"\r\n"
    _, session = transact(FakeSMTP(), ["b@x.org"], content)
    assert session.timeouts == [None, None, pytest.approx(10.0 + len(content) / tx.MIN_UPLOAD_BYTES_PER_S)]


_RCPT = st.sampled_from([(250, "ok"), (251, "ok"), (450, "4.2.0 busy"), (452, "4.5.3 many"),
                         (550, "5.1.1 unknown"), (553, "5.1.3 bad")])
_DATA = st.sampled_from([(250, "2.0.0 ok"), (451, "4.3.0 later"), (552, "5.3.4 big"), (554, "5.6.0 no"),
                         SMTPReadTimeoutError("timed out"), SMTPServerDisconnected("Connection lost")])


@settings(max_examples=150, deadline=None)
@given(st.lists(_RCPT, min_size=1, max_size=5), _DATA)
def test_transaction_bounces_only_on_a_5xx_and_unknown_outcomes_defer(rcpt_replies, data):
    smtp = FakeSMTP({b"RCPT": list(rcpt_replies)}, data=data)
    recipients = [f"r{i}@x.org" for i in range(len(rcpt_replies))]
    result, _ = transact(smtp, recipients)
    assert [r.recipient for r in result.recipients] == recipients
    for (code, _text), outcome in zip(rcpt_replies, result.recipients):
        if code >= 500:
            assert outcome.status == BOUNCE and outcome.reply.code == code
        elif code >= 400:
            assert outcome.status == DEFER
        elif isinstance(data, BaseException):
            assert outcome.status == DEFER and "may be sent more than once" in outcome.reply.text
        else:
            assert outcome.status == tx.status_of(Reply(data[0])) and outcome.reply.code == data[0]
