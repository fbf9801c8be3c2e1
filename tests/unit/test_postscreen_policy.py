"""Postscreen's pure parts: access list, stress threshold, verdict, pass cache, mini engine,
and the [postscreen] config table. Fake clock, no sockets."""

import json
import os

import pytest

from mta_lite.config.load import effective_dict, parse_config
from mta_lite.errors import ConfigError
from mta_lite.reply import R521_PROTOCOL_ERROR, R550_PROTOCOL_ERROR, dnsbl_reply
from mta_lite.postscreen import cache as pscache
from mta_lite.postscreen.cache import DNSBL, PREGREET, PREGREET_TTL_S, PassCache, cache_path, decode
from mta_lite.postscreen.engine import COMMAND_LIMIT, EnforceSession
from mta_lite.postscreen.policy import (DROP, DUNNO, ENFORCE, IGNORE, PERMIT, REJECT, Verdict, access,
                                     parse_access, under_stress)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- access list

RULES = tuple(parse_access(e) for e in ("permit_mynetworks", "permit 192.168.1.0/24",
                                         "reject 203.0.113.0/24", "dunno 198.51.100.0/24",
                                         "reject 198.51.0.0/16", "reject 2001:db8::/32"))


@pytest.mark.parametrize("ip, lan, expected", [
    ("10.1.2.3", True, PERMIT),            # permit_mynetworks
    ("192.168.1.7", False, PERMIT),
    ("203.0.113.9", False, REJECT),
    ("198.51.100.1", False, DUNNO),        # dunno stops the list before the /16 reject
    ("198.51.7.1", False, REJECT),
    ("2001:db8::5", False, REJECT),
    ("::ffff:203.0.113.9", False, REJECT),
    ("192.0.2.1", False, DUNNO),           # no match: run the tests
    ("garbage", False, DUNNO),
])
def test_access_first_match_wins(ip, lan, expected):
    assert access(RULES, ip, lan) == expected


def test_access_empty_list_screens_the_lan_too():
    assert access((), "10.1.2.3", True) == DUNNO


@pytest.mark.parametrize("entry", ["permit", "allow 10.0.0.0/8", "reject 10.0.0.0/33", "permit_mynetworks x",
                                   "reject", 7, "reject 10.0.0.0/8 extra"])
def test_parse_access_bad_entry_raises_value_error(entry):
    with pytest.raises(ValueError):
        parse_access(entry)


# ---------------------------------------------------------------- stress and verdict

@pytest.mark.parametrize("active, maximum, expected", [
    (79, 100, False), (80, 100, True), (100, 100, True), (3, 5, False), (4, 5, True), (1, 1, True), (0, 1, False),
])
def test_under_stress_at_80_percent_of_max_connections(active, maximum, expected):
    assert under_stress(active, maximum) is expected


def test_verdict_drop_wins_and_first_enforce_reply_is_kept():
    verdict = Verdict()
    verdict.fail("pregreet", IGNORE, R550_PROTOCOL_ERROR, R521_PROTOCOL_ERROR)
    assert not verdict.blocked and verdict.failed == ["pregreet"]
    verdict.fail("pregreet", ENFORCE, R550_PROTOCOL_ERROR, R521_PROTOCOL_ERROR)
    verdict.fail("dnsbl", ENFORCE, dnsbl_reply(550, "192.0.2.1", "zen"), dnsbl_reply(521, "192.0.2.1", "zen"))
    assert verdict.enforce == R550_PROTOCOL_ERROR and verdict.drop is None
    verdict.fail("dnsbl", DROP, dnsbl_reply(550, "192.0.2.1", "zen"), dnsbl_reply(521, "192.0.2.1", "zen"))
    assert str(verdict.drop) == "521 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen"


# ---------------------------------------------------------------- pass cache

def test_cache_pregreet_pass_lasts_one_day():
    clock = Clock()
    cache = PassCache("", clock)
    cache.record("192.0.2.1", PREGREET, PREGREET_TTL_S)
    clock.now += PREGREET_TTL_S - 1
    assert cache.due("192.0.2.1", (PREGREET, DNSBL)) == (DNSBL,)
    clock.now += 1
    assert cache.due("192.0.2.1", (PREGREET, DNSBL)) == (PREGREET, DNSBL)


def test_cache_dnsbl_pass_expires_after_its_ttl():
    clock = Clock()
    cache = PassCache("", clock)
    cache.record("192.0.2.1", DNSBL, 60.0)
    assert cache.passed("192.0.2.1", DNSBL) and not cache.passed("192.0.2.1", PREGREET)
    clock.now += 60.0
    assert not cache.passed("192.0.2.1", DNSBL)


