"""The OAuth2 peers prove themselves end to end: the chain token → Postfix → Dovecot →
introspection → Maildir with a minimal XOAUTH2 / OAUTHBEARER client written here (aiosmtplib's
``execute_command``, so the 334 challenge is seen as the relay will see it).

The server's own endpoints are tested in test_oauth_server.py. These tests are the contract the
relay's OAuth2 tests rely on: a good token delivers on both ports with both mechanisms; an
expired, a revoked and a wrong-user token get the decoded JSON challenge and then 535 5.7.8; a
rotated refresh token is dead after its one use.
"""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
import uuid

import aiosmtplib
import pytest

from tests.support.oauthfixtures import *  # noqa: F403 (the OAuth2 peer fixtures)
from tests.support.peers import poll_until

pytestmark = pytest.mark.integration

USER = "alice@example.test"
OTHER_USER = "bob@example.test"
SCOPE = "https://outlook.office365.com/.default"
XOAUTH2_CHALLENGE = {"status": "401", "schemes": "bearer", "scope": "mail"}
OAUTHBEARER_CHALLENGE = {"status": "invalid_token"}


# -- a minimal SMTP client that logs in with a token ------------------------------------------

def initial_response(mechanism: str, user: str, token: str) -> bytes:
    """XOAUTH2's "user=...^Aauth=Bearer ...^A^A" or RFC 7628's gs2 header form, base64."""
    if mechanism == "XOAUTH2":
        text = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:
        text = f"n,a={user},\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(text.encode())


def smtp_login(smarthost, implicit: bool, mechanism: str, user: str, token: str,
               send: bool = False) -> list[tuple[int, str]]:
    """AUTH with a token on one port (see ``_smtp_login``); at most 60 s."""
    return asyncio.run(asyncio.wait_for(
        _smtp_login(smarthost, implicit, mechanism, user, token, send), 60))


async def _smtp_login(smarthost, implicit: bool, mechanism: str, user: str, token: str,
                      send: bool) -> list[tuple[int, str]]:
    """AUTH with a token; the replies seen (a 334 challenge answered as each mechanism wants);
    if the login succeeded and ``send``, one message whose Message-ID is the last item."""
    context = ssl.create_default_context(cafile=str(smarthost.ca_file))
    port = smarthost.implicit_port if implicit else smarthost.starttls_port
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=implicit,
                             start_tls=not implicit, tls_context=context, timeout=30)
    await client.connect()
    try:
        await client.ehlo()
        reply = await client.execute_command(b"AUTH", mechanism.encode(),
                                             initial_response(mechanism, user, token))
        replies = [(reply.code, reply.message)]
        if reply.code == 334:
            answer = b"" if mechanism == "XOAUTH2" else base64.b64encode(b"\x01")
            reply = await client.execute_command(answer)
            replies.append((reply.code, reply.message))
        if reply.code == 235 and send:
            message_id = f"<{uuid.uuid4().hex}@lan.test>"
            await client.sendmail(user, ["someone@ext.test"],
                                  f"From: {user}\r\nMessage-ID: {message_id}\r\n"
                                  "Subject: token test\r\n\r\nscan attached\r\n")
            replies.append((0, message_id))
        return replies
    finally:
        await client.quit()


def delivered_ids(smarthost) -> set[str]:
    return {d.message_id for d in smarthost.delivered()}


# -- the chain --------------------------------------------------------------------------------

@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_good_token_logs_in_and_delivers(oauth_server, oauth_smarthost, implicit,
                                             mechanism):
    token = oauth_server.issue_token(USER, SCOPE)["access_token"]
    replies = smtp_login(oauth_smarthost, implicit, mechanism, USER, token, send=True)
    assert replies[0][0] == 235, replies
    message_id = replies[-1][1]
    poll_until(lambda: message_id in delivered_ids(oauth_smarthost), 30, "the delivery")
    got = next(d for d in oauth_smarthost.delivered() if d.message_id == message_id)
    assert got.sasl_username == USER


