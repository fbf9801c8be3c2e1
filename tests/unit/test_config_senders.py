"""Config for sender hygiene: [rewrite], [users], [[senders]] clients, submission listeners,
and what `config show` / `config public` (the smtpd's config) carry of them."""

from __future__ import annotations

import ipaddress
import tomllib

import pytest
import tomli_w

from mta_lite.config.load import effective_dict, parse_config
from mta_lite.errors import ConfigError
from mta_lite.identity import Identity
from mta_lite.config.public import public_config_toml
from mta_lite.passhash import hash_password

HASH = hash_password(b"alice-pw", salt=b"0123456789abcdef")


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    base = tmp_path_factory.mktemp("cert")
    (base / "c.pem").write_text("not parsed at load time")
    (base / "k.pem").write_text("not parsed at load time")
    return str(base / "c.pem"), str(base / "k.pem")


def base(cert, **extra) -> dict:
    return {
        "admin_address": "admin@example.com", "hostname": "relay.lan",
        "relays": {"isp": {"host": "smtp.isp.example", "username": "office@isp.example", "password": "isp-secret"}},
        "listen": [{"address": "0.0.0.0:25"},
                   {"address": "0.0.0.0:587", "auth": "required", "tls_cert": cert[0], "tls_key": cert[1]},
                   {"address": "0.0.0.0:465", "auth": "required", "tls": "implicit",
                    "tls_cert": cert[0], "tls_key": cert[1]}],
        "senders": [{"address": "printer@example.com", "clients": ["192.168.1.10", "10.0.0.0/8"],
                     "username": "printer@isp.example", "password": "printer-secret"}],
        "rewrite": {"senders": {"root@Printer.lan": "printer@example.com", "@nas.lan": "NAS <nas@example.com>"},
                    "clients": {"192.168.1.0/24": "LAN <lan@example.com>", "192.168.1.20": "Scanner <scan@example.com>"}},
        "users": {"alice": {"password_hash": HASH, "senders": ["Alice@example.com", "@family.example"]}},
        **extra,
    }


def test_parse_config_sender_hygiene_tables_parse(cert):
    cfg = parse_config(base(cert), "t.toml")
    assert [(item.tls, item.auth) for item in cfg.listen] == [("starttls", "none"), ("starttls", "required"),
                                                             ("implicit", "required")]
    assert cfg.senders[0].clients == (ipaddress.ip_network("192.168.1.10/32"), ipaddress.ip_network("10.0.0.0/8"))
    assert cfg.rewrite.senders == {"root@printer.lan": Identity("printer@example.com"),
                                   "@nas.lan": Identity("nas@example.com", "NAS")}
    assert [str(net) for net, _ in cfg.rewrite.clients] == ["192.168.1.20/32", "192.168.1.0/24"]
    assert cfg.rewrite.local_sender == Identity("admin@example.com")
    assert cfg.users["alice"].senders == frozenset({"alice@example.com", "@family.example"})
    assert HASH not in repr(cfg)


def test_parse_config_local_sender_empty_switches_it_off(cert):
    cfg = parse_config(base(cert, rewrite={"local_sender": ""}), "t.toml")
    assert cfg.rewrite.local_sender is None


