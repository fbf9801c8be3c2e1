"""OAuth2 to a smarthost that refuses a token with a bare `535` and no `334` challenge first, the
shape reported for Microsoft 365: a good token delivers; an expired one is replaced once and the
retry delivers; a wrong-user token is replaced once, refused again, and the account pauses
(S5) with the mail deferred, never bounced, and no storm of logins.

Peers: tests/support/oauthserver.py (the authorization server), tests/support/oauthbare535.py
(aiosmtpd with STARTTLS, checking tokens at that server in-process). Needs no Postfix.
Config, relay and helpers are the ones of tests/integration/test_oauth_relay.py.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.test_oauth_relay import (OTHER_USER, USER, clients, deferred_with,  # noqa: F401
                                                delivered, delivered_then_token_expired, failed_logins,
                                                oauth_config, oauth_relay, send, server, wait_delivered)
from tests.support.oauthbare535 import REFUSAL, Bare535Smarthost
from tests.support.oauthfixtures import *  # noqa: F403 (the OAuth2 peer fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture
def smarthost(oauth_server_module):
    with Bare535Smarthost(oauth_server_module) as peer:
        yield peer


@pytest.mark.deployed
def test_good_token_delivers_through_the_bare_535_smarthost(server, smarthost, oauth_relay, deployed):
    relay = oauth_relay(oauth_config(server, smarthost))
    got = wait_delivered(smarthost, send(relay))
    assert (got.sasl_username, got.mechanism) == (USER, "XOAUTH2")
    assert smarthost.logins() == (1, 0)
    assert "status=sent" in relay.log()


@pytest.mark.deployed
def test_expired_token_gets_a_bare_535_then_one_new_token_delivers(server, smarthost, oauth_relay, deployed):
    relay, expired = delivered_then_token_expired(server, smarthost, oauth_relay)
    assert expired
    relay.start()               # with the token kept in its store, now expired at the server
    asked = server.grants["client_credentials"]
    got = wait_delivered(smarthost, send(relay))
    assert got.sasl_username == USER
    assert smarthost.logins() == (2, 1)     # one bare refusal, one new token, one retry
    assert server.grants["client_credentials"] == asked + 1
    assert [ok for _, _, ok in smarthost.attempts] == [True, False, True]
    log = relay.log()
    assert "refused the token" in log and REFUSAL in log
    assert "the token is invalid or expired" not in log     # no challenge came to say so


@pytest.mark.deployed
def test_wrong_user_token_gets_bare_535_twice_then_the_account_pauses(server, smarthost, oauth_relay, deployed):
    relay = oauth_relay(oauth_config(server, smarthost, user=OTHER_USER))     # token acts as USER
    asked = server.grants["client_credentials"]
    ids = [send(relay)]                     # one message, one connection: an exact count
    deferred_with(relay, "token refused", n=1)
    # The first token and its one replacement, each refused with a bare 535; then no more.
    assert smarthost.attempts == [("XOAUTH2", OTHER_USER, False)] * 2
    assert server.grants["client_credentials"] == asked + 2
    ids += [send(relay) for _ in range(2)]  # mail for a paused account waits without a login
    items = deferred_with(relay, "token refused", n=3)
    refused = failed_logins(smarthost)
    assert refused == 2 and smarthost.logins()[0] == 0
    time.sleep(3)                           # several retry periods (1-2 s): the account stays paused
    assert failed_logins(smarthost) == refused
    assert all(delivered(smarthost, i) is None for i in ids)
    assert sorted(i["id"] for i in relay.queue()) == sorted(i["id"] for i in items)   # deferred, kept
    assert "status=bounced" not in relay.log()
    assert all(REFUSAL in i["last_error"] for i in items)
    why = relay.cli("queue", "why", items[0]["id"]).stdout.decode()
    assert "paused until" in why and "token refused: server" in why and REFUSAL in why, why
    assert "oauth login" in why and "the token is invalid or expired" not in why, why