def test_cache_shorter_ttl_never_shortens_a_pass():
    cache = PassCache("", Clock())
    cache.record("192.0.2.1", DNSBL, 3600.0)
    cache.record("192.0.2.1", DNSBL, 60.0)
    assert cache.entries["192.0.2.1"][1] == Clock().now + 3600.0


def test_cache_save_and_load_survive_a_restart(tmp_path):
    clock = Clock()
    path = cache_path(str(tmp_path), "postscreen.db")
    os.makedirs(os.path.dirname(path))
    cache = PassCache(path, clock)
    cache.record("192.0.2.1", PREGREET, PREGREET_TTL_S)
    cache.record("192.0.2.2", DNSBL, 60.0)
    assert cache.save() and not cache.dirty
    assert os.stat(path).st_mode & 0o777 == 0o600
    clock.now += 120.0
    again = PassCache(path, clock)
    assert again.load() == 1                     # the expired DNSBL pass is pruned
    assert again.passed("192.0.2.1", PREGREET) and not again.passed("192.0.2.2", DNSBL)


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"version": 2, "clients": {}}',
                                     b'{"version": 1, "clients": []}', b"\xff\xfe", b"[" * 100000])
def test_cache_corrupt_file_loads_empty(tmp_path, content):
    path = tmp_path / "postscreen.db"
    path.write_bytes(content)
    cache = PassCache(str(path), Clock())
    assert cache.load() == 0 and cache.entries == {}


def test_cache_decode_drops_malformed_entries():
    now = Clock().now
    doc = {"version": 1, "clients": {"192.0.2.1": [now + 10, 0], "bad": [now + 10, 0],
                                     "192.0.2.2": [True, 0], "192.0.2.3": [now], "192.0.2.4": ["x", 0],
                                     "192.0.2.5": [float("inf"), 0]}}
    assert list(decode(json.dumps(doc).encode())) == ["192.0.2.1"]


def test_cache_is_capped_keeping_the_longest_passes(monkeypatch):
    monkeypatch.setattr(pscache, "MAX_ENTRIES", 3)
    cache = PassCache("", Clock())
    for i in range(5):
        cache.record(f"192.0.2.{i}", DNSBL, 100.0 + i)
    assert sorted(cache.entries) == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_cache_unwritable_directory_warns_and_keeps_running(tmp_path):
    cache = PassCache(str(tmp_path / "missing" / "postscreen.db"), Clock())
    cache.record("192.0.2.1", PREGREET, 60.0)
    assert cache.save() is False and cache.dirty


def test_cache_path_is_in_the_postscreen_directory_or_memory_only():
    assert cache_path("/var/spool/mta-lite", "postscreen.db") == "/var/spool/mta-lite/postscreen/postscreen.db"
    assert cache_path("/var/spool/mta-lite", "") == ""


# ---------------------------------------------------------------- mini engine

def engine(limit: int = 20) -> EnforceSession:
    return EnforceSession("mx.test", "192.0.2.1", dnsbl_reply(550, "192.0.2.1", "zen.test"), limit)


def test_enforce_engine_refuses_every_recipient_and_logs_envelope():
    e = engine()
    assert e.handle_line(b"EHLO bot.example\r\n").code == 250
    assert e.handle_line(b"MAIL FROM:<spam@bot.example> SIZE=100\r\n").code == 250
    reply = e.handle_line(b"RCPT TO:<victim@example.org>\r\n")
    assert str(reply) == "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.test"
    assert e.rejected() == ("NOQUEUE: reject: RCPT from [192.0.2.1]: 550 5.7.1 Service unavailable; client "
                            "[192.0.2.1] blocked using zen.test; from=<spam@bot.example> "
                            "to=<victim@example.org> proto=ESMTP helo=<bot.example>")
    assert e.handle_line(b"DATA\r\n").code == 554
    assert e.handle_line(b"QUIT\r\n").code == 221 and e.closing


def test_enforce_engine_never_accepts_data_or_recipient():
    e = engine(limit=1000)
    for line in (b"HELO x\r\n", b"MAIL FROM:<>\r\n", b"RCPT TO:<a@b>\r\n", b"DATA\r\n", b"BDAT 10 LAST\r\n",
                 b"RCPT TO:<postmaster>\r\n", b"STARTTLS\r\n", b"AUTH PLAIN AAAA\r\n"):
        reply = e.handle_line(line)
        assert reply.code not in (235, 354) and not (line.startswith(b"RCPT") and reply.code < 400)


def test_enforce_engine_hard_error_limit_one_replies_421():
    e = engine(limit=1)
    e.handle_line(b"HELO x\r\n")
    e.handle_line(b"XYZZY\r\n")
    assert str(e.over_limit()) == "421 4.7.0 mx.test Error: too many errors" and e.closing