def _spoil(server, case: str) -> tuple[str, str]:
    """(user, token) that must be refused: expired, revoked, or issued for another user."""
    token = server.issue_token(USER, SCOPE)["access_token"]
    if case == "expired":
        server.expire(token)
    elif case == "revoked":
        server.revoke(token)
    return (OTHER_USER if case == "wrong-user" else USER), token


@pytest.mark.parametrize("case", ["expired", "revoked", "wrong-user"])
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_refused_token_gets_json_challenge_then_535(oauth_server, oauth_smarthost, case,
                                                   mechanism):
    user, token = _spoil(oauth_server, case)
    failed_before = oauth_smarthost.logins()[1]
    replies = smtp_login(oauth_smarthost, False, mechanism, user, token, send=True)
    assert [code for code, _ in replies] == [334, 535], replies
    challenge = json.loads(base64.b64decode(replies[0][1]))
    assert challenge == (XOAUTH2_CHALLENGE if mechanism == "XOAUTH2" else OAUTHBEARER_CHALLENGE)
    assert replies[1][1].startswith("5.7.8 ")
    poll_until(lambda: oauth_smarthost.logins()[1] == failed_before + 1, 10,
               "Dovecot to log the refused login")


def _grant(server, form: dict, auth=None) -> dict:
    status, body = server.request("/token", form, auth)
    assert status == 200, body
    return json.loads(body)


def test_client_credentials_token_sends_as_the_granted_mailbox(oauth_server, oauth_smarthost):
    oauth_server.add_client("app-cc", "app-secret", SCOPE, mailbox=USER)
    token = _grant(oauth_server, {"grant_type": "client_credentials", "scope": SCOPE},
                   ("app-cc", "app-secret"))["access_token"]
    assert smtp_login(oauth_smarthost, False, "XOAUTH2", USER, token)[0][0] == 235
    assert smtp_login(oauth_smarthost, False, "XOAUTH2", OTHER_USER, token)[-1][0] == 535


def test_device_flow_token_then_its_refreshed_token_log_in(oauth_server, oauth_smarthost):
    oauth_server.add_client("box-df", None, "SMTP.Send offline_access")
    status, body = oauth_server.request("/devicecode", {"client_id": "box-df",
                                                        "scope": "SMTP.Send offline_access"})
    device = json.loads(body)
    oauth_server.approve(device["user_code"], USER)
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": device["device_code"], "client_id": "box-df"}
    first = _grant(oauth_server, poll)
    second = _grant(oauth_server, {"grant_type": "refresh_token", "client_id": "box-df",
                                   "refresh_token": first["refresh_token"]})
    assert smtp_login(oauth_smarthost, True, "OAUTHBEARER", USER, first["access_token"])[0][0] \
        == 235
    assert smtp_login(oauth_smarthost, False, "XOAUTH2", USER, second["access_token"])[0][0] \
        == 235


def test_each_login_asks_the_server_once_and_failures_are_not_slowed(oauth_server,
                                                                      oauth_smarthost):
    """Dovecot's login count is what "never a storm" is asserted on: one introspection per
    login, and repeated failures keep getting 535 (no anvil penalty, no 454 4.7.0)."""
    token = oauth_server.issue_token(USER, SCOPE)["access_token"]
    oauth_server.revoke(token)
    asked_before, (ok_before, failed_before) = (oauth_smarthost.introspections(),
                                                oauth_smarthost.logins())
    for _ in range(5):
        assert smtp_login(oauth_smarthost, False, "XOAUTH2", USER, token)[-1][0] == 535
    good = oauth_server.issue_token(USER, SCOPE)["access_token"]
    assert smtp_login(oauth_smarthost, True, "XOAUTH2", USER, good)[0][0] == 235
    poll_until(lambda: oauth_smarthost.logins() == (ok_before + 1, failed_before + 5), 10,
               "Postfix and Dovecot to log six logins")
    assert oauth_smarthost.introspections() == asked_before + 6
