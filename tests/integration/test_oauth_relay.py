"""OAuth2 to the smarthost, end to end: a LAN client's mail leaves through a Postfix smarthost
whose Dovecot checks the relay's XOAUTH2 / OAUTHBEARER token by introspection at a real
oauthlib authorization server over verified HTTPS.

Covered: both mechanisms on STARTTLS and implicit TLS; client credentials, refresh token and
the device grant (`mta-lite oauth login` approved through the server's API); an expired,
a revoked and a wrong-user token; the token endpoint down, slow and answering garbage; a
kill -9 of the relay around a refresh; `relay test`'s steps; `queue why` and `status`.
Dovecot's login count shows there is never a storm. Every relay's log, spool (but its own
token store), status and console output are scanned for the tokens and the client secret.

Peers: tests/support/oauthserver.py, tests/support/oauthsmarthost.py (needs root: Postfix).
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from email.utils import make_msgid

import pytest

from tests.support.oauthfixtures import *  # noqa: F403 (the OAuth2 peer fixtures)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

USER = "scanner@example.test"
OTHER_USER = "someone-else@example.test"
SCOPE = "https://outlook.office365.com/.default"
CLIENT_ID = "mta-lite-relay"
CLIENT_SECRET = "cs~Relay-App-Secret-9Vq"
PUBLIC_CLIENT = "mta-lite-box"          # a public client: the device grant, no secret


@pytest.fixture(scope="module")
def clients(oauth_server_module):
    oauth_server_module.add_client(CLIENT_ID, CLIENT_SECRET, SCOPE, mailbox=USER)
    oauth_server_module.add_client(PUBLIC_CLIENT, None, SCOPE)
    return oauth_server_module


@pytest.fixture
def server(clients, oauth_server):
    return oauth_server


def oauth_config(server, smarthost, *, grant="client_credentials", mechanism="xoauth2", implicit=False,
                 user=USER, client_id=CLIENT_ID) -> dict:
    provider = {"grant": grant, "client_id": client_id, "token_url": server.token_url,
                "device_url": server.device_url, "scope": SCOPE, "ca_file": str(server.ca_file)}
    if client_id == CLIENT_ID:
        provider["client_secret"] = CLIENT_SECRET
    return {
        "default_relay": "o365",
        "oauth": {"test": provider},
        "relays": {"o365": {"host": "127.0.0.1", "port": smarthost.implicit_port if implicit else smarthost.port,
                            "tls": "implicit" if implicit else "starttls", "ca_file": str(smarthost.ca_file),
                            "username": user, "auth": mechanism, "oauth": "test", "timeout": "20s"}},
        "queue": {"min_backoff": "1s", "max_backoff": "2s"},
    }


@pytest.fixture
def oauth_relay(relay_factory, server):
    """A relay whose secret scan also looks for every token the server ever issued."""
    def make(config: dict, start: bool = True):
        relay = relay_factory(config, start=False)
        relay.token_sources.append(lambda: list(server.store.tokens))
        return relay.start() if start else relay
    return make


def send(relay, sender: str = "printer@lan.test") -> str:
    message_id = make_msgid(domain="lan.test")
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        client.sendmail(sender, ["someone@remote.example"],
                        f"Message-ID: {message_id}\r\nSubject: scan\r\n\r\nscan attached\r\n")
    return message_id


def delivered(smarthost, message_id: str):
    return next((d for d in smarthost.delivered() if d.message_id == message_id), None)


def wait_delivered(smarthost, message_id: str, timeout: float = 60):
    return wait_until(lambda: delivered(smarthost, message_id), timeout, what=f"{message_id} at the smarthost")


def deferred_with(relay, words: str, n: int = 1):
    def check():
        items = relay.queue()
        return items if len(items) == n and all(words in i["last_error"] for i in items) else None
    return wait_until(check, 60, what=f"{n} deferred with {words!r}")


def active_access_tokens(server, user: str = USER) -> list[str]:
    with server.store.lock:
        return [token for token, record in server.store.tokens.items()
                if record.kind == "access_token" and record.user == user and record.active(time.time())]


def seed_refresh_token(relay, server, user: str = USER) -> str:
    """What `oauth login` leaves: a seed beside the config (used when the relay starts)."""
    tokens = server.issue_token(user, SCOPE, client_id=PUBLIC_CLIENT, refresh=True)
    secrets = os.path.join(relay.etc, "secrets")
    os.makedirs(secrets, mode=0o750, exist_ok=True)
    seed = {"refresh_token": tokens["refresh_token"], "obtained_at": time.time()}
    with open(os.path.join(secrets, "oauth-test.json"), "w") as handle:
        json.dump(seed, handle)
    return tokens["refresh_token"]


def failed_logins(smarthost) -> int:
    return smarthost.logins()[1]


def started_from_login_seed(server, smarthost, oauth_relay):
    """A relay on the refresh-token grant, seeded as `oauth login` leaves it, started, one
    message delivered; returns the relay and the seed's refresh token."""
    relay = oauth_relay(oauth_config(server, smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT),
                        start=False)
    refresh = seed_refresh_token(relay, server)
    relay.start()
    wait_delivered(smarthost, send(relay))
    return relay, refresh


