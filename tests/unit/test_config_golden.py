"""Golden outputs of the config loader: for a battery of configs, `mta-lite config show` and
`mta-lite config public` print exactly what they printed when these outputs were recorded,
the TOML byte for byte, or the one error line with exit status 78.

The battery: the examples of README.md, docs/configuration.md and docs/postscreen.md, the
configs the other tests build, configs that exercise every default, duration and file rule,
and broken configs for every error the loader can report (one problem each), plus configs
with two problems, which record which of the two is reported. Only an unreadable password
file is left out: the tests run as root, who can read every file.

The examples and the other tests' configs are files in config_golden/, the small cases are
below; the expected outputs are in config_golden/expected.txt, the temporary directory shown as
$DIR. After a deliberate change of output, record them again with
`python -m tests.unit.test_config_golden` (from the top of the tree) and read the diff.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pathlib
import tempfile
import tomllib
from unittest import mock

import pytest

from mta_lite import cli
from mta_lite.config.load import parse_config
from mta_lite.config.public import public_config_toml

FILES_DIR = pathlib.Path(__file__).with_name("config_golden")
EXPECTED = FILES_DIR / "expected.txt"
COMMANDS = ("show", "public")
HASH = "$scrypt$n=16384,r=8,p=1$MDEyMzQ1Njc4OWFiY2RlZg$nRa3+qRQ3FTE3Fh+ZH4+WVrjlfiEj6/Z4EM4KdKBgJ8"
HASH_BOB = "$scrypt$n=16384,r=8,p=1$ZmVkY2JhOTg3NjU0MzIxMA$y7lKzbcAbiL+WrtTooDbOn4QQw1pCsSBrbpkQJD4jNY"
FILES = {"c.pem": b"certificate", "k.pem": b"key", "ca.pem": b"ca", "bounce.txt": b"$reason\n",
         "isp.pw": b"isp-file-secret\n", "crlf.pw": b"crlf-secret\r\n", "ctl.pw": b"bad\x01pw\n",
         "latin1.pw": b"caf\xe9\n"}
FQDN = "golden.example"

HEAD = 'hostname = "relay.lan"\nadmin_address = "admin@example.com"\n'
ISP = '[relays.isp]\nhost = "smtp.isp.example"\n'
CERT = 'tls_cert = "c.pem"\ntls_key = "k.pem"\n'
USER = f'[users.alice]\npassword_hash = "{HASH}"\nsenders = ["alice@example.com"]\n'


def cfg(top: str = "", relay: str = "", tables: str = "") -> str:
    """A small valid config with `top` keys, keys added to [relays.isp], and more tables."""
    return HEAD + top + ISP + relay + tables


def table(name: str, body: str) -> str:
    return cfg(tables=f"[{name}]\n{body}")


# The examples of the docs and the configs other tests build are files in config_golden/.
VALID = {
    **{path.stem: path.read_text(encoding="utf-8") for path in sorted(FILES_DIR.glob("*.toml"))},
    "minimal_fqdn_default": 'admin_address = "Admin@Example.COM"\n' + ISP,
    "minimal_no_fqdn": 'admin_address = "admin@example.com"\n' + ISP,
    "durations": cfg(relay='timeout = " 90s "\nrate_delay = "1500ms"\n', tables='[queue]\nmin_backoff = "120s"\n'
                     'max_backoff = "1w"\nlifetime = "7d"\n[smtpd]\ntimeout = "3600s"\nsession_limit = "0s"\n'),
    "durations_small": cfg(relay='timeout = "1ms"\nrate_delay = "0ms"\n',
                           tables='[queue]\nmin_backoff = "0s"\nmax_backoff = "59s"\nlifetime = "25h"\n'),
    "ipv6_and_networks": cfg('mynetworks = ["192.168.1.5/24", "fe80::1/64", "10.1.2.3", "::ffff:10.0.0.1"]\n'
                             'listen = [{address = "[::1]:2525"}, {address = "[::]:25"}, {address = "host.lan:0"}]\n'),
    "files_relative_and_absolute": cfg('bounce_template = "bounce.txt"\nlisten = [{address = "127.0.0.1:25", '
                                       'tls_cert = "$DIR/c.pem", tls_key = "k.pem", tls = "implicit"}]\n',
                                       'ca_file = "$DIR/ca.pem"\nusername = "u"\npassword_file = "isp.pw"\n'),
    "bounce_template_without_listen_and_senders": cfg('bounce_template = "bounce.txt"\nlisten = []\n'),
    "master_both_empty": table("master", 'smtpd_user = ""\nqmgr_user = ""\n'),
    "master_custom_smtpd_only": table("master", 'smtpd_user = "smtpd"\nqmgr_user = ""\n'),
    "rewrite_local_sender_off": table("rewrite", 'local_sender = ""\n'),
    "rewrite_local_sender_quoted": table("rewrite", 'local_sender = "\\"Relay, Box\\" <Box@Example.com>"\n'),
    "senders_variants": cfg('default_relay = "other"\nsenders = [{address = "@Example.ORG"}, '
                            '{address = "Bob@example.com", relay = "isp", clients = ["10.0.0.0/8", "::1"]}]\n',
                            tables='[relays.other]\nhost = "other.example"\ntls = "none"\n'),
    "relays_implicit_and_names": cfg(tables='[relays."my isp"]\nhost = "a.example"\ntls = "implicit"\n'
                                     '[relays.x]\nhost = "b.example"\nport = 2525\ntls = "none"\n'),
    "utf8_admin_and_message_size": cfg('message_size_limit = 1\n').replace("admin@example.com", "Jörg@Exämple.com"),
    "users_and_submission": cfg('listen = [{address = "0.0.0.0:587", auth = "required", tls_cert = "c.pem", '
                                'tls_key = "k.pem"}]\n', tables=USER + f'[users.bob]\npassword_hash = "{HASH_BOB}"\n'
                                'senders = ["@b.example", "a@b.example", "A@B.example"]\n'),
    "relay_password_inline_and_sender_secret": cfg('senders = [{address = "s@example.com", username = "s", '
                                                   'password = "sender-pw"}]\n',
                                                   'username = "u"\npassword = "relay-pw"\n'),
}

# One problem each, named after the key and the problem; bytes where TOML text cannot say it.
BROKEN = {
    "file_missing": None,
    "file_is_a_directory": "DIR",
    "toml_syntax": "hostname = \n",
    "toml_nested_too_deeply": "a = " + "[" * 5000 + "]" * 5000 + "\n",
    "toml_not_utf8": b'hostname = "\xff"\n',
    "top_unknown_key": cfg('hostnme = "typo"\n'),
    "top_unknown_keys_first_sorted": cfg('zzz = 1\naaa = 2\n'),
    "relays_not_a_table": HEAD + "relays = 5\n",
    "relays_entry_not_a_table": HEAD + "relays = {isp = 5}\n",
    "relays_none": HEAD,
    "relays_empty": HEAD + "relays = {}\n",
    "default_relay_type": cfg("default_relay = 5\n"),
    "default_relay_unknown": cfg('default_relay = "nope"\n'),
    "hostname_type": cfg().replace('"relay.lan"', "5"),
    "hostname_space": cfg().replace('"relay.lan"', '"relay lan"'),
    "hostname_too_long": cfg().replace('"relay.lan"', '"' + "a" * 256 + '"'),
    "hostname_non_ascii": cfg().replace('"relay.lan"', '"relä.lan"'),
    "users_not_a_table": cfg("users = 5\n"),
    "spool_dir_type": cfg("spool_dir = []\n"),
    "mynetworks_type": cfg('mynetworks = "10.0.0.0/8"\n'),
    "mynetworks_integer": cfg("mynetworks = [10]\n"),
    "mynetworks_bad_prefix": cfg('mynetworks = ["192.168.0.0/16", "192.168.0.0/33"]\n'),
    "admin_address_missing": 'hostname = "relay.lan"\n' + ISP,
    "admin_address_type": cfg().replace('"admin@example.com"', "true"),
    "admin_address_no_domain": cfg().replace('"admin@example.com"', '"admin"'),
    "admin_address_domain_form": cfg().replace('"admin@example.com"', '"@example.com"'),
    "message_size_limit_string": cfg('message_size_limit = "big"\n'),
    "message_size_limit_bool": cfg("message_size_limit = true\n"),
    "message_size_limit_zero": cfg("message_size_limit = 0\n"),
    "message_size_limit_float": cfg("message_size_limit = 1.5\n"),
    "listen_type": cfg('listen = {address = "0.0.0.0:25"}\n'),
    "listen_entry_not_a_table": cfg('listen = ["0.0.0.0:25"]\n'),
    "listen_address_missing": cfg("listen = [{postscreen = true}]\n"),
    "listen_address_no_port": cfg('listen = [{address = "0.0.0.0"}]\n'),
    "listen_address_ipv6_unbracketed": cfg('listen = [{address = "::1:25"}]\n'),
    "listen_port_out_of_range": cfg('listen = [{address = "0.0.0.0:65536"}]\n'),
    "listen_tls_cert_missing_file": cfg('listen = [{address = "0.0.0.0:25", tls_cert = "nope.pem", tls_key = "k.pem"}]\n'),
    "listen_tls_cert_without_key": cfg('listen = [{address = "0.0.0.0:25", tls_cert = "c.pem"}]\n'),
    "listen_tls_key_without_cert": cfg('listen = [{address = "0.0.0.0:25", tls_key = "k.pem"}]\n'),
    "listen_postscreen_type": cfg('listen = [{address = "0.0.0.0:25", postscreen = "yes"}]\n'),
    "listen_tls_none": cfg('listen = [{address = "0.0.0.0:25", tls = "none"}]\n'),
    "listen_auth_optional": cfg('listen = [{address = "0.0.0.0:25", auth = "optional"}]\n'),
    "listen_implicit_without_cert": cfg('listen = [{address = "0.0.0.0:465", tls = "implicit"}]\n'),
    "listen_auth_without_cert": cfg('listen = [{address = "0.0.0.0:587", auth = "required"}]\n'),
    "listen_auth_without_users": cfg('listen = [{address = "0.0.0.0:587", auth = "required", ' + CERT.replace(
        "\n", ", ", 1).strip() + "}]\n"),
    "listen_unknown_key": cfg('listen = [{address = "0.0.0.0:25"}, {address = "0.0.0.0:26", tls_crt = "c.pem"}]\n'),
    "relay_tls_bad": cfg(relay='tls = "ssl"\n'),
    "relay_tls_type": cfg(relay="tls = true\n"),
    "relay_host_missing": HEAD + "[relays.isp]\nport = 25\n",
    "relay_host_type": HEAD + "[relays.isp]\nhost = 1\n",
    "relay_port_type": cfg(relay='port = "587"\n'),
    "relay_port_bool": cfg(relay="port = false\n"),
    "relay_ca_file_missing": cfg(relay='ca_file = "/nonexistent/ca.pem"\n'),
    "relay_ca_file_directory": cfg(relay='ca_file = "."\n'),
    "relay_username_type": cfg(relay="username = 5\n"),
    "relay_password_type": cfg(relay='username = "u"\npassword = 12345678\n'),
    "relay_password_file_type": cfg(relay='username = "u"\npassword_file = 12345678\n'),
    "relay_password_and_file": cfg(relay='username = "u"\npassword = "p"\npassword_file = "isp.pw"\n'),
    "relay_password_file_missing": cfg(relay='username = "u"\npassword_file = "nope.pw"\n'),
    "relay_password_file_not_utf8": cfg(relay='username = "u"\npassword_file = "latin1.pw"\n'),
    "relay_password_file_control": cfg(relay='username = "u"\npassword_file = "ctl.pw"\n'),
    "relay_password_control": cfg(relay='username = "u"\npassword = "a\\tb"\n'),
    "relay_concurrency_zero": cfg(relay="concurrency = 0\n"),
    "relay_timeout_word": cfg(relay='timeout = "soon"\n'),
    "relay_timeout_number": cfg(relay="timeout = 30\n"),
    "relay_timeout_unit": cfg(relay='timeout = "5 m"\n'),
    "relay_rate_delay_negative": cfg(relay='rate_delay = "-1s"\n'),
    "relay_max_per_hour_negative": cfg(relay="max_per_hour = -1\n"),
    "relay_max_per_day_type": cfg(relay='max_per_day = "many"\n'),
    "relay_recipient_limit_zero": cfg(relay="recipient_limit = 0\n"),
    "relay_auth_without_tls": cfg(relay='tls = "none"\nusername = "u"\npassword = "p"\n'),
    "relay_username_without_password": cfg(relay='username = "u"\n'),
    "relay_password_without_username": cfg(relay='password = "p"\n'),
    "relay_unknown_key": cfg(relay='typo = 1\n'),
    "relay_name_with_newline": HEAD + '[relays."a\\nb"]\nhost = "h"\nport = "x"\n',
    "senders_type": cfg("senders = 5\n"),
    "senders_entry_not_a_table": cfg('senders = ["a@example.com"]\n'),
    "senders_address_missing": cfg('senders = [{relay = "isp"}]\n'),
    "senders_address_invalid": cfg('senders = [{address = "not an address"}]\n'),
    "senders_address_bare_at": cfg('senders = [{address = "@"}]\n'),
    "senders_address_twice": cfg('senders = [{address = "A@example.com"}, {address = "a@Example.com"}]\n'),
    "senders_relay_type": cfg('senders = [{address = "a@example.com", relay = 1}]\n'),
    "senders_relay_unknown": cfg('senders = [{address = "a@example.com", relay = "gmail"}]\n'),
    "senders_username_type": cfg('senders = [{address = "a@example.com", username = []}]\n'),
    "senders_password_without_username": cfg('senders = [{address = "a@example.com", password = "p"}]\n'),
    "senders_username_over_plain_relay": cfg('senders = [{address = "a@example.com", username = "u", password = "p"}]\n',
                                             'tls = "none"\n'),
    "senders_clients_type": cfg('senders = [{address = "a@example.com", clients = "10.0.0.1"}]\n'),
    "senders_clients_host_name": cfg('senders = [{address = "a@example.com", clients = ["10.0.0.1", "printer.lan"]}]\n'),
    "senders_clients_integer": cfg('senders = [{address = "a@example.com", clients = [10]}]\n'),
    "senders_unknown_key": cfg('senders = [{address = "a@example.com", relays = "isp"}]\n'),
    "queue_not_a_table": cfg("queue = 5\n"),
    "queue_min_backoff_bad": table("queue", 'min_backoff = "six"\n'),
    "queue_max_shorter_than_min": table("queue", 'min_backoff = "2h"\n'),
    "queue_lifetime_bad": table("queue", 'lifetime = "forever"\n'),
    "queue_reserve_bytes_type": table("queue", 'reserve_bytes = "16M"\n'),
    "queue_reserve_bytes_negative": table("queue", "reserve_bytes = -1\n"),
    "queue_bounces_per_hour_zero": table("queue", "bounces_per_hour = 0\n"),
    "queue_unknown_key": table("queue", "retries = 3\n"),
    "smtpd_not_a_table": cfg("smtpd = []\n"),
    "smtpd_max_connections_zero": table("smtpd", "max_connections = 0\n"),
    "smtpd_max_connections_per_client_type": table("smtpd", 'max_connections_per_client = "10"\n'),
    "smtpd_recipient_limit_zero": table("smtpd", "recipient_limit = 0\n"),
    "smtpd_timeout_bad": table("smtpd", 'timeout = "1y"\n'),
    "smtpd_session_limit_bad": table("smtpd", "session_limit = 3600\n"),
    "smtpd_hard_error_limit_zero": table("smtpd", "hard_error_limit = 0\n"),
    "smtpd_unknown_key": table("smtpd", "banner = 1\n"),
    "bounce_template_missing": cfg('bounce_template = "nope.txt"\n'),
    "bounce_template_type": cfg("bounce_template = 1\n"),
    "master_not_a_table": cfg('master = "root"\n'),
    "master_qmgr_without_smtpd": table("master", 'smtpd_user = ""\n'),
    "master_user_type": table("master", "qmgr_user = 0\n"),
    "master_unknown_key": table("master", 'board_user = "x"\n'),
    "postscreen_not_a_table": cfg("postscreen = true\n"),
    "postscreen_access_type": table("postscreen", 'access = "permit_mynetworks"\n'),
    "postscreen_access_bad": table("postscreen", 'access = ["permit_mynetworks", "allow 10.0.0.0/8"]\n'),
    "postscreen_access_network": table("postscreen", 'access = ["reject 10.0.0.300/8"]\n'),
    "postscreen_access_not_string": table("postscreen", "access = [1]\n"),
    "postscreen_denylist_action_bad": table("postscreen", 'denylist_action = "reject"\n'),
    "postscreen_greet_wait_bad": table("postscreen", 'greet_wait = "six"\n'),
    "postscreen_greet_wait_zero": table("postscreen", 'greet_wait = "0s"\n'),
    "postscreen_greet_wait_long": table("postscreen", 'greet_wait = "61s"\n'),
    "postscreen_greet_banner_long": table("postscreen", 'greet_banner = "' + "x" * 201 + '"\n'),
    "postscreen_greet_banner_control": table("postscreen", 'greet_banner = "a\\u0007b"\n'),
    "postscreen_greet_action_bad": table("postscreen", "greet_action = 1\n"),
    "postscreen_dnsbl_sites_range": table("postscreen", 'dnsbl_sites = ["zen.test=127.0.0.[9..2]"]\n'),
    "postscreen_dnsbl_sites_weight": table("postscreen", 'dnsbl_sites = ["zen.test*1001"]\n'),
    "postscreen_dnsbl_sites_zone": table("postscreen", 'dnsbl_sites = ["-bad-"]\n'),
    "postscreen_dnsbl_threshold_zero": table("postscreen", "dnsbl_threshold = 0\n"),
    "postscreen_dnsbl_threshold_range": table("postscreen", "dnsbl_threshold = 1001\n"),
    "postscreen_allowlist_positive": table("postscreen", "dnsbl_allowlist_threshold = 1\n"),
    "postscreen_allowlist_range": table("postscreen", "dnsbl_allowlist_threshold = -1001\n"),
    "postscreen_dnsbl_action_bad": table("postscreen", 'dnsbl_action = "warn"\n'),
    "postscreen_dnsbl_timeout_long": table("postscreen", 'dnsbl_timeout = "2m"\n'),
    "postscreen_resolver_host_name": table("postscreen", 'resolver = "dns.example:53"\n'),
    "postscreen_resolver_port": table("postscreen", 'resolver = "127.0.0.1:0"\n'),
    "postscreen_cache_file_path": table("postscreen", 'cache_file = "../state/x"\n'),
    "postscreen_cache_file_hidden": table("postscreen", 'cache_file = ".db"\n'),
    "postscreen_max_connections_zero": table("postscreen", "max_connections = 0\n"),
    "postscreen_unknown_key": table("postscreen", 'greet = "6s"\n'),
    "rewrite_not_a_table": cfg('rewrite = "x"\n'),
    "rewrite_local_sender_type": table("rewrite", "local_sender = 1\n"),
    "rewrite_local_sender_bare_name": table("rewrite", 'local_sender = "root"\n'),
    "rewrite_local_sender_from_admin": cfg().replace('"admin@example.com"', '"\\"a b\\"@example.com"'),
    "rewrite_senders_type": table("rewrite", 'senders = "x"\n'),
    "rewrite_senders_bare_name": table("rewrite.senders", '"root" = "x@example.com"\n'),
    "rewrite_senders_bad_identity": table("rewrite.senders", '"a@b.example" = "Name <>"\n'),
    "rewrite_senders_identity_type": table("rewrite.senders", '"a@b.example" = 5\n'),
    "rewrite_clients_type": table("rewrite", "clients = []\n"),
    "rewrite_clients_bad_network": table("rewrite.clients", '"192.168.1.300" = "x@example.com"\n'),
    "rewrite_clients_bad_identity": table("rewrite.clients", '"192.168.1.0/24" = "Name <x@example.com"\n'),
    "rewrite_unknown_key": table("rewrite", "sender = {}\n"),
    "users_entry_not_a_table": cfg(tables=f'[users]\nalice = "{HASH}"\n'),
    "users_bad_name": cfg(tables=f'[users."bad name"]\npassword_hash = "{HASH}"\nsenders = ["a@b.example"]\n'),
    "users_hash_missing": table("users.alice", 'senders = ["a@b.example"]\n'),
    "users_hash_type": table("users.alice", 'password_hash = 5\nsenders = ["a@b.example"]\n'),
    "users_hash_plaintext": table("users.alice", 'password_hash = "plaintext"\nsenders = ["a@b.example"]\n'),
    "users_senders_missing": table("users.alice", f'password_hash = "{HASH}"\n'),
    "users_senders_type": table("users.alice", f'password_hash = "{HASH}"\nsenders = "a@b.example"\n'),
    "users_senders_empty": table("users.alice", f'password_hash = "{HASH}"\nsenders = []\n'),
    "users_senders_bad": table("users.alice", f'password_hash = "{HASH}"\nsenders = ["a@b.example", "not an address"]\n'),
    "users_unknown_key": table("users.alice", f'password_hash = "{HASH}"\nsenders = ["a@b.example"]\nsender = []\n'),
}
# Two problems each: which one is reported is behaviour too.
TWO_PROBLEMS = {
    "hostname_and_no_relays": 'hostname = "a b"\nadmin_address = "admin@example.com"\n',
    "default_relay_and_hostname": cfg('default_relay = "x"\n').replace('"relay.lan"', '"a b"'),
    "hostname_and_users": cfg("users = 5\n").replace('"relay.lan"', '"a b"'),
    "users_and_admin_address": 'hostname = "relay.lan"\nusers = 5\n' + ISP,
    "spool_dir_and_mynetworks": cfg('spool_dir = 1\nmynetworks = [1]\n'),
    "admin_address_and_message_size": cfg("message_size_limit = 0\n").replace('"admin@example.com"', '"x"'),
    "listen_and_senders": cfg('listen = [{address = "x"}]\nsenders = [{address = "x"}]\n'),
    "senders_and_queue": cfg('senders = [{address = "x"}]\nqueue = {lifetime = "x"}\n'),
    "queue_and_smtpd": cfg('queue = {lifetime = "x"}\nsmtpd = {timeout = "x"}\n'),
    "smtpd_and_bounce_template": cfg('bounce_template = "nope"\nsmtpd = {timeout = "x"}\n'),
    "bounce_template_and_master": cfg('bounce_template = "nope"\nmaster = {smtpd_user = ""}\n'),
    "listen_and_bounce_template": cfg('bounce_template = "nope"\nlisten = [{address = "x"}]\n'),
    "master_and_postscreen": cfg('master = {smtpd_user = ""}\npostscreen = {greet_wait = "x"}\n'),
    "postscreen_and_rewrite": cfg('postscreen = {greet_wait = "x"}\nrewrite = {local_sender = "x"}\n'),
    "rewrite_and_unknown_top_key": cfg('zzz = 1\nrewrite = {local_sender = "x"}\n'),
    "relay_tls_and_host": HEAD + '[relays.isp]\ntls = "ssl"\n',
    "relay_port_and_tls_type": HEAD + '[relays.isp]\nhost = "h"\nport = "x"\ntls = 1\n',
    "relay_password_file_and_concurrency": cfg(relay='username = "u"\npassword_file = "nope"\nconcurrency = 0\n'),
    "relay_credentials_and_unknown_key": cfg(relay='username = "u"\ntypo = 1\n'),
    "relay_credentials_and_budget": cfg(relay='username = "u"\nmax_per_day = -1\n'),
    "relay_first_bad_of_two": cfg(tables='[relays.b]\nhost = "h"\nport = "x"\n').replace(ISP, ISP + "port = true\n"),
    "listen_cert_pair_and_postscreen": cfg('listen = [{address = "0.0.0.0:25", tls_cert = "c.pem", postscreen = 1}]\n'),
    "listen_tls_bad_and_auth_type": cfg('listen = [{address = "0.0.0.0:25", tls = "ssl", auth = 5}]\n'),
    "listen_tls_and_auth_bad": cfg('listen = [{address = "0.0.0.0:25", tls = "ssl", auth = "x"}]\n'),
    "listen_modes_and_unknown_key": cfg('listen = [{address = "0.0.0.0:25", tls = "implicit", x = 1}]\n'),
    "listen_address_and_cert": cfg('listen = [{address = "x", tls_cert = "nope"}]\n'),
    "senders_twice_and_relay": cfg('senders = [{address = "a@b.example"}, {address = "a@b.example", relay = "x"}]\n'),
    "senders_credentials_and_unknown_key": cfg('senders = [{address = "a@b.example", password = "p", x = 1}]\n'),
    "senders_clients_and_credentials": cfg('senders = [{address = "a@b.example", password = "p", clients = ["x"]}]\n'),
    "queue_backoffs_and_unknown_key": table("queue", 'min_backoff = "2h"\nx = 1\n'),
    "queue_backoffs_and_bounces": table("queue", 'min_backoff = "2h"\nbounces_per_hour = 0\n'),
    "master_users_and_unknown_key": table("master", 'smtpd_user = ""\nx = 1\n'),
    "postscreen_threshold_and_cache_file": table("postscreen", 'dnsbl_threshold = 0\ncache_file = "/x"\n'),
    "postscreen_threshold_and_allowlist": table("postscreen", "dnsbl_threshold = 0\ndnsbl_allowlist_threshold = 1\n"),
    "postscreen_threshold_and_unknown_key": table("postscreen", "dnsbl_threshold = 0\nx = 1\n"),
    "postscreen_banner_and_action": table("postscreen", 'greet_banner = 1\ngreet_action = "x"\n'),
    "rewrite_local_sender_and_unknown_key": table("rewrite", 'local_sender = "root"\nx = 1\n'),
    "rewrite_local_sender_type_and_senders": table("rewrite", 'local_sender = 1\nsenders = {"root" = "a@b.example"}\n'),
    "rewrite_local_sender_and_clients": table("rewrite", 'local_sender = "root"\nclients = {"x" = "a@b.example"}\n'),
    "rewrite_senders_and_clients": table("rewrite", 'senders = {"root" = "a@b.example"}\nclients = {"x" = "y"}\n'),
    "rewrite_clients_type_and_senders": table("rewrite", 'clients = 1\nsenders = {"root" = "a@b.example"}\n'),
    "rewrite_senders_order": table("rewrite.senders", '"b@b.example" = "x"\n"a@b.example" = "y"\n'),
    "users_name_and_not_a_table": cfg(tables='[users]\n"bad name" = 5\n'),
    "users_name_and_hash": cfg(tables='[users."bad name"]\npassword_hash = 5\n'),
    "users_hash_and_senders": table("users.alice", 'password_hash = "x"\n'),
    "users_senders_and_unknown_key": table("users.alice", f'password_hash = "{HASH}"\nsenders = []\nx = 1\n'),
    "users_and_listen_auth": cfg('listen = [{address = "0.0.0.0:587", auth = "required", tls_cert = "c.pem", '
                                 'tls_key = "k.pem"}]\n', tables='[users.alice]\nsenders = ["a@b.example"]\n'),
    "unknown_keys_everywhere": cfg("zzz = 1\n", "zzz = 1\n", "[queue]\nzzz = 1\n"),
}
CASES = {**VALID, **BROKEN, **TWO_PROBLEMS}
FQDNS = {"minimal_fqdn_default": FQDN, "minimal_no_fqdn": ""}


def run(name: str, directory: str, command: str) -> str:
    """`mta-lite -c DIR/mta-lite.toml config COMMAND` for one case, in this process: the exit
    status, standard output as it is, each line of standard error after "! "."""
    for file, data in FILES.items():
        pathlib.Path(directory, file).write_bytes(data)
    path = os.path.join(directory, "mta-lite.toml")
    text = CASES[name]
    if text == "DIR":
        os.makedirs(path, exist_ok=True)
    elif text is not None:
        data = text if isinstance(text, bytes) else text.replace("$DIR", directory).encode()
        pathlib.Path(path).write_bytes(data)
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            mock.patch("socket.getfqdn", return_value=FQDNS.get(name, FQDN)):
        status = cli.main(["-c", path, "config", command])
    out.flush()
    shown = out.buffer.getvalue().decode("utf-8")
    lines = "".join(f"! {line}\n" for line in err.getvalue().splitlines())
    return f"exit {status}\n{shown}{lines}".replace(directory, "$DIR")


def header(name: str, command: str) -> str:
    return f"### {name}: config {command}\n"


@functools.cache
def expected() -> dict[str, str]:
    blocks, current = {}, None
    for line in EXPECTED.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("### "):
            current = line
            blocks[current] = ""
        elif current is not None:
            blocks[current] += line
    return blocks


def write_expected() -> None:
    with tempfile.TemporaryDirectory(prefix="mta-golden-") as top:
        parts = []
        for number, name in enumerate(CASES):
            for command in COMMANDS:
                directory = os.path.join(top, f"{number}-{command}")
                os.mkdir(directory)
                parts.append(header(name, command) + run(name, directory, command))
    EXPECTED.write_text("".join(parts), encoding="utf-8")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", CASES)
def test_config_golden_output_is_unchanged(name, command, tmp_path):
    blocks = expected()
    assert header(name, command) in blocks, f"no recorded output for {name} (see the module docstring)"
    assert run(name, str(tmp_path), command) == blocks[header(name, command)]


@pytest.mark.parametrize("name", [name for name in CASES if header(name, "public") in expected()
                                  and expected()[header(name, "public")].startswith("exit 0\n")])
def test_config_golden_public_config_reads_back_as_itself(name, tmp_path):
    """What the receiving side gets (`config public`, read with secrets=False) is the same
    config: shown again, it is the same bytes."""
    public = run(name, str(tmp_path), "public").removeprefix("exit 0\n").replace("$DIR", str(tmp_path))
    again = parse_config(tomllib.loads(public), str(tmp_path / "mta-lite.toml"), secrets=False)
    assert public_config_toml(again).decode() == public


def test_config_golden_records_exactly_these_cases():
    assert sorted(expected()) == sorted(header(name, command) for name in CASES for command in COMMANDS)


if __name__ == "__main__":
    write_expected()
