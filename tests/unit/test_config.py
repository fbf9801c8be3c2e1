"""Config loading: every error names file and key; secrets never shown."""

import subprocess
import sys

import pytest
import tomli_w

from mta_lite.config.schema import parse_duration, route_for
from mta_lite.config.load import effective_dict, load_config, parse_config
from mta_lite.errors import ConfigError

BASE = {
    "admin_address": "admin@example.com",
    "default_relay": "isp",
    "relays": {
        "isp": {"host": "smtp.isp.example", "username": "office@isp.example", "password": "isp-secret-1"},
        "gmail": {"host": "smtp.gmail.example", "port": 465, "tls": "implicit"},
    },
    "senders": [
        {"address": "alice@example.com", "relay": "gmail", "username": "alice@gmail.example",
         "password": "alice-secret-2"},
        {"address": "@example.org", "relay": "gmail"},
    ],
}


def test_route_for_exact_sender_uses_its_own_credentials():
    route = route_for(parse_config(BASE, "t.toml"), "Alice@Example.com")
    assert (route.relay.name, route.username, route.password.reveal()) == ("gmail", "alice@gmail.example", "alice-secret-2")


def test_route_for_domain_rule_uses_relay_credentials():
    route = route_for(parse_config(BASE, "t.toml"), "bob@example.org")
    assert route.relay.name == "gmail" and route.username == ""


def test_route_for_unknown_sender_falls_back_to_default_relay():
    route = route_for(parse_config(BASE, "t.toml"), "printer@lan.test")
    assert (route.relay.name, route.username) == ("isp", "office@isp.example")


@pytest.mark.parametrize("patch, key", [
    ({"relays": {"isp": {"host": "h", "tls": "none", "username": "u", "password": "p"}}}, "relays.isp.username"),
    ({"default_relay": "nope"}, "default_relay"),
    ({"queue": {"min_backoff": "six"}}, "queue.min_backoff"),
    ({"mynetworks": ["192.168.0.0/33"]}, "mynetworks[0]"),
    ({"listen": [{"address": "0.0.0.0"}]}, "listen[0].address"),
    ({"listen": [{"address": "0.0.0.0:25", "bare_newline": "allow"}]}, "listen[0].bare_newline"),
    ({"hostnme": "typo"}, "hostnme"),
    ({"message_size_limit": "big"}, "message_size_limit"),
    ({"relays": {"isp": {"host": "h", "ca_file": "/nonexistent/ca.pem"}}}, "relays.isp.ca_file"),
])
def test_parse_config_invalid_names_key(patch, key):
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **patch}, "t.toml")
    assert str(info.value).startswith(f"t.toml: {key}: ")


def test_listen_bare_newline_defaults_to_normalize_and_takes_reject():
    listens = parse_config({**BASE, "listen": [{"address": "0.0.0.0:25"},
                                               {"address": "0.0.0.0:26", "bare_newline": "reject"}]}, "t.toml").listen
    assert [listen.bare_newline for listen in listens] == ["normalize", "reject"]


def test_parse_config_error_never_shows_password():
    bad = {**BASE, "relays": {"isp": {"host": "h", "password": 12345678}}}
    with pytest.raises(ConfigError) as info:
        parse_config(bad, "t.toml")
    assert "12345678" not in str(info.value)


def test_effective_dict_masks_every_secret():
    text = tomli_w.dumps(effective_dict(parse_config(BASE, "t.toml")))
    assert "isp-secret-1" not in text and "alice-secret-2" not in text
    assert text.count("********") == 2


def test_repr_of_config_hides_secrets():
    assert "isp-secret-1" not in repr(parse_config(BASE, "t.toml"))


def test_password_file_is_read_relative_to_config(tmp_path):
    (tmp_path / "isp.pw").write_text("from-file-secret\n")
    data = {**BASE, "senders": [], "relays": {"isp": {"host": "h", "username": "u", "password_file": "isp.pw"}}}
    cfg = parse_config(data, str(tmp_path / "mta-lite.toml"))
    assert cfg.relays["isp"].password.reveal() == "from-file-secret"


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("5d", 432000)])
def test_parse_duration_units(text, seconds):
    assert parse_duration(text, "f", "k") == seconds


def test_config_check_cli_exits_78_with_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('admin_address = "a@b.example"\n[relays.x]\nhost = "h"\n[queue]\nlifetime = "forever"\n')
    result = subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", str(path), "config", "check"],
                            capture_output=True, text=True)
    assert result.returncode == 78
    assert result.stderr.strip().count("\n") == 0
    assert f"{path}: queue.lifetime:" in result.stderr


def test_load_config_bad_toml_names_file(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("hostname = \n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_config_check_cli_is_silent_for_a_good_config(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text('admin_address = "a@b.example"\n[relays.x]\nhost = "h"\n')
    result = subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", str(path), "config", "check"],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