def delivered_then_token_expired(server, smarthost, oauth_relay):
    """A relay that delivered one message and stopped (no pooled connection: the next
    delivery logs in anew), whose kept access tokens are then expired at the server;
    returns the stopped relay and the tokens expired."""
    relay = oauth_relay(oauth_config(server, smarthost))
    wait_delivered(smarthost, send(relay))
    relay.stop()
    expired = active_access_tokens(server)
    for token in expired:
        server.expire(token)
    return relay, expired


# ---------------------------------------------------------------- grants and mechanisms

@pytest.mark.deployed
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_client_credentials_token_delivers(server, oauth_smarthost, oauth_relay, mechanism, implicit, deployed):
    relay = oauth_relay(oauth_config(server, oauth_smarthost, mechanism=mechanism, implicit=implicit))
    message_id = send(relay)
    got = wait_delivered(oauth_smarthost, message_id)
    assert got.sasl_username == USER
    assert f"relay=127.0.0.1[127.0.0.1]:" in relay.log() and "status=sent" in relay.log()


@pytest.mark.deployed
def test_refresh_token_from_login_seed_delivers_and_rotation_is_kept(server, oauth_smarthost, oauth_relay,
                                                                      deployed):
    relay, first = started_from_login_seed(server, oauth_smarthost, oauth_relay)
    assert not server.store.active(first)           # rotated away by the relay's refresh
    relay.stop()
    relay.start()                                   # the rotated token is what it restarts with
    for token in active_access_tokens(server):
        server.expire(token)
    wait_delivered(oauth_smarthost, send(relay))


