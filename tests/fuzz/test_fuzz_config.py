"""Fuzz the config loader (config_load.load_config / parse_config).

Peer: none (real files in a temporary directory). C1: whatever the file holds (any bytes, any
TOML, any value at any key of a valid config), loading returns a complete Config or raises
one ConfigError naming the file, on one line, never showing a password; no other exception,
and a Config it returns is one the daemon can run: its hostname is usable as HELO name.
"""

from __future__ import annotations

import copy
import datetime
import os
import tempfile

import tomli_w
from hypothesis import example, given, strategies as st, target

from mta_lite.config.schema import Config
from mta_lite.config.load import effective_dict, load_config, parse_config
from mta_lite.errors import ConfigError
from mta_lite.smarthost.pool import SmarthostPool
from tests.fuzz.profiles import fuzz_settings

PASSWORD = "Fuzz-S3cret-pw-9431"
VALID = {
    "hostname": "relay.lan.test", "spool_dir": "/var/spool/mta-lite", "mynetworks": ["192.168.0.0/16"],
    "admin_address": "admin@lan.test", "message_size_limit": 10_000_000, "default_relay": "isp",
    "listen": [{"address": "127.0.0.1:2525"}],
    "relays": {"isp": {"host": "smtp.isp.example", "port": 587, "tls": "starttls", "username": "office@isp.example",
                       "password": PASSWORD, "timeout": "5m"},
               "plain": {"host": "10.0.0.1", "port": 25, "tls": "none"}},
    "senders": [{"address": "alice@lan.test", "relay": "isp", "username": "alice@isp.example",
                 "password": PASSWORD + "-alice"}],
    "queue": {"min_backoff": "5m", "max_backoff": "1h", "reserve_bytes": 1000},
    "smtpd": {"max_connections": 10, "timeout": "5m"},
    "master": {"smtpd_user": "", "qmgr_user": ""},
}
KEYS = [("hostname",), ("spool_dir",), ("mynetworks",), ("mynetworks", 0), ("admin_address",),
        ("message_size_limit",), ("default_relay",), ("listen",), ("listen", 0), ("listen", 0, "address"),
        ("listen", 0, "tls_cert"), ("relays",), ("relays", "isp"), ("relays", "isp", "host"), ("relays", "isp", "port"),
        ("relays", "isp", "tls"), ("relays", "isp", "username"), ("relays", "isp", "password"),
        ("relays", "isp", "password_file"), ("relays", "isp", "ca_file"), ("relays", "isp", "concurrency"),
        ("relays", "isp", "timeout"), ("relays", "plain", "username"), ("senders",), ("senders", 0),
        ("senders", 0, "address"), ("senders", 0, "relay"), ("senders", 0, "password"), ("queue",),
        ("queue", "min_backoff"), ("queue", "reserve_bytes"), ("queue", "bounces_per_hour"), ("smtpd",),
        ("smtpd", "timeout"), ("smtpd", "recipient_limit"), ("master", "smtpd_user"), ("bounce_template",),
        ("unknown_key",), ("relays", "isp", "typo")]
toml_scalar = st.one_of(st.text(max_size=30), st.integers(min_value=-2**63, max_value=2**63 - 1), st.booleans(),
                        st.floats(allow_nan=False), st.sampled_from(["", " ", "5x", "0s", "99999999999d", "::1", "[::]:25",
                                                                     "@lan.test", "x@y", "none", "implicit",
                                                                     "relay lan", "relay\r\nX", "é.example"]),
                        st.datetimes(timezones=st.just(datetime.timezone.utc)))
toml_value = st.recursive(toml_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=6)


def put(data: dict, key: tuple, value) -> None:
    node = data
    for part in key[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
        if not isinstance(node, (dict, list)):
            return
    last = key[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value


def check_loaded(cfg_or_error, path: str) -> None:
    if isinstance(cfg_or_error, ConfigError):
        text = str(cfg_or_error)
        assert text.startswith(path) and "\n" not in text and "\r" not in text, text
        assert PASSWORD not in text, text
        return
    cfg = cfg_or_error
    assert isinstance(cfg, Config)
    assert PASSWORD not in repr(cfg) and PASSWORD not in repr(effective_dict(cfg))
    SmarthostPool(helo_name=cfg.hostname)          # raises for a hostname no daemon could use


def load(path: str, secrets: bool = True):
    try:
        return load_config(path, secrets)
    except ConfigError as exc:
        return exc


@fuzz_settings(300)
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), toml_value), min_size=1, max_size=3))
@example(changes=[(("hostname",), "relay lan")])
@example(changes=[(("relays", "isp", "password"), 5)])
def test_config_any_value_at_any_key_loads_or_names_the_problem(changes):
    data = copy.deepcopy(VALID)
    for key, value in changes:
        put(data, key, value)
    with tempfile.TemporaryDirectory(prefix="mta-fuzz-cfg-") as directory:
        path = os.path.join(directory, "mta-lite.toml")
        try:
            text = tomli_w.dumps(data).encode()
        except (TypeError, ValueError):
            return                                  # not representable as TOML
        with open(path, "wb") as handle:
            handle.write(text)
        for secrets in (True, False):
            result = load(path, secrets)
            check_loaded(result, path)
        target(float(isinstance(result, Config)), label="valid after mutation")


@fuzz_settings(300)
@given(blob=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       valid_prefix=st.booleans())
@example(blob=b'hostname = "\xff"\n', valid_prefix=False)
def test_config_file_of_any_bytes_loads_or_names_the_problem(blob, valid_prefix):
    with tempfile.TemporaryDirectory(prefix="mta-fuzz-cfg-") as directory:
        path = os.path.join(directory, "mta-lite.toml")
        with open(path, "wb") as handle:
            handle.write((tomli_w.dumps(VALID).encode() if valid_prefix else b"") + blob)
        check_loaded(load(path), path)


def test_parse_config_of_the_fuzz_base_is_valid():
    """The mutations above start from a config that loads: the control for the properties."""
    assert isinstance(parse_config(copy.deepcopy(VALID), "fuzz.toml"), Config)
