"""identity: which identity mail leaves with ([rewrite] order), local senders, ownership."""

from __future__ import annotations

import ipaddress

import pytest

from mta_lite.config.schema import RewriteConfig, SenderRule
from mta_lite.identity import Identity, ip_in, is_local_sender, owns, parse_identity, rewrite_for, rule_for

HOST = "relay.lan"
SCANNER = Identity("scanner@example.com", "Office Scanner")
LAN = Identity("lan@example.com", "LAN")
ADMIN = Identity("admin@example.com")
REWRITE = RewriteConfig(
    senders={"root@printer.lan": Identity("printer@example.com"), "@nas.lan": Identity("nas@example.com")},
    clients=((ipaddress.ip_network("192.168.1.20/32"), SCANNER), (ipaddress.ip_network("192.168.1.0/24"), LAN)),
    local_sender=ADMIN)


@pytest.mark.parametrize("text, expected", [
    ("scanner@example.com", Identity("scanner@example.com")),
    ("<scanner@example.com>", Identity("scanner@example.com")),
    ("Office Scanner <scanner@Example.COM>", Identity("scanner@example.com", "Office Scanner")),
    ('"Doe, John" <john@example.com>', Identity("john@example.com", "Doe, John")),
    ("Jörg <jorg@example.com>", Identity("jorg@example.com", "Jörg")),
])
def test_parse_identity_accepted_forms_parse(text, expected):
    assert parse_identity(text) == expected
    assert parse_identity(str(expected)) == expected          # str() reads back the same


@pytest.mark.parametrize("text", ["", "root", "a@b@c", "Name <>", "Na\"me <a@b.c>", "A <a@b.c> B",
                                  "Bad\r\nFrom: x <a@b.c>", "<a@[127.0.0.1]>", "x <a%b@c.d>", 42,
                                  "N\ud800 <a@b.c>", "a\ud800@b.c"])
def test_parse_identity_invalid_is_none(text):
    assert parse_identity(text) is None


@pytest.mark.parametrize("sender, client, expected, rule", [
    ("root@printer.lan", "192.168.1.20", "printer@example.com", "rewrite.senders root@printer.lan"),
    ("ROOT@Printer.LAN", "10.0.0.1", "printer@example.com", "rewrite.senders root@printer.lan"),
    ("admin@nas.lan", "192.168.1.20", "nas@example.com", "rewrite.senders @nas.lan"),
    ("scan@scanner.local", "192.168.1.20", "scanner@example.com", "rewrite.clients 192.168.1.20/32"),
    ("root@relay.lan", "192.168.1.20", "scanner@example.com", "rewrite.clients 192.168.1.20/32"),
    ("cam@cam.local", "192.168.1.77", "lan@example.com", "rewrite.clients 192.168.1.0/24"),
    ("root@relay.lan", "10.0.0.1", "admin@example.com", "rewrite.local_sender"),
    ("pi@localhost", "10.0.0.1", "admin@example.com", "rewrite.local_sender"),
    ("pi@raspberrypi", "10.0.0.1", "admin@example.com", "rewrite.local_sender"),
])
def test_rewrite_for_first_matching_rule_wins(sender, client, expected, rule):
    rewrite = rewrite_for(REWRITE, HOST, sender, client)
    assert (rewrite.identity.address, rewrite.rule) == (expected, rule)


@pytest.mark.parametrize("sender, client", [("", "192.168.1.20"), ("alice@example.com", "10.0.0.1"),
                                            ("bob@relay.lan.example", "10.0.0.1")])
def test_rewrite_for_null_or_unmatched_sender_is_none(sender, client):
    assert rewrite_for(REWRITE, HOST, sender, client) is None


def test_rewrite_for_local_sender_off_leaves_local_names():
    assert rewrite_for(RewriteConfig(), HOST, "root@relay.lan", "10.0.0.1") is None


def test_rewrite_for_ipv4_mapped_client_matches_ipv4_network():
    assert rewrite_for(REWRITE, HOST, "x@y.example", "::ffff:192.168.1.20").identity == SCANNER


@pytest.mark.parametrize("sender, local", [
    ("root", True), ("root@relay.lan", True), ("root@RELAY.LAN", True), ("u@localhost", True),
    ("u@localhost.localdomain", True), ("pi@raspberrypi", True), ("u@example.com", False),
    ("u@sub.relay.lan", False), ("", False)])
def test_is_local_sender_names_only_the_lan_knows(sender, local):
    assert is_local_sender(sender, HOST) is local


def test_owns_exact_and_domain_patterns():
    patterns = {"alice@example.com", "@family.example"}
    assert owns(patterns, "Alice@Example.com") and owns(patterns, "kid@FAMILY.example")
    assert not owns(patterns, "bob@example.com") and not owns(patterns, "")


def test_ip_in_handles_scope_and_garbage():
    nets = (ipaddress.ip_network("fe80::/10"), ipaddress.ip_network("10.0.0.0/8"))
    assert ip_in("fe80::1%eth0", nets) and ip_in("10.1.2.3", nets)
    assert not ip_in("unknown", nets) and not ip_in("192.168.1.1", nets)


def test_rule_for_exact_beats_domain_as_route_for():
    exact, domain = SenderRule("a@example.com", "isp"), SenderRule("@example.com", "isp")
    assert rule_for((domain, exact), "A@example.com") is exact
    assert rule_for((domain, exact), "b@example.com") is domain
    assert rule_for((exact,), "b@example.com") is None
