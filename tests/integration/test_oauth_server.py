"""The loopback OAuth2 authorization server (tests/support/oauthserver.py) over real HTTPS:
every grant the relay uses (client credentials, refresh with each rotation policy, the RFC 8628
device flow), introspection (RFC 7662) and revocation (RFC 7009) as a resource server and a
client see them, the fault modes, and that its certificate verifies only with its test CA.
"""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from tests.support.oauthfixtures import *  # noqa: F403 (the OAuth2 peer fixtures)
from tests.support.peers import poll_until

pytestmark = pytest.mark.integration

USER = "alice@example.test"
SCOPE = "https://outlook.office365.com/.default"
DELEGATED = "https://outlook.office365.com/SMTP.Send offline_access"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
RESOURCE = ("resource-server", "resource-secret")


def call(server, path: str, form: dict, auth=None) -> tuple[int, dict]:
    status, body = server.request(path, form, auth)
    return status, (json.loads(body) if body else {})


def introspect(server, token: str) -> dict:
    server.add_resource_server(*RESOURCE)
    status, answer = call(server, "/introspect", {"token": token}, RESOURCE)
    assert status == 200
    return answer


def test_client_credentials_with_basic_auth_or_form_secret(oauth_server):
    oauth_server.add_client("cc-app", "cc-secret", SCOPE, mailbox=USER)
    basic = call(oauth_server, "/token", {"grant_type": "client_credentials", "scope": SCOPE},
                 ("cc-app", "cc-secret"))
    posted = call(oauth_server, "/token", {"grant_type": "client_credentials", "scope": SCOPE,
                                           "client_id": "cc-app", "client_secret": "cc-secret"})
    for status, answer in (basic, posted):
        assert status == 200 and answer["token_type"] == "Bearer"
        assert answer["expires_in"] == 3600 and "refresh_token" not in answer
        claims = introspect(oauth_server, answer["access_token"])
        assert claims["active"] is True and claims["username"] == USER
        assert claims["scope"] == SCOPE and claims["exp"] > 0
    wrong = call(oauth_server, "/token", {"grant_type": "client_credentials"},
                 ("cc-app", "not-the-secret"))
    assert wrong == (401, {"error": "invalid_client"})


def test_scope_outside_the_registration_is_refused(oauth_server):
    oauth_server.add_client("narrow", "narrow-secret", SCOPE)
    status, answer = call(oauth_server, "/token", {"grant_type": "client_credentials",
                                                   "scope": "https://mail.google.com/"},
                          ("narrow", "narrow-secret"))
    assert (status, answer["error"]) == (400, "invalid_scope")


def _device_tokens(server, client_id: str, user: str = USER) -> dict:
    status, device = call(server, "/devicecode", {"client_id": client_id, "scope": DELEGATED})
    assert status == 200
    server.approve(device["user_code"], user)
    status, tokens = call(server, "/token", {"grant_type": DEVICE_GRANT, "client_id": client_id,
                                             "device_code": device["device_code"]})
    assert status == 200, tokens
    return tokens


def test_refresh_rotates_and_the_old_refresh_token_then_fails(oauth_server):
    oauth_server.add_client("rot-box", None, DELEGATED)
    first = _device_tokens(oauth_server, "rot-box")
    form = {"grant_type": "refresh_token", "client_id": "rot-box"}
    status, second = call(oauth_server, "/token", form | {"refresh_token": first["refresh_token"]})
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    again = call(oauth_server, "/token", form | {"refresh_token": first["refresh_token"]})
    assert again == (400, {"error": "invalid_grant"})
    status, third = call(oauth_server, "/token", form | {"refresh_token": second["refresh_token"]})
    assert status == 200 and introspect(oauth_server, third["access_token"])["username"] == USER


@pytest.mark.parametrize("policy", ["rotate_keep", "same", "omit"])
def test_refresh_policies_without_strict_rotation(oauth_server_factory, policy):
    server = oauth_server_factory(refresh_policy=policy)
    server.add_client("pol-box", None, DELEGATED)
    first = _device_tokens(server, "pol-box")
    form = {"grant_type": "refresh_token", "client_id": "pol-box",
            "refresh_token": first["refresh_token"]}
    status, second = call(server, "/token", form)
    assert status == 200
    expected = {"rotate_keep": lambda r: r not in (None, first["refresh_token"]),
                "same": lambda r: r == first["refresh_token"], "omit": lambda r: r is None}
    assert expected[policy](second.get("refresh_token"))
    assert call(server, "/token", form)[0] == 200     # the old one still works


def test_device_flow_pending_slow_down_approve_and_single_use(oauth_server):
    oauth_server.store.device_interval_s = 60   # the second poll is always "too soon"
    oauth_server.add_client("df-box", None, DELEGATED)
    status, device = call(oauth_server, "/devicecode", {"client_id": "df-box",
                                                        "scope": DELEGATED})
    assert status == 200 and device["verification_uri"].endswith("/device")
    assert device["interval"] >= 1 and device["expires_in"] > 0
    poll = {"grant_type": DEVICE_GRANT, "client_id": "df-box",
            "device_code": device["device_code"]}
    assert call(oauth_server, "/token", poll) == (400, {"error": "authorization_pending"})
    assert call(oauth_server, "/token", poll) == (400, {"error": "slow_down"})
    oauth_server.approve(device["user_code"], USER)
    status, tokens = call(oauth_server, "/token", poll)
    assert status == 200 and {"access_token", "refresh_token"} <= tokens.keys()
    assert introspect(oauth_server, tokens["access_token"])["username"] == USER
    assert call(oauth_server, "/token", poll) == (400, {"error": "invalid_grant"})


