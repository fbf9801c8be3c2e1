"""accounts — per smarthost login: concurrency slots, the pause after a refused login, counters.

An account is one relay and one username (Route.account). Its connections, its failures and
its pause are its own: one account refused by its smarthost never slows another (S5).

Guarantees: after a refused login (535) the account is paused for auth_pause_s() (hours,
doubling per consecutive refusal); while paused nothing is attempted for it; when the pause
ends exactly one delivery (the probe) goes through, the others wait for its outcome. A
refusal seen by several deliveries that were already in flight together doubles the pause
once, not once per delivery. flush() ends a pause early but still lets only one probe through.
Must never: hold or print a password; block an account because another one failed.
"""

from __future__ import annotations

import asyncio

from ..config import Config, QueueConfig, Route
from ..smarthost.result import BOUNCE, DEFER, SENT, DeliveryResult
from .backoff import auth_pause_s

GO, PROBE, PAUSED = "go", "probe", "paused"
STATE_OK, STATE_DEFERRING, STATE_AUTH_FAILED = "ok", "deferring", "auth_failed"
# Messages picked up per account beyond its connection count: enough to keep every
# connection busy, few enough that one slow account cannot fill the active queue.
BACKLOG_PER_SLOT = 2


class Account:
    """One smarthost login as the queue manager sees it."""

    def __init__(self, name: str, concurrency: int) -> None:
        self.name = name
        self.concurrency = max(1, concurrency)
        self.slots = asyncio.Semaphore(self.concurrency)
        self.picked = 0                      # messages taken for this account, waiting or delivering
        self.counts = {SENT: 0, DEFER: 0, BOUNCE: 0}
        self.last_error = ""
        self.auth_failures = 0               # consecutive refused logins; 0 once one succeeds
        self.paused_until = 0.0
        self._deferring = False
        self._probe: asyncio.Event | None = None

    @property
    def state(self) -> str:
        if self.auth_failures:
            return STATE_AUTH_FAILED
        return STATE_DEFERRING if self._deferring else STATE_OK

    def busy(self) -> bool:
        return self.picked >= self.concurrency * BACKLOG_PER_SLOT

    def paused(self, now: float) -> bool:
        return self.paused_until > now

    async def admit(self, clock) -> str:
        """GO, PROBE (the one attempt after a pause; call end_probe() after it) or PAUSED."""
        while True:
            if self.paused(clock()):
                return PAUSED
            if not self.auth_failures:
                return GO
            if self._probe is None:
                self._probe = asyncio.Event()
                return PROBE
            await self._probe.wait()

    def end_probe(self) -> None:
        if self._probe is not None:
            self._probe.set()
            self._probe = None

    def record(self, result: DeliveryResult, now: float, queue: QueueConfig) -> None:
        """Count the outcome; pause on a refused login; a session past login clears the pause."""
        for rcpt in result.recipients:
            self.counts[rcpt.status] = self.counts.get(rcpt.status, 0) + 1
        deferred = result.with_status(DEFER)
        if deferred:
            self.last_error = str(deferred[0].reply)
        if result.auth_failed:
            # A sibling that failed first already paused the account: do not double again.
            if not self.paused(now):
                self.auth_failures += 1
                self.paused_until = now + auth_pause_s(self.auth_failures, queue)
            return
        # SENT or BOUNCE proves the smarthost took our login (or needed none); a bare
        # connection failure proves nothing, so the next attempt is a probe again.
        if result.with_status(SENT) or result.with_status(BOUNCE):
            self.auth_failures = 0
            self.paused_until = 0.0
        self._deferring = bool(deferred) and not result.with_status(SENT)

    def count_deferred(self, n: int) -> None:
        """Recipients deferred without an attempt (paused); last_error keeps the smarthost's words."""
        self.counts[DEFER] += n

    def end_pause(self, now: float) -> None:
        if self.paused(now):
            self.paused_until = now

    def snapshot(self) -> dict:
        return {"state": self.state, "sent": self.counts[SENT], "deferred": self.counts[DEFER],
                "bounced": self.counts[BOUNCE], "last_error": self.last_error,
                "paused_until": self.paused_until or None, "concurrency": self.concurrency}


class Accounts:
    """Every account of the configuration, created up front so the status lists them all."""

    def __init__(self, cfg: Config) -> None:
        self._by_name: dict[str, Account] = {}
        for relay in cfg.relays.values():
            self.for_route(Route(relay, relay.username, relay.password))
        for rule in cfg.senders:
            if rule.username and rule.relay in cfg.relays:
                self.for_route(Route(cfg.relays[rule.relay], rule.username, rule.password))

    def for_route(self, route: Route) -> Account:
        name = route.account
        if name not in self._by_name:
            self._by_name[name] = Account(name, route.relay.concurrency)
        return self._by_name[name]

    def get(self, name: str) -> Account | None:
        return self._by_name.get(name)

    def end_pauses(self, now: float) -> None:
        for account in self._by_name.values():
            account.end_pause(now)

    def snapshot(self) -> dict:
        return {name: account.snapshot() for name, account in sorted(self._by_name.items())}
