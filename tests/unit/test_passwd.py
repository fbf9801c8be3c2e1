"""passwd: scrypt hashes for submission users, their bounds, and `mta-lite passwd NAME`."""

from __future__ import annotations

import io
import subprocess
import sys
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta_lite.config.load import parse_config
from mta_lite.commands.passwd import EX_DATAERR, EX_USAGE, passwd_main
from mta_lite.passhash import MAX_SCRYPT_MEMORY_BYTES, ScryptHash, hash_password, parse_hash, verify

SALT = bytes(range(16))
STORED = parse_hash(hash_password(b"correct horse", salt=SALT))


def test_hash_password_format_is_self_describing():
    text = hash_password(b"correct horse", salt=SALT)
    assert text.startswith("$scrypt$n=16384,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$")
    assert "=" not in text.split("$")[-1] and len(parse_hash(text).key) == 32


def test_hash_password_fresh_salt_each_time_differs():
    assert hash_password(b"same") != hash_password(b"same")


def test_verify_right_password_is_true():
    assert verify(STORED, b"correct horse")


@pytest.mark.parametrize("attempt", [b"correct horse ", b"Correct horse", b"", b"\0" * 100])
def test_verify_wrong_password_is_false(attempt):
    assert not verify(STORED, attempt)


def test_verify_unknown_user_is_false_even_with_the_dummy_password():
    assert not verify(None, b"correct horse")


def test_scrypt_hash_str_round_trips_and_repr_hides_salt_and_key():
    assert parse_hash(str(STORED)) == STORED
    assert repr(STORED) == "ScryptHash(n=16384, r=8, p=1)"


@pytest.mark.parametrize("text", [
    "", "plain-password", "$2b$12$abcdefghijklmnopqrstuv",
    "$scrypt$n=16384,r=8,p=1$AAECAwQFBgcICQoLDA0ODw",                       # no key
    "$scrypt$n=16385,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$" + "A" * 43,           # n not a power of 2
    "$scrypt$n=1048576,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$" + "A" * 43,         # 1 GiB per check
    "$scrypt$n=16384,r=8,p=9$AAECAwQFBgcICQoLDA0ODw$" + "A" * 43,           # p out of bounds
    "$scrypt$n=16384,r=0,p=1$AAECAwQFBgcICQoLDA0ODw$" + "A" * 43,
    "$scrypt$n=16384,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$AAAA",                  # key too short
    "$scrypt$n=16384,r=8,p=1$!!!!$" + "A" * 43,
])
def test_parse_hash_invalid_or_too_costly_is_none(text):
    assert parse_hash(text) is None


def test_parse_hash_memory_bound_is_enforced_at_the_limit():
    n = MAX_SCRYPT_MEMORY_BYTES // (128 * 8)
    ok = f"$scrypt$n={n},r=8,p=1$AAECAwQFBgcICQoLDA0ODw${'A' * 43}"
    too_much = f"$scrypt$n={n * 2},r=8,p=1$AAECAwQFBgcICQoLDA0ODw${'A' * 43}"
    assert isinstance(parse_hash(ok), ScryptHash) and parse_hash(too_much) is None


@settings(max_examples=15, deadline=None)   # each check is a real scrypt (tens of ms)
@given(st.binary(max_size=300))
def test_verify_arbitrary_password_never_raises(password):
    assert verify(STORED, password) is (password == b"correct horse")


def test_passwd_main_from_stdin_prints_a_pasteable_users_table():
    out, err = io.StringIO(), io.StringIO()
    assert passwd_main("alice", io.StringIO("s3cret pass\n"), out, err) == 0
    data = tomllib.loads(out.getvalue())
    hashed = data["users"]["alice"]["password_hash"]
    assert verify(parse_hash(hashed), b"s3cret pass")
    assert "s3cret" not in out.getvalue() + err.getvalue()
    assert "senders" in out.getvalue()          # a hint, as a comment: the admin must fill it in


def test_passwd_main_output_loads_once_senders_are_added():
    out = io.StringIO()
    passwd_main("alice@example.com", io.StringIO("pw\n"), out, io.StringIO())
    data = tomllib.loads(out.getvalue())
    data["users"]["alice@example.com"]["senders"] = ["alice@example.com"]
    cfg = parse_config({"admin_address": "a@example.com", "relays": {"isp": {"host": "h"}}, **data}, "t.toml")
    assert cfg.users["alice@example.com"].senders == frozenset({"alice@example.com"})


def test_passwd_main_terminal_mismatch_exits_65_and_prints_nothing():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    answers = iter(["one", "two"])
    out, err = io.StringIO(), io.StringIO()
    assert passwd_main("alice", Tty(), out, err, ask=lambda prompt: next(answers)) == EX_DATAERR
    assert out.getvalue() == "" and "differ" in err.getvalue()


def test_passwd_main_empty_password_exits_65():
    assert passwd_main("alice", io.StringIO("\n"), io.StringIO(), io.StringIO()) == EX_DATAERR


@pytest.mark.parametrize("name", ["", "bad name", "-dash", "a" * 65, "new\nline", "x]y"])
def test_passwd_main_bad_user_name_exits_64(name):
    assert passwd_main(name, io.StringIO("pw\n"), io.StringIO(), io.StringIO()) == EX_USAGE


def test_passwd_command_needs_no_config_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", str(tmp_path / "none.toml"),
                             "passwd", "bob"], input=b"pw-from-pipe\n", capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"[users.bob]" in result.stdout and b"pw-from-pipe" not in result.stdout
