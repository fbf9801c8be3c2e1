"""identity — who a message is from when it leaves: sender rewriting rules and ownership, pure.

rewrite_for() says which identity a message leaves with, from its envelope sender and the
client it came from, first match wins:

    1. [rewrite.senders]  the exact address, then its @domain
    2. [rewrite.clients]  the most specific network that holds the client's IP
    3. rewrite.local_sender  for a local sender: a bare name (smtpd and sendmail make it
       name@<hostname>), @<hostname>, @localhost, or a domain without a dot (never valid
       on the Internet)

An address rule names this very sender, so it beats the client's default identity; both
beat the catch-all for local names. The null sender (a bounce) is never rewritten.
Both halves use this module: the qmgr rewrites at delivery and routes by the result, and
the smtpd checks sender ownership (S4) against the address the message will leave with, so
a rewrite can never carry a client onto credentials it may not use.
Must never: do I/O, or accept a display name that could break a header line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from mta_lite.envelope import client_ip, lookup_key, parse_path

LOCAL_DOMAINS = ("localhost", "localhost.localdomain")
# A display name from the config goes into a From: line: printable, no quotes, brackets or
# backslashes (so it never needs escaping and str() reads back the same identity).
_DISPLAY = re.compile(r"[^\x00-\x1f\x7f\"<>\\]{1,200}\Z")
_IDENTITY = re.compile(r"\s*(?:(?P<display>[^<>]*?)\s*<(?P<bracketed>[^<>]*)>|(?P<bare>[^<>\s]+))\s*\Z")


@dataclass(frozen=True)
class Identity:
    """An address, with the display name to put into From: ("" = keep the message's own)."""

    address: str
    display: str = ""

    def __str__(self) -> str:
        return f"{self.display} <{self.address}>" if self.display else self.address


@dataclass(frozen=True)
class Rewrite:
    """A rewrite that applies, and the rule that chose it (for the log line)."""

    identity: Identity
    rule: str


def parse_identity(text: str) -> Identity | None:
    """`Office Scanner <scanner@example.com>`, `"Office" <a@b>`, `<a@b>` or `a@b`; None if invalid."""
    match = _IDENTITY.match(text) if isinstance(text, str) else None
    if not match:
        return None
    display = (match.group("display") or "").strip()
    if len(display) >= 2 and display[0] == display[-1] == '"':
        display = display[1:-1].strip()
    if display and not (_DISPLAY.match(display) and _encodable(display)):
        return None             # control characters, brackets, quotes; a lone surrogate
    raw = match.group("bracketed") if match.group("bare") is None else match.group("bare")
    try:
        address = parse_path(f"<{raw.strip()}>", sender=False, smtputf8=True)
    except ValueError:          # AddressError; UnicodeEncodeError for a lone surrogate
        return None
    return Identity(address, display) if "@" in address else None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def domain_key(address: str) -> str | None:
    """`@example.com` for `a@Example.com`; None for an address without a domain."""
    key = lookup_key(address)
    return "@" + key.rpartition("@")[2] if "@" in key else None


def owns(patterns: Iterable[str], address: str) -> bool:
    """Does a list of `a@b` / `@domain` patterns (lower-cased) cover `address`?"""
    patterns = set(patterns)
    return bool(address) and (lookup_key(address) in patterns or domain_key(address) in patterns)


def ip_in(ip: str, networks: Iterable) -> bool:
    """Is `ip` (maybe with a %scope, maybe IPv4-mapped IPv6) in one of `networks`?"""
    addr = client_ip(ip)
    return addr is not None and any(addr in net for net in networks)


def is_local_sender(sender: str, hostname: str) -> bool:
    """root, root@<hostname>, user@localhost, pi@raspberrypi: names only this LAN knows."""
    if "@" not in sender:
        return bool(sender)
    domain = sender.rpartition("@")[2].lower()
    return domain in LOCAL_DOMAINS or domain == hostname.lower() or "." not in domain


def rewrite_for(rewrite, hostname: str, sender: str, client_ip: str,
                authenticated: bool = False) -> Rewrite | None:
    """The identity `sender` from `client_ip` leaves with, or None (it leaves as it is).
    `rewrite` is a config.RewriteConfig: senders (dict), clients ((network, Identity), ...)
    ordered most specific first, and local_sender (Identity or None). A message whose
    client logged in (submission) is never rewritten by its client address: the login, not
    the network it came from, says who sent it."""
    if not sender:
        return None
    for key in (lookup_key(sender), domain_key(sender)):
        if key and key in rewrite.senders:
            return Rewrite(rewrite.senders[key], f"rewrite.senders {key}")
    for network, identity in () if authenticated else rewrite.clients:
        if ip_in(client_ip, (network,)):
            return Rewrite(identity, f"rewrite.clients {network}")
    if rewrite.local_sender is not None and is_local_sender(sender, hostname):
        return Rewrite(rewrite.local_sender, "rewrite.local_sender")
    return None


def leaves_as(rewrite, hostname: str, sender: str, client_ip: str) -> tuple[str, ...]:
    """The address as given and, if [rewrite] changes it, the address it leaves with."""
    if not sender:
        return ()
    rewritten = rewrite_for(rewrite, hostname, sender, client_ip)
    if rewritten is None or rewritten.identity.address == sender:
        return (sender,)
    return (sender, rewritten.identity.address)


def bound_to_other_clients(cfg, sender: str, client_ip: str) -> bool:
    """S4: True when `sender`, as given or as it leaves after [rewrite], routes through a
    [[senders]] entry whose `clients` leave `client_ip` out. Used for SMTP clients and for
    local submissions (client 127.0.0.1), so that sendmail is no way around a binding."""
    for address in leaves_as(cfg.rewrite, cfg.hostname, sender, client_ip):
        rule = rule_for(cfg.senders, address)
        if rule is not None and rule.clients and not ip_in(client_ip, rule.clients):
            return True
    return False


def rule_for(rules: Iterable, address: str):
    """The [[senders]] entry that routes `address` (exact, then @domain), as config.route_for."""
    by_address = {rule.address: rule for rule in rules}
    key, domain = lookup_key(address), domain_key(address)
    return by_address.get(key) or (by_address.get(domain) if domain else None)
