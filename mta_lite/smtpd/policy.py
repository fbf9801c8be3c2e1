"""policy — may this client (or this login) use this envelope sender? Decided at MAIL FROM, pure.

S4, senders can't borrow credentials:

    logged in (submission)   the user's `senders` list must cover the address (exact or
                             @domain), else `553 5.7.1 <a>: Sender address rejected: not
                             owned by user NAME`. A login is the stronger proof: a
                             [[senders]] client list does not apply to it.
    not logged in            the [[senders]] entry that routes the address (exact, then
                             @domain) may list `clients`; a client outside them gets
                             `553 5.7.1 <a>: Sender address rejected: not owned by client [ip]`.

The check runs for the address the client gave AND for the address the message will leave
with after [rewrite] (identity.rewrite_for(), as the qmgr applies it at delivery): the
qmgr routes by the rewritten sender, so a rewrite must not lead onto credentials bound to
other clients. The null sender names no one and is only refused to logged-in users (a login
sends as its own addresses).
SECURITY: sees untrusted input only as addresses that envelope.parse_path() accepted.
Must never: let a client outside a sender's `clients` use it, or a user a sender not theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mta_lite.config.schema import Config, RewriteConfig, SenderRule, User
from mta_lite.identity import bound_to_other_clients, owns
from mta_lite.reply import Reply, sender_not_owned


@dataclass(frozen=True)
class SenderPolicy:
    """What the smtpd knows of sender ownership; built from the (secret-free) config."""

    hostname: str
    senders: tuple[SenderRule, ...] = ()
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    users: dict | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> "SenderPolicy":
        return cls(cfg.hostname, cfg.senders, cfg.rewrite, cfg.users)

    def refusal(self, sender: str, client_ip: str, user: str | None = None) -> Reply | None:
        """None when `sender` may be used here, else the 553 to give."""
        if user is not None:
            login: User | None = (self.users or {}).get(user)
            if login is None or not owns(login.senders, sender):
                return sender_not_owned(sender, f"user {user}")
            return None
        if bound_to_other_clients(self, sender, client_ip):
            return sender_not_owned(sender, f"client [{client_ip}]")
        return None
