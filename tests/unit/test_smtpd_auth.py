"""auth: AUTH PLAIN/LOGIN decoding, the session's AUTH states, failure limits, the check."""

from __future__ import annotations

import asyncio
import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.config.schema import User
from mta_lite.passhash import hash_password
from mta_lite.reply import Reply
from mta_lite.smtpd.auth import (MAX_AUTH_FAILURES, Authenticator, AuthRequest, AuthResult, Credentials,
                                 FailureLimit, decode_base64, decode_plain)
from mta_lite.smtpd.policy import SenderPolicy
from mta_lite.smtpd.session import Session, SessionContext

HOST = "relay.lan"
USERS = {"alice": User("alice", hash_password(b"alice-pw", salt=b"0123456789abcdef"),
                       frozenset({"alice@example.com"}))}


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def session(**over) -> Session:
    base = dict(hostname=HOST, client_ip="203.0.113.9", in_mynetworks=False, admin_address="admin@example.com",
                size_limit_bytes=1000, recipient_limit=3, hard_error_limit=20, free_bytes=lambda: 10**9,
                tls_active=True, auth="required", policy=SenderPolicy(HOST, users=USERS))
    base.update(over)
    s = Session(SessionContext(**base))
    s.handle_line(b"EHLO laptop\r\n")
    return s


def say(s: Session, line: str) -> Reply | AuthRequest:
    return s.handle_line(line.encode() + b"\r\n")


def request(s: Session, password: str, user: str = "alice") -> AuthRequest:
    """AUTH PLAIN with these credentials: the session's request to check them."""
    outcome = say(s, "AUTH PLAIN " + plain(user, password))
    assert isinstance(outcome, AuthRequest)
    return outcome


def code(reply: Reply) -> str:
    return f"{reply.code} {reply.enhanced}".strip()


# ---------------------------------------------------------------- decoding

def test_decode_plain_valid_message_gives_credentials():
    assert decode_plain(b"\0alice\0pw") == Credentials("alice", b"pw")
    assert decode_plain(b"alice\0alice\0p\xffw") == Credentials("alice", b"p\xffw")


@pytest.mark.parametrize("message", [b"", b"alice\0pw", b"\0\0pw", b"\0alice\0", b"a\0b\0c\0d",
                                     b"bob\0alice\0pw", b"\0\xff\xfe\0pw"])
def test_decode_plain_malformed_or_proxy_login_is_none(message):
    assert decode_plain(message) is None


@pytest.mark.parametrize("data", [b"YWxpY2U", b"YWxp Y2U=", b"YWxpY2U=\n", b"%%%%", b"YWxpY2U==="])
def test_decode_base64_garbage_is_none(data):
    assert decode_base64(data) is None


@given(st.binary(max_size=300))
def test_decode_plain_arbitrary_bytes_never_raise(message):
    result = decode_plain(message)
    assert result is None or (result.username and result.password)


@given(st.binary(max_size=300))
def test_decode_base64_arbitrary_bytes_never_raise_and_round_trip(data):
    decoded = decode_base64(data)
    assert decoded is None or base64.b64encode(decoded) == data
    assert decode_base64(base64.b64encode(data)) == data


# ---------------------------------------------------------------- the session's AUTH states

def test_ehlo_without_tls_offers_no_auth():
    reply = session(tls_active=False, starttls_available=True).handle_line(b"EHLO x\r\n")
    assert "STARTTLS" in reply.lines and not any(line.startswith("AUTH") for line in reply.lines)


def test_ehlo_under_tls_on_submission_offers_plain_and_login():
    assert "AUTH PLAIN LOGIN" in session().handle_line(b"EHLO x\r\n").lines


def test_ehlo_on_port_25_listener_never_offers_auth():
    assert not any(line.startswith("AUTH") for line in session(auth="none").handle_line(b"EHLO x\r\n").lines)


def test_auth_without_tls_replies_538():
    assert str(say(session(tls_active=False), "AUTH PLAIN " + plain("alice", "alice-pw"))) == \
        "538 5.7.11 Encryption required for requested authentication mechanism"


def test_auth_on_non_submission_listener_replies_503():
    assert code(say(session(auth="none"), "AUTH PLAIN")) == "503 5.5.1"


@pytest.mark.parametrize("line, expected", [("AUTH", "501 5.5.4"), ("AUTH CRAM-MD5", "504 5.5.4"),
                                            ("AUTH PLAIN !!!!", "501 5.5.2")])
def test_auth_bad_command_replies_error_and_no_exchange(line, expected):
    s = session()
    reply = say(s, line)
    assert isinstance(reply, Reply) and code(reply) == expected and not s.auth.in_exchange


def test_mail_before_auth_on_submission_replies_530():
    assert str(say(session(in_mynetworks=True), "MAIL FROM:<alice@example.com>")) == "530 5.7.0 Authentication required"


def test_auth_plain_initial_response_waits_for_the_check():
    s = session()
    assert say(s, "AUTH PLAIN " + plain("alice", "alice-pw")) == \
        AuthRequest("203.0.113.9", "PLAIN", Credentials("alice", b"alice-pw"))


def test_auth_plain_empty_challenge_then_response():
    s = session()
    assert s.handle_line(b"AUTH PLAIN\r\n").to_bytes() == b"334 \r\n"
    assert isinstance(say(s, plain("alice", "alice-pw")), AuthRequest)