@pytest.mark.deployed
def test_device_login_stores_tokens_and_mail_flows(server, oauth_smarthost, oauth_relay, deployed):
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT,
                                     mechanism="oauthbearer"), start=False)
    login = subprocess.Popen([sys.executable, "-m", "mta_lite.cli", "-c", relay.config_path, "oauth", "login",
                              "test"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in login.stdout:                       # streamed: the code comes before the result
        lines.append(line)
        if "enter the code" in line:
            break
    code = lines[-1].rsplit(" ", 1)[-1].strip()
    assert lines[0].startswith(f"To let mta-lite send mail through test, open {server.base_url}/device")
    server.approve(code, USER)
    rest = login.communicate(timeout=60)[0]
    assert login.returncode == 0, "".join(lines) + rest
    assert "approved; tokens stored" in rest
    seed = os.path.join(relay.etc, "secrets", "oauth-test.json")
    assert os.stat(seed).st_mode & 0o777 == 0o640
    relay.start()
    got = wait_delivered(oauth_smarthost, send(relay))
    assert got.sasl_username == USER
    scanned = "".join(lines) + rest
    assert not any(token in scanned for token in server.store.tokens)


@pytest.mark.deployed
def test_imported_refresh_token_from_stdin_delivers_and_is_never_echoed(server, oauth_smarthost, oauth_relay,
                                                                        deployed):
    """Google's way: the refresh token comes from a browser sign-in elsewhere and is imported."""
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT),
                        start=False)
    refresh = server.issue_token(USER, SCOPE, client_id=PUBLIC_CLIENT, refresh=True)["refresh_token"]
    empty = relay.cli("oauth", "import", "test", stdin=b"\n")
    assert empty.returncode == 64 and b"expected one refresh token" in empty.stdout
    result = relay.cli("oauth", "import", "test", stdin=refresh.encode() + b"\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"oauth test: imported; tokens stored" in result.stdout
    assert refresh.encode() not in result.stdout + result.stderr
    relay.start()
    assert wait_delivered(oauth_smarthost, send(relay)).sasl_username == USER
    assert not server.store.active(refresh)         # used, and rotated away


# ---------------------------------------------------------------- refused tokens

@pytest.mark.deployed
def test_expired_token_is_replaced_once_and_mail_flows(server, oauth_smarthost, oauth_relay, deployed):
    relay, _ = delivered_then_token_expired(server, oauth_smarthost, oauth_relay)
    failed = failed_logins(oauth_smarthost)
    relay.start()               # with the token kept in its store, now expired at the server
    wait_delivered(oauth_smarthost, send(relay))
    assert failed_logins(oauth_smarthost) == failed + 1    # one refusal, one new token, one retry
    assert "refused the token" in relay.log() and "the token is invalid or expired" in relay.log()


@pytest.mark.deployed
def test_revoked_refresh_token_pauses_the_account_with_the_providers_words(server, oauth_smarthost, oauth_relay,
                                                                           deployed):
    relay, refresh = started_from_login_seed(server, oauth_smarthost, oauth_relay)
    grant = server.store.tokens[refresh].grant_id   # this login's tokens, not another test's
    current = next(t for t, r in server.store.tokens.items()
                   if r.kind == "refresh_token" and r.grant_id == grant and r.active(time.time()))
    assert current != refresh
    relay.stop()
    server.revoke(current)                          # takes its access tokens with it
    relay.start()
    failed = failed_logins(oauth_smarthost)
    ids = [send(relay) for _ in range(3)]
    items = deferred_with(relay, "token refresh failed: invalid_grant", n=3)
    refused = failed_logins(oauth_smarthost) - failed
    assert 1 <= refused <= 2                        # one per connection opened at once (concurrency 2)
    time.sleep(3)                                   # several retry periods: the account stays paused
    assert failed_logins(oauth_smarthost) == failed + refused
    assert all(delivered(oauth_smarthost, i) is None for i in ids)
    why = relay.cli("queue", "why", items[0]["id"]).stdout.decode()
    assert "paused until" in why and "token refresh failed: invalid_grant" in why, why
    status = relay.cli("status").stdout.decode()
    assert "oauth test: token refresh failed: invalid_grant" in status, status


@pytest.mark.deployed
def test_wrong_user_token_is_retried_once_then_paused(server, oauth_smarthost, oauth_relay, deployed):
    relay = oauth_relay(oauth_config(server, oauth_smarthost, user=OTHER_USER))   # token acts as USER
    failed = failed_logins(oauth_smarthost)
    ids = [send(relay) for _ in range(3)]
    deferred_with(relay, "token refused", n=3)
    refused = failed_logins(oauth_smarthost) - failed
    # The first token and its one replacement, on each connection opened at once (concurrency 2).
    assert 2 <= refused <= 4
    time.sleep(3)                                   # several retry periods: the account stays paused
    assert failed_logins(oauth_smarthost) == failed + refused
    assert all(delivered(oauth_smarthost, i) is None for i in ids)
    items = relay.queue()
    assert "the token is invalid or expired (status 401" in items[0]["last_error"]
    why = relay.cli("queue", "why", items[0]["id"]).stdout.decode()
    assert "paused until" in why and "token refused: server" in why and "oauth login" in why, why


# ---------------------------------------------------------------- the token endpoint failing

@pytest.mark.deployed
@pytest.mark.parametrize("fault, words", [("down", "Connection refused"),
                                          ("garbage", "not an OAuth token response"),
                                          ("garbage_json", "without a token")])
def test_token_endpoint_trouble_defers_without_a_storm(server, oauth_smarthost, oauth_relay, fault, words,
                                                        deployed):
    server.set_fault(fault)
    requests = server.requests["token"]
    relay = oauth_relay(oauth_config(server, oauth_smarthost))
    ids = [send(relay) for _ in range(3)]
    items = deferred_with(relay, words, n=3)
    time.sleep(3)
    if fault != "down":                 # a closed port counts no request
        assert server.requests["token"] - requests == 1
    assert all("token refresh failed" in i["last_error"] for i in items)
    assert all(delivered(oauth_smarthost, i) is None for i in ids)
    server.set_fault(None)
    relay.cli("queue", "flush")
    for message_id in ids:
        wait_delivered(oauth_smarthost, message_id, timeout=90)


def test_slow_token_endpoint_defers_after_its_timeout(server, oauth_smarthost, oauth_relay):
    server.set_fault("slow")
    relay = oauth_relay(oauth_config(server, oauth_smarthost))
    message_id = send(relay)
    deferred_with(relay, "timed out")
    server.set_fault(None)
    relay.cli("queue", "flush")
    wait_delivered(oauth_smarthost, message_id, timeout=90)


# ---------------------------------------------------------------- crashes around a refresh

@pytest.mark.deployed
def test_kill9_after_a_rotation_keeps_the_account(server, oauth_smarthost, oauth_relay, deployed):
    """The rotated refresh token is on disk before the access token is used: kill -9 as soon
    as the delivery it was fetched for is done, start again, refresh again: it works."""
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT),
                        start=False)
    seed_refresh_token(relay, server)
    relay.start()
    for _ in range(3):
        wait_delivered(oauth_smarthost, send(relay))
        relay.kill9()
        for token in active_access_tokens(server):
            server.expire(token)                    # the next start must refresh
        relay.start()
    wait_delivered(oauth_smarthost, send(relay))


