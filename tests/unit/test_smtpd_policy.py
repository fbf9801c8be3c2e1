"""policy: sender ownership at MAIL FROM (S4): client bindings, user bindings, rewrites."""

from __future__ import annotations

import ipaddress

import pytest

from mta_lite.config.schema import RewriteConfig, SenderRule, User
from mta_lite.identity import Identity
from mta_lite.smtpd.policy import SenderPolicy

NET = ipaddress.ip_network
POLICY = SenderPolicy(
    hostname="relay.lan",
    senders=(SenderRule("printer@example.com", "isp", clients=(NET("192.168.1.10/32"),)),
             SenderRule("@bound.example", "isp", clients=(NET("192.168.2.0/24"),)),
             SenderRule("free@bound.example", "isp"),
             SenderRule("alice@example.com", "isp")),
    rewrite=RewriteConfig(senders={"root@printer.lan": Identity("printer@example.com")}),
    users={"alice": User("alice", "$scrypt$", frozenset({"alice@example.com", "@family.example"}))})


@pytest.mark.parametrize("sender, client", [
    ("printer@example.com", "192.168.1.10"),
    ("Printer@EXAMPLE.com", "::ffff:192.168.1.10"),
    ("x@bound.example", "192.168.2.99"),
    ("free@bound.example", "10.0.0.1"),       # the exact entry has no binding: it routes
    ("alice@example.com", "10.0.0.1"),        # an entry without clients binds nothing
    ("nobody@else.example", "10.0.0.1"),
    ("", "10.0.0.1"),
])
def test_refusal_owned_or_unbound_sender_is_none(sender, client):
    assert POLICY.refusal(sender, client) is None


@pytest.mark.parametrize("sender, client", [
    ("printer@example.com", "192.168.1.11"),
    ("x@bound.example", "192.168.1.10"),
    ("root@printer.lan", "192.168.1.11"),     # rewritten at delivery onto printer's account
])
def test_refusal_bound_sender_from_foreign_client_replies_553(sender, client):
    reply = POLICY.refusal(sender, client)
    assert str(reply) == f"553 5.7.1 <{sender}>: Sender address rejected: not owned by client [{client}]"


def test_refusal_rewritten_sender_from_its_own_client_is_none():
    assert POLICY.refusal("root@printer.lan", "192.168.1.10") is None


@pytest.mark.parametrize("sender", ["alice@example.com", "ALICE@example.com", "kid@family.example"])
def test_refusal_user_owning_sender_is_none_from_any_client(sender):
    assert POLICY.refusal(sender, "203.0.113.9", user="alice") is None


@pytest.mark.parametrize("sender", ["bob@example.com", "printer@example.com", "", "x@sub.family.example"])
def test_refusal_user_not_owning_sender_replies_553_naming_user(sender):
    reply = POLICY.refusal(sender, "192.168.1.10", user="alice")
    assert str(reply) == f"553 5.7.1 <{sender}>: Sender address rejected: not owned by user alice"


def test_refusal_login_unknown_to_policy_is_refused():
    assert POLICY.refusal("alice@example.com", "10.0.0.1", user="mallory").code == 553
