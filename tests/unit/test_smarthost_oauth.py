"""OAuth2 tokens without a network: the SASL strings, oauthlib's requests and answers, the
token store's durability and seeds, and the TokenManager's reuse, refresh and restraint."""

import asyncio
import base64
import json
import os
import stat

import pytest

from mta_lite.config.load import parse_config
from mta_lite.errors import TokenError
from mta_lite.smarthost.oauth import grants, sasl
from mta_lite.smarthost.oauth.store import TokenRecord, TokenStore
from mta_lite.smarthost.oauth.tokens import FAILURE_HOLD_S, REFRESH_EARLY_S, TokenManager, health

SECRET = "client-secret-Zq9"


def provider(grant="refresh_token", **extra):
    table = {"grant": grant, "client_id": "app-1", "token_url": "https://login.example/token",
             "scope": "mail offline_access", "client_secret": SECRET, **extra}
    cfg = parse_config({"admin_address": "a@example.com", "oauth": {"p": table},
                        "relays": {"r": {"host": "smtp.example"}}}, "t.toml")
    return cfg.oauth["p"]


# ---------------------------------------------------------------- sasl

def test_xoauth2_initial_response_is_googles_format():
    raw = base64.b64decode(sasl.initial_response("xoauth2", "a@b.example", "TOK"))
    assert raw == b"user=a@b.example\x01auth=Bearer TOK\x01\x01"


def test_oauthbearer_initial_response_has_gs2_header_with_escaped_name():
    raw = base64.b64decode(sasl.initial_response("oauthbearer", "a,b=c@d.example", "TOK"))
    assert raw == b"n,a=a=2Cb=3Dc@d.example,\x01auth=Bearer TOK\x01\x01"


