"""What the board hands a person (board/redact.py): every secret and its base64 masked before
anything is cut, printable ASCII, the secrets gathered from the config, its password files and
every kept generation.

Peer: none; config files in tmp_path for Redactor.for_config().
"""

from __future__ import annotations

import base64

import tomli_w

from mta_lite.config import generations as configgen
from mta_lite_board.redact import Redactor, is_secret_key, printable, secret_values
from tests.support.relay import PASSWORD, secret_needles


def test_mask_secret_and_its_base64_in_any_auth_framing():
    redactor = Redactor({PASSWORD})
    framings = [PASSWORD, base64.b64encode(PASSWORD.encode()).decode(),
                base64.b64encode(b"\0office@isp.example\0" + PASSWORD.encode()).decode(),
                base64.b64encode(b"x\0y\0" + PASSWORD.encode() + b"trailing").decode()]
    for text in framings:
        masked = redactor.mask(f"AUTH said {text} and more")
        assert not any(needle.decode() in masked for needle in secret_needles({PASSWORD})), masked
        assert "********" in masked


def test_line_masks_before_cutting_so_no_half_secret_is_left():
    redactor = Redactor({PASSWORD})
    text = "x" * 10 + PASSWORD + "y" * 100
    shown = redactor.line(text, 15)
    assert PASSWORD[:5] not in shown and shown == "x" * 10 + "*****..."


def test_printable_ascii_look_alikes_and_escapes():
    assert printable("TLS: failed — set ca_file") == "TLS: failed -- set ca_file"
    assert printable("caf\u00e9\x1b[2J\u2028") == "caf\\xe9\\x1b[2J\\u2028"


def test_secret_keys_and_values_of_parsed_data():
    assert all(map(is_secret_key, ["password", "password_hash", "oauth_token", "client_secret", "api_key"]))
    assert not any(map(is_secret_key, ["password_file", "username", "tokens", 3]))
    data = {"relays": {"a": {"password": "p1", "password_file": "f"}}, "senders": [{"password": "********"},
                                                                                 {"client_secret": "c"}]}
    assert secret_values(data) == {("relays", "a", "password"): "p1", ("senders", 1, "client_secret"): "c"}


def test_for_config_knows_password_files_and_older_generations(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "isp.pw").write_text("file-password-123\n")
    config = etc / "mta-lite.toml"
    base = {"hostname": "r.lan.test", "admin_address": "a@lan.test", "spool_dir": str(tmp_path / "spool"),
            "relays": {"isp": {"host": "h", "username": "u", "password": "old-password-456"}}}
    config.write_bytes(tomli_w.dumps(base).encode())
    configgen.apply_config(str(config), tomli_w.dumps(
        {**base, "relays": {"isp": {"host": "h", "username": "u", "password_file": "isp.pw"}}}).encode(), "test")
    redactor = Redactor.for_config(str(config))
    assert redactor.complete
    assert redactor.mask("a file-password-123 b old-password-456") == "a ******** b ********"


def test_for_config_broken_config_is_incomplete_not_an_error(tmp_path):
    config = tmp_path / "mta-lite.toml"
    config.write_text("hostname = \n")
    assert not Redactor.for_config(str(config)).complete


def test_mask_takes_the_whole_base64_word_whose_edges_carry_bits_of_the_secret():
    blob = base64.b64encode(b"\0office@isp.example\0" + PASSWORD.encode()).decode()
    assert Redactor({PASSWORD}).mask(f"535 {blob} (AUTH)") == "535 ******** (AUTH)"
