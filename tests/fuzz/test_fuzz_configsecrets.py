"""Fuzz configsecrets.split through configgen.apply_config: whatever relay names and passwords
a provisioned config carries, the installed file holds no password, and the relay loads the
very same credentials from the password files (S7, C1).

Peer: none (real files in a temporary directory).
"""

from __future__ import annotations

import os
import tempfile
import tomllib

import tomli_w
from hypothesis import given, strategies as st

from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from mta_lite.errors import ConfigError
from tests.fuzz.profiles import fuzz_settings

names = st.text(min_size=1, max_size=12)
passwords = st.text(min_size=1, max_size=40)


def config(relays: dict[str, str], sender_password: str | None) -> bytes:
    data = {"admin_address": "admin@lan.test", "spool_dir": "/var/spool/mta-lite",
            "listen": [{"address": "127.0.0.1:2525"}],
            "relays": {name: {"host": "smtp.isp.test", "username": "u@isp.test", "password": pw}
                       for name, pw in relays.items()}}
    if sender_password is not None:
        data["senders"] = [{"address": "a@lan.test", "relay": next(iter(relays)), "username": "a@isp.test",
                            "password": sender_password}]
    return tomli_w.dumps(data).encode()


def passwords_of(cfg) -> list:
    return [r.password.reveal() for r in cfg.relays.values()] + [s.password.reveal() for s in cfg.senders if s.password]


@fuzz_settings(examples=150, long_examples=3000)
@given(st.dictionaries(names, passwords, min_size=1, max_size=4), st.none() | passwords)
def test_apply_never_installs_a_password_and_keeps_every_credential(relays, sender_password):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mta-lite.toml")
        data = config(relays, sender_password)
        given_file = os.path.join(tmp, "given.toml")
        with open(given_file, "wb") as handle:
            handle.write(data)
        try:
            expected = passwords_of(load_config(given_file))
        except ConfigError:
            return          # not a config the relay would take; configgen refuses it too
        configgen.apply_config(path, data, "fuzz")
        with open(path, "rb") as handle:
            installed = handle.read()
        doc = tomllib.loads(installed.decode())
        tables = [*doc["relays"].values(), *doc.get("senders", [])]
        assert not any("password" in table for table in tables)
        assert passwords_of(load_config(path)) == expected