def test_kill9_while_the_refresh_request_is_in_flight_keeps_the_account(server, oauth_smarthost, oauth_relay):
    """kill -9 while the token endpoint holds the refresh request: the store still has the
    refresh token it sent, which the provider never replaced, so the next start works."""
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT),
                        start=False)
    sent = seed_refresh_token(relay, server)
    server.set_fault("slow")
    asked = server.grants["refresh_token"]
    relay.start()
    message_id = send(relay)
    wait_until(lambda: server.grants["refresh_token"] > asked, 30, what="the refresh request to arrive")
    relay.kill9()
    server.set_fault(None)                          # the held request is dropped unanswered
    assert server.store.active(sent)
    relay.start()
    wait_delivered(oauth_smarthost, message_id, timeout=90)


def test_kill9_while_the_refresh_is_not_answered_keeps_the_account(server, oauth_smarthost, oauth_relay):
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT),
                        start=False)
    seed_refresh_token(relay, server)
    server.set_fault("down")
    relay.start()
    message_id = send(relay)
    deferred_with(relay, "token refresh failed")
    relay.kill9()
    server.set_fault(None)
    relay.start()
    wait_delivered(oauth_smarthost, message_id, timeout=90)


# ---------------------------------------------------------------- relay test, status

def test_relay_test_shows_token_tls_and_auth(server, oauth_smarthost, oauth_relay):
    relay = oauth_relay(oauth_config(server, oauth_smarthost, mechanism="oauthbearer"), start=False)
    result = relay.cli("relay", "test", "o365")
    out = result.stdout.decode()
    assert result.returncode == 0, out
    lines = out.splitlines()
    assert lines[0] == "token: ok, access token from test (client credentials)"
    assert any(line.startswith("TLS: ok, certificate verified for 127.0.0.1") for line in lines)
    assert f"AUTH: ok, logged in as {USER} with OAUTHBEARER" in lines
    assert not any(token in out for token in server.store.tokens)


def test_relay_test_names_the_token_failure(server, oauth_smarthost, oauth_relay):
    relay = oauth_relay(oauth_config(server, oauth_smarthost), start=False)
    server.set_fault("error")
    out = relay.cli("relay", "test", "o365").stdout.decode()
    assert "token: token refresh failed: invalid_grant: the grant was refused (test fault)" in out, out
    assert "relay o365: FAILED at token" in out


def test_status_shows_token_ok_until_and_warns_of_the_expiring_secret(server, oauth_smarthost, oauth_relay):
    config = oauth_config(server, oauth_smarthost)
    expires = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 10 * 86400))
    config["oauth"]["test"]["client_secret_expires"] = expires
    relay = oauth_relay(config)
    wait_delivered(oauth_smarthost, send(relay))
    def shown():
        text = relay.cli("status").stdout.decode()
        return text if "token ok until" in text else None
    status = wait_until(shown, 30, what="status to show the token")
    assert "oauth test: token ok until" in status
    assert f"oauth test: warning: client secret expires on {expires} (in " in status
    snapshot = relay.status()["relays"][f"o365:{USER}"]["oauth"]
    assert snapshot["failed"] == "" and snapshot["token_until"] > time.time()


# ---------------------------------------------------------------- S7: smtpd's memory