def test_enforce_engine_command_limit_replies_421():
    e = engine(limit=1000)
    for _ in range(COMMAND_LIMIT):
        assert e.over_limit() is None
        e.handle_line(b"NOOP\r\n")
    assert str(e.over_limit()) == "421 4.7.0 mx.test Error: too many commands"


def test_enforce_engine_rset_noop_quit_answer_as_smtpd_but_rset_takes_arguments():
    e = engine()
    e.handle_line(b"HELO x\r\n")
    e.handle_line(b"MAIL FROM:<spam@bot.example>\r\n")
    assert str(e.handle_line(b"RSET now\r\n")) == "250 2.0.0 Ok"      # smtpd: 501 (no arguments)
    assert e.handle_line(b"RCPT TO:<victim@example.org>\r\n").code == 503
    assert str(e.handle_line(b"NOOP\r\n")) == "250 2.0.0 Ok" and not e.closing
    assert str(e.handle_line(b"QUIT\r\n")) == "221 2.0.0 Bye" and e.closing


@pytest.mark.parametrize("line, code", [(b"MAIL FROM:<a@b>\n", 521), (b"NO\x00OP\r\n", 521), (b"GET / HTTP/1.0\r\n", 221)])
def test_enforce_engine_smuggling_and_http_close(line, code):
    e = engine()
    assert e.handle_line(line).code == code and e.closing


# ---------------------------------------------------------------- config

BASE = {"admin_address": "admin@example.com", "relays": {"isp": {"host": "smtp.isp.example"}},
        "listen": [{"address": "127.0.0.1:2525", "postscreen": True}]}


def test_config_postscreen_defaults_and_listener_flag():
    cfg = parse_config(BASE, "t.toml")
    ps = cfg.postscreen
    assert cfg.listen[0].postscreen is True
    assert (ps.access, ps.greet_wait_s, ps.greet_action, ps.dnsbl_sites, ps.cache_file) == \
        (("permit_mynetworks",), 6.0, "enforce", (), "postscreen.db")


def test_config_postscreen_issue_example_round_trips_through_config_show():
    table = {"access": ["permit_mynetworks", "permit 192.168.1.0/24", "reject 203.0.113.0/24"],
             "denylist_action": "drop", "greet_wait": "6s", "greet_banner": "$hostname ESMTP",
             "greet_action": "enforce",
             "dnsbl_sites": ["zen.spamhaus.org=127.0.0.[2..11]*3", "bl.example*2",
                             "list.dnswl.org=127.0.[0..255].[1..3]*-2"],
             "dnsbl_threshold": 3, "dnsbl_allowlist_threshold": -1, "dnsbl_action": "enforce",
             "dnsbl_timeout": "5s", "resolver": "127.0.0.1:53", "cache_file": "postscreen.db",
             "max_connections": 100, "max_connections_per_client": 10}
    cfg = parse_config({**BASE, "postscreen": table}, "t.toml")
    shown = effective_dict(cfg)
    assert shown["postscreen"] == table and shown["listen"][0]["postscreen"] is True
    assert parse_config({**BASE, "postscreen": shown["postscreen"]}, "t.toml").postscreen == cfg.postscreen


@pytest.mark.parametrize("key, value, hint", [
    ("dnsbl_sites", ["zen.test=127.0.0.[9..2]"], "postscreen.dnsbl_sites[0]: empty range"),
    ("access", ["permit_mynetworks", "allow 10.0.0.0/8"], "postscreen.access[1]"),
    ("greet_action", "reject", "postscreen.greet_action: expected one of ignore, enforce, drop"),
    ("greet_wait", "six", "postscreen.greet_wait: expected a duration"),
    ("greet_wait", "2m", "postscreen.greet_wait: must be more than 0s and at most 60s"),
    ("resolver", "dns.example:53", "postscreen.resolver: expected an IP address"),
    ("cache_file", "../state/x", "postscreen.cache_file"),
    ("dnsbl_threshold", 0, "postscreen.dnsbl_threshold: must be at least 1"),
    ("dnsbl_allowlist_threshold", 1, "postscreen.dnsbl_allowlist_threshold"),
    ("greet_banner", "a\r\nb", "postscreen.greet_banner"),
    ("max_connections", 0, "postscreen.max_connections"),
    ("greet_wiat", "6s", "postscreen.greet_wiat: unknown key"),
])
def test_config_postscreen_bad_value_names_key(key, value, hint):
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "postscreen": {key: value}}, "t.toml")
    assert hint in str(info.value) and str(info.value).startswith("t.toml: ")


def test_config_listen_postscreen_must_be_boolean():
    with pytest.raises(ConfigError, match=r"listen\[0\].postscreen: expected bool"):
        parse_config({**BASE, "listen": [{"address": "127.0.0.1:25", "postscreen": "yes"}]}, "t.toml")
