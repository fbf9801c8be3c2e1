"""[oauth.NAME] providers and auth = "xoauth2"/"oauthbearer": presets, errors naming file, key
and value, the client secret masked and moved to secrets/, and never in the public config."""

import copy
import tomllib

import pytest
import tomli_w

from mta_lite.config.keys import Mode
from mta_lite.config.load import parse_config
from mta_lite.config.public import public_config_toml
from mta_lite.config.schema import route_for
from mta_lite.config.secrets import own_file_generation, split
from mta_lite.config.tables import shown
from mta_lite.errors import ConfigError

CLIENT_SECRET = "cs-Very-Secret-42"
BASE = {
    "admin_address": "admin@example.com",
    "oauth": {"m365": {"preset": "microsoft", "tenant": "contoso.onmicrosoft.com", "grant": "client_credentials",
                       "client_id": "app-1", "client_secret": CLIENT_SECRET}},
    "relays": {"o365": {"host": "smtp.office365.com", "username": "scanner@contoso.example",
                        "auth": "xoauth2", "oauth": "m365"}},
}


def config(**changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split("__")
        table = data
        for name in parents:
            table = table.setdefault(name, {})
        if value is None:
            table.pop(last, None)
        else:
            table[last] = value
    return data


def test_microsoft_preset_fills_urls_and_app_only_scope():
    provider = parse_config(BASE, "t.toml").oauth["m365"]
    assert provider.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert provider.device_url.endswith("/contoso.onmicrosoft.com/oauth2/v2.0/devicecode")
    assert provider.scope == "https://outlook.office365.com/.default"
    assert provider.client_secret.reveal() == CLIENT_SECRET


def test_microsoft_preset_with_refresh_grant_asks_for_smtp_send_offline_access():
    cfg = parse_config(config(oauth__m365__grant="refresh_token", oauth__m365__client_secret=None), "t.toml")
    assert cfg.oauth["m365"].scope == "https://outlook.office365.com/SMTP.Send offline_access"
    assert cfg.oauth["m365"].client_secret is None      # a public client


def test_google_preset_fills_its_endpoints_and_scope():
    data = config(oauth__m365=None)
    data["oauth"]["g"] = {"preset": "google", "grant": "refresh_token", "client_id": "x.apps.googleusercontent.com"}
    data["relays"]["o365"]["oauth"] = "g"
    provider = parse_config(data, "t.toml").oauth["g"]
    assert (provider.token_url, provider.device_url, provider.scope) == (
        "https://oauth2.googleapis.com/token", "https://oauth2.googleapis.com/device/code", "https://mail.google.com/")


def test_route_carries_mechanism_and_provider():
    route = route_for(parse_config(BASE, "t.toml"), "anyone@lan.test")
    assert (route.auth, route.oauth.name, route.password) == ("xoauth2", "m365", None)


def test_sender_rule_may_use_oauthbearer():
    data = config()
    data["relays"]["plain"] = {"host": "smtp.isp.example"}
    data["senders"] = [{"address": "@lab.example", "relay": "plain", "username": "lab@isp.example",
                        "auth": "oauthbearer", "oauth": "m365"}]
    route = route_for(parse_config(data, "t.toml"), "x@lab.example")
    assert (route.relay.name, route.auth, route.oauth.name, route.account) == (
        "plain", "oauthbearer", "m365", "plain:lab@isp.example")


@pytest.mark.parametrize("changes, key, words", [
    ({"relays__o365__oauth": "nope"}, "relays.o365.oauth", "no provider named 'nope'"),
    ({"relays__o365__oauth": None}, "relays.o365.oauth", 'needs oauth = "<name'),
    ({"relays__o365__password": "pw"}, "relays.o365.password", "remove the password"),
    ({"relays__o365__auth": "cram-md5"}, "relays.o365.auth", "expected one of password, xoauth2, oauthbearer"),
    ({"relays__o365__auth": None}, "relays.o365.oauth", 'with auth = "xoauth2"'),
    ({"relays__o365__tls": "none"}, "relays.o365.auth", "never sent outside TLS"),
    ({"oauth__m365__tenant": None}, "oauth.m365.tenant", "needs tenant"),
    ({"oauth__m365__preset": "yahoo"}, "oauth.m365.preset", "got 'yahoo'"),
    ({"oauth__m365__preset": None, "oauth__m365__tenant": None}, "oauth.m365.token_url", "missing"),
    ({"oauth__m365__token_url": "http://login.example/token"}, "oauth.m365.token_url", "https:// URL"),
    ({"oauth__m365__grant": "password"}, "oauth.m365.grant", "expected one of"),
    ({"oauth__m365__grant": None}, "oauth.m365.grant", "missing"),
    ({"oauth__m365__client_secret": None}, "oauth.m365.client_secret", "needs client_secret"),
    ({"oauth__m365__client_secret_expires": "next year"}, "oauth.m365.client_secret_expires", "2027-06-30"),
    ({"oauth__m365__colour": "blue"}, "oauth.m365.colour", "unknown key"),
    ({"oauth__m365__preset": "google", "oauth__m365__tenant": None}, "oauth.m365.grant",
     'use grant = "refresh_token"'),
])
def test_oauth_errors_name_file_key_and_value(changes, key, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(config(**changes), "mta-lite.toml")
    message = str(caught.value)
    assert message.startswith(f"mta-lite.toml: {key}: ") and words in message
    assert "\n" not in message and CLIENT_SECRET not in message


def test_client_secret_of_wrong_type_is_not_shown():
    with pytest.raises(ConfigError) as caught:
        parse_config(config(oauth__m365__client_secret=12345678), "t.toml")
    assert "12345678" not in str(caught.value) and "********" in str(caught.value)


def test_config_show_masks_client_secret():
    text = tomli_w.dumps(shown(parse_config(BASE, "t.toml"), Mode()))
    assert CLIENT_SECRET not in text and 'client_secret = "********"' in text


def test_public_config_has_no_oauth_at_all_and_reads_back():
    cfg = parse_config(BASE, "t.toml")
    text = public_config_toml(cfg).decode()
    assert "oauth" not in text and CLIENT_SECRET not in text and "client_id" not in text
    public = parse_config(tomllib.loads(text), "t.toml", secrets=False)
    assert public.relays["o365"].auth == "password" and public.oauth == {}


def test_split_moves_client_secret_to_secrets_dir(tmp_path):
    data, moved = split(tomli_w.dumps(BASE).encode(), 7)
    assert CLIENT_SECRET.encode() not in data
    (path, secret), = moved.items()
    assert (path, secret) == ("secrets/g000007-oauth0-m365.pw", CLIENT_SECRET)
    assert own_file_generation(path.split("/")[1]) == 7
    (tmp_path / "secrets").mkdir()
    (tmp_path / path).write_text(secret)
    (tmp_path / "mta-lite.toml").write_bytes(data)
    cfg = parse_config(tomllib.loads(data.decode()), str(tmp_path / "mta-lite.toml"))
    assert cfg.oauth["m365"].client_secret.reveal() == CLIENT_SECRET