@pytest.mark.parametrize("patch, key", [
    ({"users": {"alice": {"password_hash": HASH}}}, "users.alice.senders"),
    ({"users": {"alice": {"password_hash": HASH, "senders": []}}}, "users.alice.senders"),
    ({"users": {"alice": {"password_hash": HASH, "senders": ["not an address"]}}}, "users.alice.senders[0]"),
    ({"users": {"alice": {"password_hash": "plaintext", "senders": ["a@b.example"]}}}, "users.alice.password_hash"),
    ({"users": {"alice": {"password_hash": HASH, "senders": ["a@b.example"], "sender": []}}}, "users.alice.sender"),
    ({"users": {"bad name": {"password_hash": HASH, "senders": ["a@b.example"]}}}, "users.bad name"),
    ({"users": {"alice": HASH}}, "users.alice"),
    ({"rewrite": {"senders": {"root": "x@example.com"}}}, 'rewrite.senders."root"'),
    ({"rewrite": {"senders": {"a@b.example": "Name <>"}}}, 'rewrite.senders."a@b.example"'),
    ({"rewrite": {"clients": {"192.168.1.300": "x@example.com"}}}, 'rewrite.clients."192.168.1.300"'),
    ({"rewrite": {"local_sender": "root"}}, "rewrite.local_sender"),
    ({"rewrite": {"sender": {}}}, "rewrite.sender"),
    ({"senders": [{"address": "p@example.com", "clients": ["printer.lan"]}]}, "senders[0].clients[0]"),
])
def test_parse_config_invalid_sender_hygiene_names_key(cert, patch, key):
    with pytest.raises(ConfigError) as info:
        parse_config(base(cert, **patch), "t.toml")
    assert str(info.value).startswith(f"t.toml: {key}: ")
    assert HASH not in str(info.value)


@pytest.mark.parametrize("listen, key, hint", [
    ({"address": ":587", "auth": "required"}, "listen[0].auth", "needs tls_cert"),
    ({"address": ":465", "tls": "implicit"}, "listen[0].tls", "needs tls_cert"),
    ({"address": ":587", "auth": "optional"}, "listen[0].auth", "expected one of none, required"),
    ({"address": ":587", "tls": "none"}, "listen[0].tls", "expected one of starttls, implicit"),
])
def test_parse_config_bad_listener_mode_names_key(cert, listen, key, hint):
    listen = {**listen, "address": "0.0.0.0" + listen["address"]}
    with pytest.raises(ConfigError) as info:
        parse_config(base(cert, listen=[listen]), "t.toml")
    assert str(info.value).startswith(f"t.toml: {key}: ") and hint in str(info.value)


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.1"])
def test_parse_config_old_tls_on_submission_open_to_outside_is_refused_saying_why(cert, version):
    data = base(cert)
    data["listen"][1]["tls_min_version"] = version
    with pytest.raises(ConfigError) as info:
        parse_config(data, "t.toml")
    assert str(info.value).startswith("t.toml: listen[1].tls_min_version: ")
    assert "reachable from outside mynetworks" in str(info.value) and "passwords" in str(info.value)


def test_parse_config_old_tls_allowed_on_lan_listener_and_loopback_submission(cert):
    data = base(cert)
    data["listen"][0]["tls_min_version"] = "TLSv1"
    data["listen"][1].update(address="127.0.0.1:587", tls_min_version="TLSv1.1")
    cfg = parse_config(data, "t.toml")
    assert [item.tls_min_version for item in cfg.listen] == ["TLSv1", "TLSv1.1", "TLSv1.2"]


def test_parse_config_unknown_tls_min_version_names_key(cert):
    data = base(cert)
    data["listen"][0]["tls_min_version"] = "SSLv3"
    with pytest.raises(ConfigError, match=r"listen\[0\].tls_min_version: expected one of TLSv1, "):
        parse_config(data, "t.toml")


def test_parse_config_submission_without_users_is_an_error(cert):
    data = base(cert)
    del data["users"]
    with pytest.raises(ConfigError, match=r"listen\[1\].auth: no \[users.NAME\] defined"):
        parse_config(data, "t.toml")


def test_effective_dict_masks_user_hashes(cert):
    text = tomli_w.dumps(effective_dict(parse_config(base(cert), "t.toml")))
    assert HASH not in text and 'password_hash = "********"' in text


def test_public_config_keeps_hashes_bindings_and_rewrites_but_no_secret(cert):
    cfg = parse_config(base(cert), "t.toml")
    text = public_config_toml(cfg).decode()
    assert "isp-secret" not in text and "printer-secret" not in text
    public = parse_config(tomllib.loads(text), "t.toml", secrets=False)
    assert public.users == cfg.users and public.rewrite == cfg.rewrite
    assert public.senders[0].clients == cfg.senders[0].clients and public.listen == cfg.listen
    assert public.senders[0].password is None
