"""resolve — how one queued message leaves, worked out once: the sender, the route, the account.

    sender    the address it leaves with: its own, or the identity [rewrite] gives it
              (identity.rewrite_for; a logged-in submission is never rewritten by its
              client address, the login says who sent it)
    route     the smarthost and login chosen for that sender (config route_for), so a
              printer's mail uses the account of the address it is rewritten to, the
              address S4 checked at MAIL FROM
    account   the route's account: its connections, budget and pause (accounts.py)

The queue manager resolves a message when it first schedules it (again after a reload) and
hands the result to the delivery; `queue why` resolves it the same way: all three agree on
the account without each working it out.
Must never: do I/O, or change the queue file (the rewrite applies to the bytes sent).
"""

from __future__ import annotations

from dataclasses import dataclass

from mta_lite.config.schema import Config, Route, route_for
from mta_lite.envelope import Envelope
from mta_lite.identity import Rewrite, rewrite_for
from mta_lite.qmgr.rewrite import rewrite_message


@dataclass(frozen=True)
class Outgoing:
    """How one message leaves: its envelope sender, its route, and the rewrite that chose
    the sender (None: it leaves as received)."""

    sender: str
    route: Route
    rewrite: Rewrite | None = None

    @property
    def account(self) -> str:
        return self.route.account

    def content(self, raw: bytes) -> bytes:
        """The bytes to send: From: rewritten to the identity, if there is a rewrite."""
        return rewrite_message(raw, self.rewrite.identity) if self.rewrite else raw


def resolve(cfg: Config, envelope: Envelope) -> Outgoing:
    """The Outgoing of a queued message under the config `cfg` (pure)."""
    rewrite = rewrite_for(cfg.rewrite, cfg.hostname, envelope.sender, envelope.client_address,
                          bool(envelope.sasl_username))
    sender = rewrite.identity.address if rewrite else envelope.sender
    return Outgoing(sender, route_for(cfg, sender), rewrite)
