"""result — the outcome of one delivery attempt, with its permanence.

Every result says, per recipient, whether the smarthost accepted it (sent), refused it for
good (bounce) or for now (defer). Only the queue manager turns that into queue actions.
Guarantees: an outcome that is unknown (timeout or connection lost after the final dot) is
transient, never permanent (G3). A login failure (535) is transient and flags the account.
Must never: carry a password or AUTH payload in a reply text.
"""

from __future__ import annotations

from dataclasses import dataclass

from mta_lite.reply import Reply

SENT, DEFER, BOUNCE = "sent", "deferred", "bounced"


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    status: str          # SENT | DEFER | BOUNCE
    reply: Reply


@dataclass(frozen=True)
class DeliveryResult:
    """The result of one attempt for one message: per-recipient status plus where it went."""

    relay: str                               # Postfix's relay=: "host[ip]:port" or "none"
    recipients: tuple[RecipientResult, ...]
    auth_failed: bool = False                # the smarthost refused our login (535 and kin)

    @classmethod
    def transient(cls, recipients, reply: Reply, relay: str = "none", auth_failed: bool = False) -> "DeliveryResult":
        """Every recipient deferred with the same reply (connection, TLS, AUTH, 4xx...)."""
        return cls(relay, tuple(RecipientResult(r, DEFER, reply) for r in recipients), auth_failed)

    @classmethod
    def permanent(cls, recipients, reply: Reply, relay: str = "none") -> "DeliveryResult":
        """Every recipient bounced with the same reply (5xx to MAIL FROM or end of DATA)."""
        return cls(relay, tuple(RecipientResult(r, BOUNCE, reply) for r in recipients))

    def with_status(self, status: str) -> list[RecipientResult]:
        return [r for r in self.recipients if r.status == status]