@pytest.mark.deployed
@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
def test_smtpd_memory_holds_no_token_and_no_client_secret(server, oauth_smarthost, oauth_relay, deployed, grant):
    from tests.integration.test_privsep import children, memgrep
    client = CLIENT_ID if grant == "client_credentials" else PUBLIC_CLIENT
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant=grant, client_id=client), start=False)
    if grant == "refresh_token":
        seed_refresh_token(relay, server)
    relay.start()
    wait_delivered(oauth_smarthost, send(relay))        # both halves have done real work
    pids = wait_until(lambda: children(relay), 10, what="smtpd and qmgr processes")
    access = active_access_tokens(server)
    with server.store.lock:
        refresh = [t for t, r in server.store.tokens.items() if r.kind == "refresh_token" and r.active(time.time())]
    secrets = [*access, *refresh] + ([CLIENT_SECRET] if grant == "client_credentials" else [])
    assert memgrep(pids["smtpd"], *secrets) == 0
    assert memgrep(pids["qmgr"], *access) > 0          # the control: the qmgr does hold one


# ---------------------------------------------------------------- from a laptop, over the serial cable

def test_provision_login_over_the_serial_console_streams_the_code_then_mail_flows(server, oauth_smarthost,
                                                                                    oauth_relay, tmp_path):
    from tests.support.board import Board, PtyPair
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT))
    pty = PtyPair(tmp_path)
    pty.start()
    board = Board(tmp_path, pty.a, "--no-leds", "--log-file", relay.log_path, config=relay.config_path,
                  spool=relay.spool)
    board.start()
    try:
        client = subprocess.Popen([sys.executable, "-m", "mta_lite_tools.provision", "--port", pty.b, "login", "test"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in client.stdout:              # the box streams: the code while the login waits
            lines.append(line)
            if "enter the code" in line:
                break
        code = lines[-1].rsplit(" ", 1)[-1].strip()
        assert any(line.startswith(f"To let mta-lite send mail through test, open {server.base_url}/device")
                   for line in lines), lines
        server.approve(code, USER)
        rest = client.communicate(timeout=120)[0]
        assert client.returncode == 0, "".join(lines) + rest
        assert "approved; tokens stored" in rest and rest.rstrip().endswith("OK oauth login of test done")
        got = wait_delivered(oauth_smarthost, send(relay))
        assert got.sasl_username == USER
        seen = "".join(lines).encode() + rest.encode() + board.log()
        assert not [token for token in server.store.tokens if token.encode() in seen]
    finally:
        board.stop()
        pty.stop()


def test_kill9_of_qmgr_right_after_the_rotated_token_left_the_server(server, oauth_smarthost, oauth_relay,
                                                                      monkeypatch):
    """The window no client can close: the provider rotated the refresh token and its answer
    left, and qmgr dies (SIGKILL sent by the server the moment the bytes are written) before it
    stores the new one. Either qmgr stored it in time and mail flows, or the account says
    plainly that a new login is needed; after `oauth login`, mail flows. Never silence."""
    from tests.integration.test_privsep import children
    from tests.support import oauthserver
    relay = oauth_relay(oauth_config(server, oauth_smarthost, grant="refresh_token", client_id=PUBLIC_CLIENT),
                        start=False)
    seed_refresh_token(relay, server)
    relay.start()
    qmgr = wait_until(lambda: children(relay), 10, what="qmgr")["qmgr"]
    armed, original = [True], oauthserver._Handler.do_POST

    def answer_then_kill(handler):
        original(handler)
        if handler.path == "/token" and armed and armed.pop():
            os.kill(qmgr, signal.SIGKILL)               # right after the answer's bytes were written
    monkeypatch.setattr(oauthserver._Handler, "do_POST", answer_then_kill)
    message_id = send(relay)
    wait_until(lambda: not armed, 30, what="the refresh to be answered")
    wait_until(lambda: (c := children(relay)) and c["qmgr"] != qmgr and c, 30, what="the master to restart qmgr")
    relay.cli("queue", "flush")

    def outcome():
        if delivered(oauth_smarthost, message_id):
            return "delivered"
        items = relay.queue()
        return "login needed" if items and "run `mta-lite oauth login test`" in items[0]["last_error"] else None
    if wait_until(outcome, 60, what="delivery or a plain request to log in again") == "delivered":
        return
    login = subprocess.Popen([sys.executable, "-m", "mta_lite.cli", "-c", relay.config_path, "oauth", "login",
                              "test"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code = next(line for line in login.stdout if "enter the code" in line).rsplit(" ", 1)[-1].strip()
    server.approve(code, USER)
    assert login.wait(60) == 0
    wait_delivered(oauth_smarthost, message_id, timeout=120)
