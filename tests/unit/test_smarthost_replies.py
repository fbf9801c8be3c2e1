"""Unit tests for mta_lite.smarthost.replies: what a smarthost's reply means, how failures
without a reply are worded, and the cleaning of the server's text (pure, no sockets)."""

from __future__ import annotations

import base64
import socket
import ssl

import pytest
from hypothesis import given, settings, strategies as st

from aiosmtplib.errors import SMTPReadTimeoutError, SMTPServerDisconnected
from mta_lite.config.schema import MASK
from mta_lite.maillog import secret_forms
from mta_lite.reply import Reply
from mta_lite.smarthost import replies
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT

RELAY = "smtp.isp.example[192.0.2.1]:587"
PASSWORD = "hunter2-Secret"


# ---------------------------------------------------------------- replies

@pytest.mark.parametrize("code, status", [
    (250, SENT), (251, SENT), (421, DEFER), (450, DEFER), (451, DEFER), (452, DEFER),
    (550, BOUNCE), (552, BOUNCE), (554, BOUNCE), (354, DEFER), (199, DEFER), (-1, DEFER),
])
def test_status_of_only_5xx_bounces(code, status):
    assert replies.status_of(Reply(code, "", "")) == status


def test_server_reply_keeps_the_servers_words_and_names_the_command():
    reply = replies.server_reply(550, "5.1.1 <bob@example.org>: User unknown", "in reply to RCPT TO command")
    assert (reply.code, reply.enhanced) == (550, "5.1.1")
    assert reply.text == "<bob@example.org>: User unknown (in reply to RCPT TO command)"
    assert str(reply) == "550 5.1.1 <bob@example.org>: User unknown (in reply to RCPT TO command)"


def test_server_reply_for_2xx_is_the_bare_reply():
    reply = replies.server_reply(250, "2.0.0 Ok: queued as 4Xyz", "in reply to end of DATA command")
    assert str(reply) == "250 2.0.0 Ok: queued as 4Xyz"


def test_server_reply_without_enhanced_code_gets_the_class_default():
    reply = replies.server_reply(452, "Too many recipients", "in reply to RCPT TO command")
    assert str(reply) == "452 4.0.0 Too many recipients (in reply to RCPT TO command)"


def test_protocol_error_is_transient_and_quotes_the_reply():
    reply = replies.protocol_error(354, "go ahead", "in reply to RCPT TO command")
    assert str(reply) == "451 4.5.0 protocol error: unexpected reply '354 go ahead' (in reply to RCPT TO command)"


@pytest.mark.parametrize("code, text, enhanced", [
    (452, "Too many recipients", "4.0.0"),          # no enhanced code given
    (550, "4.1.1 mixed up", "5.1.1"),               # the reply code's class wins (RFC 3463)
    (451, "4.7.1234 too long", "4.0.0"),
    (554, "5.7.1 blocked", "5.7.1"),
])
def test_enhanced_code_follows_the_reply_code(code, text, enhanced):
    assert replies.enhanced_of(code, text) == enhanced


def test_soften_turns_5xx_into_its_4xx_twin():
    assert replies.soften(Reply(535, "5.7.8", "x")) == Reply(435, "4.7.8", "x")
    assert replies.soften(Reply(454, "4.7.0", "x")) == Reply(454, "4.7.0", "x")


def test_auth_failed_is_transient_and_masks_an_echoed_payload():
    payload = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    secrets = tuple(secret_forms(PASSWORD, ["alice"]))
    reply = replies.auth_failed(535, f"5.7.8 bad credentials {payload} {PASSWORD}", RELAY, secrets)
    assert (reply.code, reply.enhanced) == (435, "4.7.8")
    assert reply.text == f"SASL authentication failed; server {RELAY} said: 535 5.7.8 bad credentials {MASK} {MASK}"


def test_clean_text_joins_lines_replaces_controls_and_caps():
    assert replies.clean_text("5.7.1 first\nsecond\x00\x1b[31m") == "5.7.1 first second??[31m"
    long = replies.clean_text("x" * 5000)
    assert len(long) == replies.MAX_SERVER_TEXT_CHARS + 3 and long.endswith("...")


def test_clean_text_masks_a_secret_that_only_appears_once_lines_are_joined():
    secrets = tuple(secret_forms("correct horse", ["alice"]))
    assert replies.clean_text("535 5.7.8 correct\nhorse rejected", secrets) == f"535 5.7.8 {MASK} rejected"


@settings(max_examples=200)
@given(st.text(max_size=300), st.text(max_size=300),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=8, max_size=20))
def test_clean_text_never_lets_a_secret_or_control_character_through(before, after, password):
    secrets = tuple(secret_forms(password, ["alice@example.test"]))
    payload = base64.b64encode(f"\0alice@example.test\0{password}".encode()).decode()
    text = replies.clean_text(f"{before}{password}{after}{payload}", secrets)
    assert password not in text and payload not in text
    assert not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in text)


# ---------------------------------------------------------------- failures without a reply

def test_certificate_failure_in_the_cause_chain_is_4_7_5_with_the_reason():
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "Hostname mismatch, certificate is not valid for 'smtp.isp.example'."
    wrapped = ConnectionError("Error connecting")
    wrapped.__cause__ = cause
    reply = replies.failure_reply(wrapped, RELAY, "receiving the initial server greeting")
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
    reply = replies.failure_reply(exc, RELAY, "sending RCPT TO")
    assert (reply.code, reply.enhanced, reply.text) == (451, "4.4.2", text)


def test_connect_and_dns_failures_read_like_postfix():
    refused = replies.connect_failure("smtp.isp.example", "192.0.2.1", 587,
                                      ConnectionRefusedError(111, "Connect call failed ('192.0.2.1', 587)"))
    assert (refused.enhanced, refused.text) == ("4.4.1", "connect to smtp.isp.example[192.0.2.1]:587: Connection refused")
    timed_out = replies.connect_failure("smtp.isp.example", "192.0.2.1", 587, TimeoutError())
    assert timed_out.text.endswith(": Connection timed out")
    dns = replies.dns_failure("smtp.isp.example", socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert (dns.code, dns.enhanced) == (451, "4.4.3")
    assert dns.text == "Host or domain name not found. Name service error for name=smtp.isp.example: Name or service not known"