@pytest.mark.parametrize("ending", ["denied", "expired"])
def test_device_flow_denied_or_expired(oauth_server, ending):
    oauth_server.add_client("df-end", None, DELEGATED)
    device = call(oauth_server, "/devicecode", {"client_id": "df-end", "scope": DELEGATED})[1]
    if ending == "denied":
        oauth_server.deny(device["user_code"])
    else:
        oauth_server.expire(device["device_code"])
    answer = call(oauth_server, "/token", {"grant_type": DEVICE_GRANT, "client_id": "df-end",
                                           "device_code": device["device_code"]})
    error = "access_denied" if ending == "denied" else "expired_token"
    assert answer == (400, {"error": error})


def test_revocation_endpoint_revokes_the_grant(oauth_server):
    oauth_server.add_client("rv-box", None, DELEGATED)
    tokens = _device_tokens(oauth_server, "rv-box")
    status, _ = call(oauth_server, "/revoke", {"token": tokens["refresh_token"],
                                               "client_id": "rv-box"})
    assert status == 200
    assert introspect(oauth_server, tokens["access_token"]) == {"active": False}
    refreshed = call(oauth_server, "/token", {"grant_type": "refresh_token", "client_id": "rv-box",
                                              "refresh_token": tokens["refresh_token"]})
    assert refreshed == (400, {"error": "invalid_grant"})


def test_introspection_needs_the_resource_server_credentials(oauth_server):
    token = oauth_server.issue_token(USER, SCOPE, refresh=True)
    assert call(oauth_server, "/introspect", {"token": token["access_token"]})[0] == 401
    assert introspect(oauth_server, token["refresh_token"]) == {"active": False}
    oauth_server.set_access_lifetime(1)
    short = oauth_server.issue_token(USER, SCOPE)
    assert short["expires_in"] == 1


def test_certificate_verifies_only_with_the_test_ca(oauth_server):
    request = urllib.request.Request(oauth_server.token_url, data=b"grant_type=x")
    with pytest.raises(urllib.error.URLError) as raised:
        urllib.request.urlopen(request, context=ssl.create_default_context(), timeout=10)
    assert isinstance(raised.value.reason, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("fault", ["garbage", "garbage_json", "error"])
def test_fault_answers(oauth_server, fault):
    oauth_server.add_client("ft-app", "ft-secret", SCOPE)
    form = {"grant_type": "client_credentials", "scope": SCOPE}
    oauth_server.set_fault(fault)
    status, body = oauth_server.request("/token", form, ("ft-app", "ft-secret"))
    if fault == "garbage":
        assert status == 200
        with pytest.raises(ValueError):
            json.loads(body)
    elif fault == "garbage_json":
        assert status == 200 and "access_token" not in json.loads(body)
    else:
        assert (status, json.loads(body)["error"]) == (400, "invalid_grant")
    oauth_server.set_fault(None)
    assert oauth_server.request("/token", form, ("ft-app", "ft-secret"))[0] == 200


def test_fault_down_refuses_connections_then_comes_back_on_the_same_port(oauth_server):
    oauth_server.add_client("dn-app", "dn-secret", SCOPE)
    form = {"grant_type": "client_credentials", "scope": SCOPE}
    port = oauth_server.port
    oauth_server.set_fault("down")
    with pytest.raises(urllib.error.URLError) as raised:
        oauth_server.request("/token", form, ("dn-app", "dn-secret"))
    assert isinstance(raised.value.reason, ConnectionRefusedError)
    oauth_server.set_fault(None)
    assert oauth_server.port == port
    assert oauth_server.request("/token", form, ("dn-app", "dn-secret"))[0] == 200


def test_fault_slow_outlasts_the_client_timeout(oauth_server):
    oauth_server.add_client("sl-app", "sl-secret", SCOPE)
    oauth_server.set_fault("slow")
    with pytest.raises((TimeoutError, urllib.error.URLError)) as raised:
        oauth_server.request("/token", {"grant_type": "client_credentials"},
                             ("sl-app", "sl-secret"), timeout=1.0)
    reason = getattr(raised.value, "reason", raised.value)
    assert isinstance(reason, TimeoutError)


def test_counters_and_the_issued_hook(oauth_server):
    oauth_server.add_client("ct-app", "ct-secret", SCOPE)
    seen = []
    oauth_server.on_issued = lambda grant, answer: seen.append((grant, answer["access_token"]))
    before = (oauth_server.requests["token"], oauth_server.grants["client_credentials"],
              oauth_server.store.issued["client_credentials"])
    try:
        status, answer = call(oauth_server, "/token", {"grant_type": "client_credentials"},
                              ("ct-app", "ct-secret"))
        call(oauth_server, "/token", {"grant_type": "client_credentials"}, ("ct-app", "bad"))
    finally:
        oauth_server.on_issued = None
    # The hook runs after the answer left, in the server's thread: wait for it.
    poll_until(lambda: seen, 10, "the on_issued hook")
    assert seen == [("client_credentials", answer["access_token"])]
    after = (oauth_server.requests["token"], oauth_server.grants["client_credentials"],
             oauth_server.store.issued["client_credentials"])
    assert after == (before[0] + 2, before[1] + 2, before[2] + 1)
