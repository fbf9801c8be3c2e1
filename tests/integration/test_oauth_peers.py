"""The OAuth2 peers prove themselves: the loopback authorization server's grants, introspection,
revocation and fault modes over real HTTPS, and the chain token → Postfix → Dovecot →
introspection → Maildir with a minimal XOAUTH2 / OAUTHBEARER client written here (aiosmtplib's
``execute_command``, so the 334 challenge is seen as the relay will see it).

These tests are the contract the relay's OAuth2 tests rely on: a good token delivers on both
ports with both mechanisms; an expired, a revoked and a wrong-user token get the decoded JSON
challenge and then 535 5.7.8; a rotated refresh token is dead after its one use.
"""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiosmtplib
import pytest

from tests.support.oauthfixtures import *  # noqa: F403 (the OAuth2 peer fixtures)
from tests.support.oauthstore import GRANT_DEVICE
from tests.support.peers import poll_until

pytestmark = pytest.mark.integration

USER = "alice@example.test"
OTHER_USER = "bob@example.test"
SCOPE = "https://outlook.office365.com/.default"
XOAUTH2_CHALLENGE = {"status": "401", "schemes": "bearer", "scope": "mail"}
OAUTHBEARER_CHALLENGE = {"status": "invalid_token"}
HTTP_TIMEOUT_S = 10.0


# -- a minimal HTTP client for the authorization server --------------------------------------

def post(server, path: str, form: dict, auth: tuple[str, str] | None = None,
         timeout: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    """POST ``form`` to the server's main (HTTPS) listener, verifying its test CA."""
    request = urllib.request.Request(
        f"{server.base_url}{path}", data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    if auth is not None:
        basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    context = ssl.create_default_context(cafile=str(server.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def token_request(server, form: dict, auth=None) -> tuple[int, dict]:
    status, body = post(server, "/token", form, auth)
    return status, json.loads(body)


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
