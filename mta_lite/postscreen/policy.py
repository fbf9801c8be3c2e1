"""policy — postscreen's decisions, pure: access list, stress mode, and the verdict.

    access list   first match wins: "permit_mynetworks", "permit NET", "reject NET",
                  "dunno NET" (stop looking, run the tests); no match: run the tests
    stress        at STRESS_FRACTION of a listener's max_connections (Postfix: ${stress?..})
                  greet wait 2 s, SMTP timeouts 10 s and a per-command deadline, error limit 1
    verdict       the failed tests' actions: any "drop" wins (521 now), else the first
                  "enforce" (the mini SMTP engine answers 550 at RCPT); "ignore" only logs

Guarantees: parse_access() accepts only the forms above and names the bad entry; access()
never raises on a strange peer address (it simply matches nothing).
Must never: permit a client that no rule permits.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mta_lite.envelope import client_ip
from mta_lite.reply import Reply

IGNORE, ENFORCE, DROP = "ignore", "enforce", "drop"
ACTIONS = (IGNORE, ENFORCE, DROP)
PERMIT, REJECT, DUNNO = "permit", "reject", "dunno"
PERMIT_MYNETWORKS = "permit_mynetworks"
# Postfix STRESS_README: overload starts when the server's process limit is reached; one
# event loop has no process limit, so we call it overload a little before the hard cap,
# while there are still slots left to serve the clients that behave.
STRESS_FRACTION = 0.8


@dataclass(frozen=True)
class AccessRule:
    action: str                      # permit | reject | dunno
    network: object | None = None    # ipaddress network; None: mynetworks

    def __str__(self) -> str:
        return PERMIT_MYNETWORKS if self.network is None else f"{self.action} {self.network}"


@dataclass(frozen=True)
class StressLimits:
    """Postfix's overload values (STRESS_README); injectable so tests need not wait 10 s."""

    greet_wait_s: float = 2.0
    timeout_s: float = 10.0
    hard_error_limit: int = 1


def parse_access(entry: str) -> AccessRule:
    """One access list entry -> AccessRule; ValueError naming the problem."""
    if not isinstance(entry, str):
        raise ValueError(f"expected a string, got {entry!r}")
    words = entry.split()
    if words == [PERMIT_MYNETWORKS]:
        return AccessRule(PERMIT)
    if len(words) != 2 or words[0] not in (PERMIT, REJECT, DUNNO):
        raise ValueError(f'expected "permit_mynetworks" or "permit|reject|dunno NETWORK", got {entry!r}')
    try:
        network = ipaddress.ip_network(words[1], strict=False)
    except ValueError:
        raise ValueError(f"expected a network like 203.0.113.0/24, got {words[1]!r}") from None
    return AccessRule(words[0], network)


def access(rules: tuple[AccessRule, ...], ip: str, in_mynetworks: bool) -> str:
    """permit, reject or dunno for a client; the first matching rule decides."""
    addr = client_ip(ip)
    for rule in rules:
        if rule.network is None:
            if in_mynetworks:
                return PERMIT
        elif addr is not None and addr.version == rule.network.version and addr in rule.network:
            return rule.action
    return DUNNO


def under_stress(active: int, max_connections: int, fraction: float = STRESS_FRACTION) -> bool:
    """True when `active` connections (this one included) reach the stress fraction."""
    return active >= max(1, max_connections * fraction)


@dataclass
class Verdict:
    """What the failed tests ask for; the first reply of each kind is the one given."""

    drop: Reply | None = None
    enforce: Reply | None = None
    failed: list[str] = field(default_factory=list)

    def fail(self, test: str, action: str, enforce_reply: Reply, drop_reply: Reply) -> None:
        self.failed.append(test)
        if action == DROP and self.drop is None:
            self.drop = drop_reply
        elif action == ENFORCE and self.enforce is None:
            self.enforce = enforce_reply

    @property
    def blocked(self) -> bool:
        return self.drop is not None or self.enforce is not None