def test_challenge_is_decoded_into_plain_words():
    text = base64.b64encode(json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"}).encode()).decode()
    words = sasl.challenge_words(sasl.decode_challenge(text))
    assert words == "the token is invalid or expired (status 401, scheme bearer, scope mail)"
    assert sasl.challenge_words(sasl.decode_challenge("bm90IGpzb24=")) == ""      # "not json"


@pytest.mark.parametrize("code, challenge, invalid", [
    (535, None, True), (535, {"status": "invalid_token"}, True), (454, None, False), (530, None, False)])
def test_says_token_invalid(code, challenge, invalid):
    assert sasl.says_token_invalid(code, challenge) is invalid


def test_secret_forms_cover_token_and_both_initial_responses():
    forms = sasl.secret_forms("u@x.example", "TOKEN123")
    assert "TOKEN123" in forms and sasl.initial_response("oauthbearer", "u@x.example", "TOKEN123").decode() in forms


# ---------------------------------------------------------------- grants

def test_refresh_body_carries_grant_refresh_token_and_client():
    body = grants.refresh_body(provider(), "RT-1")
    assert "grant_type=refresh_token" in body and "refresh_token=RT-1" in body and "client_id=app-1" in body


def test_read_token_gives_expiry_from_expires_in():
    answer = json.dumps({"access_token": "A", "token_type": "Bearer", "expires_in": 600, "refresh_token": "R2"})
    tokens = grants.read_token(200, answer.encode(), now=1000.0)
    assert (tokens.access_token, tokens.expires_at, tokens.refresh_token) == ("A", 1600.0, "R2")
    assert "A" not in repr(tokens)


def test_provider_refusal_is_refused_with_its_words():
    answer = json.dumps({"error": "invalid_grant", "error_description": "AADSTS70008: expired"}).encode()
    with pytest.raises(TokenError) as caught:
        grants.read_token(400, answer, 0)
    assert caught.value.refused and str(caught.value) == "invalid_grant: AADSTS70008: expired"


@pytest.mark.parametrize("status, body", [(200, b"<html>busy</html>"), (502, b"Bad gateway"),
                                          (200, b'{"token_type": "Bearer"}'), (200, b"\xff\xfe")])
def test_garbage_is_transient_and_never_quotes_the_body(status, body):
    with pytest.raises(TokenError) as caught:
        grants.read_token(status, body, 0)
    assert not caught.value.refused and f"HTTP {status}" in str(caught.value)
    assert "busy" not in str(caught.value)


def test_device_authorization_is_read():
    answer = json.dumps({"device_code": "D", "user_code": "ABCD-EFGH", "verification_uri": "https://x/device",
                         "expires_in": 900, "interval": 5}).encode()
    got = grants.read_device_authorization(200, answer)
    assert (got.user_code, got.verification_uri, got.interval) == ("ABCD-EFGH", "https://x/device", 5.0)


# ---------------------------------------------------------------- store

def test_store_saves_0600_and_reads_back(tmp_path):
    (tmp_path / "state").mkdir()
    store = TokenStore(str(tmp_path / "state" / "oauth"))
    store.save("p", TokenRecord("A", 10.0, "R", 5.0))
    assert store.peek("p") == TokenRecord("A", 10.0, "R", 5.0)
    assert stat.S_IMODE(os.stat(store.path("p")).st_mode) == 0o600
    assert [n for n in os.listdir(tmp_path / "state" / "oauth") if n != "p.json"] == []   # no temp left


def test_store_never_makes_the_spool(tmp_path):
    store = TokenStore(str(tmp_path / "spool" / "state" / "oauth"))
    with pytest.raises(FileNotFoundError):
        store.save("p", TokenRecord("A"))
    assert not (tmp_path / "spool").exists()


def test_damaged_store_reads_empty(tmp_path):
    store = TokenStore(str(tmp_path))
    (tmp_path / "p.json").write_bytes(b"{not json")
    assert store.peek("p") == TokenRecord()


def test_newer_seed_is_imported_once_and_older_is_not(tmp_path):
    store = TokenStore(str(tmp_path / "state"), str(tmp_path / "secrets"))
    assert store.load("p") == TokenRecord()                 # no seed, no store
    store.write_seed("p", TokenRecord(refresh_token="SEED-1", obtained_at=100.0))
    assert store.load("p").refresh_token == "SEED-1"
    store.save("p", TokenRecord(refresh_token="ROTATED", seed_obtained_at=100.0))
    assert store.load("p").refresh_token == "ROTATED"        # the same seed is not taken again
    store.write_seed("p", TokenRecord(refresh_token="SEED-2", obtained_at=200.0))
    assert store.load("p").refresh_token == "SEED-2"         # a new login wins


# ---------------------------------------------------------------- the manager

class FakeEndpoint:
    """A token endpoint in memory: rotates refresh tokens; counts requests."""

    def __init__(self, fail=None):
        self.requests, self.fail, self.serial = 0, fail, 0

    async def __call__(self, url, body, ca_file):
        self.requests += 1
        await asyncio.sleep(0)
        if self.fail:
            raise TokenError(self.fail)
        self.serial += 1
        answer = {"access_token": f"A{self.serial}", "token_type": "Bearer", "expires_in": 3600,
                  "refresh_token": f"R{self.serial}"}
        return 200, json.dumps(answer).encode()


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def manager(tmp_path, endpoint, clock, refresh="R0"):
    store = TokenStore(str(tmp_path / "state"))
    if refresh:
        store.save("p", TokenRecord(refresh_token=refresh, refresh_used_at=clock.now))
    return TokenManager(store, clock=clock, post=endpoint), store


def test_token_reused_until_shortly_before_expiry(tmp_path):
    endpoint, clock = FakeEndpoint(), Clock()
    tokens, _ = manager(tmp_path, endpoint, clock)
    assert asyncio.run(tokens.access_token(provider())) == "A1"
    clock.now += 3600 - REFRESH_EARLY_S - 1
    assert asyncio.run(tokens.access_token(provider())) == "A1" and endpoint.requests == 1
    clock.now += 2
    assert asyncio.run(tokens.access_token(provider())) == "A2" and endpoint.requests == 2


def test_rotated_refresh_token_is_on_disk_when_the_token_is_handed_out(tmp_path):
    endpoint, clock = FakeEndpoint(), Clock()
    tokens, store = manager(tmp_path, endpoint, clock)
    asyncio.run(tokens.access_token(provider()))
    on_disk = TokenStore(store.state_dir).peek("p")
    assert (on_disk.refresh_token, on_disk.access_token, on_disk.refresh_used_at) == ("R1", "A1", clock.now)


def test_many_waiting_deliveries_cause_one_request(tmp_path):
    endpoint, clock = FakeEndpoint(), Clock()
    tokens, _ = manager(tmp_path, endpoint, clock)

    async def many():
        return await asyncio.gather(*(tokens.access_token(provider()) for _ in range(20)))
    assert set(asyncio.run(many())) == {"A1"} and endpoint.requests == 1


def test_refused_token_gets_a_new_one_once(tmp_path):
    endpoint, clock = FakeEndpoint(), Clock()
    tokens, _ = manager(tmp_path, endpoint, clock)
    first = asyncio.run(tokens.access_token(provider()))
    assert asyncio.run(tokens.access_token(provider(), refused=first)) == "A2"
    assert asyncio.run(tokens.access_token(provider(), refused=first)) == "A2"    # already replaced
    assert endpoint.requests == 2


def test_failure_is_held_not_repeated(tmp_path):
    endpoint, clock = FakeEndpoint(fail="token endpoint https://login.example/token unreachable: timed out"), Clock()
    tokens, _ = manager(tmp_path, endpoint, clock)
    for _ in range(5):
        with pytest.raises(TokenError):
            asyncio.run(tokens.access_token(provider()))
    assert endpoint.requests == 1
    assert tokens.snapshot(provider())["failed"].endswith("timed out")
    clock.now += FAILURE_HOLD_S + 1
    endpoint.fail = None
    assert asyncio.run(tokens.access_token(provider())) == "A1" and tokens.snapshot(provider())["failed"] == ""


def test_no_refresh_token_is_refused_with_the_login_command(tmp_path):
    tokens, _ = manager(tmp_path, FakeEndpoint(), Clock(), refresh="")
    with pytest.raises(TokenError) as caught:
        asyncio.run(tokens.access_token(provider()))
    assert caught.value.refused and "mta-lite oauth login p" in str(caught.value)


def test_client_credentials_needs_no_store(tmp_path):
    endpoint = FakeEndpoint()
    tokens = TokenManager(None, clock=Clock(), post=endpoint)
    assert asyncio.run(tokens.access_token(provider("client_credentials"))) == "A1"


def test_snapshot_holds_no_token(tmp_path):
    tokens, _ = manager(tmp_path, FakeEndpoint(), Clock())
    asyncio.run(tokens.access_token(provider()))
    text = json.dumps(tokens.snapshot(provider()))
    assert "A1" not in text and "R1" not in text and SECRET not in text


def test_health_warns_of_idle_refresh_token_and_expiring_secret():
    now = 1_800_000_000.0       # 2027-01-15
    idle = TokenRecord(refresh_token="R", refresh_used_at=now - 61 * 86400)
    warnings = health(provider(client_secret_expires="2027-02-01"), idle, now)
    assert any("unused for 61 days" in w for w in warnings)
    assert any("client secret expires on 2027-02-01 (in 16 days)" in w for w in warnings)
    assert health(provider(client_secret_expires="2028-01-01"), TokenRecord(refresh_token="R",
                  refresh_used_at=now), now) == []


def test_reloaded_provider_settings_drop_the_kept_token(tmp_path):
    endpoint, clock = FakeEndpoint(), Clock()
    (tmp_path / "state").mkdir()
    tokens = TokenManager(TokenStore(str(tmp_path / "state" / "oauth")), clock=clock, post=endpoint)
    assert asyncio.run(tokens.access_token(provider("client_credentials"))) == "A1"
    assert asyncio.run(tokens.access_token(provider("client_credentials", scope="other"))) == "A2"
    assert endpoint.requests == 2


def test_device_login_shows_url_and_code_then_polls_with_slow_down():
    answers = [(200, json.dumps({"device_code": "DEV", "user_code": "BCDF-GHJK", "verification_uri": "https://x/d",
                                 "expires_in": 900, "interval": 2}).encode()),
               (400, b'{"error": "authorization_pending"}'), (400, b'{"error": "slow_down"}'),
               (200, json.dumps({"access_token": "A", "token_type": "Bearer", "refresh_token": "R"}).encode())]
    sleeps, lines, shown = [], [], []

    async def post(url, body, ca_file):
        assert "DEV" not in " ".join(lines)
        return answers.pop(0)

    async def sleep(seconds):
        sleeps.append(seconds)
    from mta_lite.smarthost.oauth.device import device_login
    tokens = asyncio.run(device_login(provider(device_url="https://x/devicecode"), lines.append,
                                      show_url=shown.append, post=post, sleep=sleep, clock=Clock()))
    assert (tokens.access_token, tokens.refresh_token) == ("A", "R")
    assert lines[0].endswith("open https://x/d") and lines[1] == "and enter the code BCDF-GHJK"
    assert shown == ["https://x/d"] and sleeps == [2.0, 2.0, 7.0]      # slow_down adds 5 s for good


def test_login_qr_code_is_drawn_for_a_terminal(capsys):
    from mta_lite.commands.oauthlogin import _qr
    _qr("https://microsoft.com/devicelogin")
    drawn = capsys.readouterr().out.splitlines()
    assert len(drawn) > 10 and all("█" in line or "▀" in line or "▄" in line for line in drawn)


def test_refusal_after_an_unanswered_refresh_says_the_token_may_be_lost(tmp_path):
    clock = Clock()

    async def refuse(url, body, ca_file):
        return 400, b'{"error": "invalid_grant", "error_description": "refresh token rotated"}'
    tokens, store = manager(tmp_path, refuse, clock)
    store.seed_dir = str(tmp_path / "secrets")
    store.save("p", TokenRecord(refresh_token="R0", refresh_sent_at=clock.now - 60))    # killed mid-refresh
    with pytest.raises(TokenError) as caught:
        asyncio.run(tokens.access_token(provider()))
    assert caught.value.refused and "got no answer the relay could store" in str(caught.value)
    assert "mta-lite oauth login p" in str(caught.value)
    with pytest.raises(TokenError) as again:               # the doubt stays until a login
        asyncio.run(tokens.access_token(provider()))
    assert "got no answer the relay could store" in str(again.value)
    store.write_seed("p", TokenRecord(refresh_token="NEW", obtained_at=clock.now))
    assert TokenStore(store.state_dir, store.seed_dir).load("p").refresh_sent_at == 0.0


def test_refresh_marks_the_request_under_way_until_the_answer_is_stored(tmp_path):
    clock, seen = Clock(), []

    async def answer(url, body, ca_file):
        seen.append(TokenStore(str(tmp_path / "state")).peek("p").refresh_sent_at)
        return 200, json.dumps({"access_token": "A", "token_type": "Bearer", "refresh_token": "R1"}).encode()
    tokens, store = manager(tmp_path, answer, clock)
    asyncio.run(tokens.access_token(provider()))
    assert seen == [clock.now] and store.peek("p").refresh_sent_at == 0.0