def test_auth_login_asks_username_then_password():
    s = session()
    assert say(s, "AUTH LOGIN").to_bytes() == b"334 VXNlcm5hbWU6\r\n"
    assert say(s, b64("alice")).to_bytes() == b"334 UGFzc3dvcmQ6\r\n"
    assert say(s, b64("alice-pw")) == AuthRequest("203.0.113.9", "LOGIN", Credentials("alice", b"alice-pw"))


def test_auth_login_with_initial_username():
    s = session()
    assert say(s, "AUTH LOGIN " + b64("alice")).text == "UGFzc3dvcmQ6"


def test_auth_exchange_star_cancels_with_501():
    s = session()
    say(s, "AUTH LOGIN")
    assert str(say(s, "*")) == "501 5.7.0 Authentication aborted" and not s.auth.in_exchange


def test_auth_exchange_response_is_not_taken_for_a_command():
    s = session()
    say(s, "AUTH LOGIN")
    assert say(s, "QUIT").text == "UGFzc3dvcmQ6" and not s.closing    # "QUIT" was the user name
    assert code(say(s, "RCPT TO:<x@y.example>")) == "501 5.5.2"         # not base64: 501, no RCPT


def test_auth_success_allows_relay_from_outside_mynetworks_and_marks_protocol():
    s = session()
    request(s, "alice-pw")
    assert str(s.auth_checked(AuthResult("alice"))) == "235 2.7.0 Authentication successful"
    assert code(say(s, "MAIL FROM:<alice@example.com>")) == "250 2.1.0"
    assert code(say(s, "RCPT TO:<friend@remote.example>")) == "250 2.1.5"
    assert s.protocol == "ESMTPSA"
    assert code(say(s, "AUTH PLAIN")) == "503 5.5.1"                  # already authenticated


def test_auth_user_mail_from_other_sender_replies_553():
    s = session()
    request(s, "alice-pw")
    s.auth_checked(AuthResult("alice"))
    assert str(say(s, "MAIL FROM:<bob@example.com>")) == \
        "553 5.7.1 <bob@example.com>: Sender address rejected: not owned by user alice"


def test_auth_failures_reply_535_then_421_and_close():
    s = session()
    for _ in range(MAX_AUTH_FAILURES):
        request(s, "wrong")
        assert str(s.auth_checked(AuthResult(None))) == "535 5.7.8 Error: authentication failed"
    assert not s.closing
    assert str(say(s, "AUTH PLAIN")) == f"421 4.7.0 {HOST} Error: too many authentication failures"
    assert s.closing


def test_auth_blocked_client_replies_421_and_close():
    s = session()
    request(s, "alice-pw")
    assert s.auth_checked(AuthResult(None, blocked=True)).code == 421 and s.closing and s.auth.user is None


def test_starttls_resets_login():
    s = session(tls_active=False, starttls_available=True)
    s.auth.user = "alice"          # cannot happen without TLS; the reset must still hold
    s.tls_started()
    assert s.auth.user is None


@settings(max_examples=300)
@given(st.sampled_from(["PLAIN", "LOGIN", "plain", "login"]),
       st.lists(st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b and b"\0" not in b),
                max_size=4))
def test_auth_exchange_arbitrary_responses_always_get_a_reply(mechanism, responses):
    s = session()

    def answered(outcome: Reply | AuthRequest) -> Reply:
        return s.auth_checked(AuthResult(None)) if isinstance(outcome, AuthRequest) else outcome
    replies = [answered(say(s, f"AUTH {mechanism}"))]
    for raw in responses:
        replies.append(answered(s.handle_line(raw + b"\r\n")))
    assert all(isinstance(r, Reply) for r in replies)
    assert s.auth.user is None


# ---------------------------------------------------------------- failure limit and check

def test_failure_limit_blocks_after_three_within_window_then_forgets():
    limit = FailureLimit(limit=3, window_s=600)
    for t in (0, 1, 2):
        assert not limit.blocked("10.0.0.1", t)
        limit.failed("10.0.0.1", t)
    assert limit.blocked("10.0.0.1", 3) and not limit.blocked("10.0.0.2", 3)
    assert limit.blocked("10.0.0.1", 599) and not limit.blocked("10.0.0.1", 601)


def test_failure_limit_success_resets_and_table_is_bounded():
    limit = FailureLimit(limit=2, window_s=600, max_clients=100)
    limit.failed("10.0.0.1", 0)
    limit.succeeded("10.0.0.1")
    limit.failed("10.0.0.1", 1)
    assert not limit.blocked("10.0.0.1", 2)
    for i in range(500):
        limit.failed(f"10.1.{i // 256}.{i % 256}", 3)
    assert len(limit._times) == 100


def test_authenticator_check_counts_failures_per_client_across_sessions():
    now = [0.0]
    authenticator = Authenticator(USERS, clock=lambda: now[0])

    async def attempt(password: str) -> Reply:
        s = session()
        return s.auth_checked(await authenticator.check(request(s, password)))

    async def main() -> list[str]:
        return [code(await attempt(p)) for p in ("x", "y", "z", "alice-pw")]
    assert asyncio.run(main()) == ["535 5.7.8", "535 5.7.8", "535 5.7.8", "421 4.7.0"]
    now[0] = 601.0
    assert code(asyncio.run(attempt("alice-pw"))) == "235 2.7.0"


def test_authenticator_unknown_user_fails_like_a_wrong_password():
    s = session()
    result = asyncio.run(Authenticator(USERS, clock=lambda: 0.0).check(request(s, "alice-pw", user="mallory")))
    assert code(s.auth_checked(result)) == "535 5.7.8"
    assert not any(isinstance(value, Credentials) for value in vars(s.auth).values())   # nothing kept (S3)
