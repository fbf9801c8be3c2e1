"""accounts — per smarthost login: concurrency, budget, the pause after a refused login, health.

An account is one relay and one username (Route.account). Its connections, its budget
(budget.py), its failures and its pause are its own: one account refused or throttled by
its smarthost never slows another (S5).

Guarantees: after a refused login (535) the account is paused for auth_pause_s() (hours,
doubling per consecutive refusal); while paused nothing is attempted for it; when the pause
ends exactly one delivery (the probe) goes through, the others wait for its outcome. The
same holds after a delivery that got no answer at all (connect refused, timeout, 421): the
account pauses for min_backoff, then one probe, so a smarthost that is down sees one
connection per pause, not one per queued message (Postfix's dead destination). A
refusal seen by several deliveries that were already in flight together doubles the pause
once, not once per delivery. flush() ends a pause early but still lets only one probe through.
A reloaded config whose credentials for the account differ (a keyed hash of host, port,
username and password, compared in memory only) ends the pause at once. With rate_delay,
one delivery at a time and at least rate_delay between the end of one and the next start.
A smarthost that gave no answer or only 421 for UNREACHABLE_AFTER_S shows as unreachable.
Must never: hold or print a password; block an account because another one failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from mta_lite.config.schema import Config, QueueConfig, Route, all_routes
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT, DeliveryResult
from mta_lite.qmgr.backoff import auth_pause_s
from mta_lite.qmgr.budget import DAY_S, HOUR_S, Budget, BudgetFile, Limits
from mta_lite.qmgr.fairness import ServedLog

GO, PROBE, PAUSED = "go", "probe", "paused"
STATE_OK, STATE_DEFERRING, STATE_AUTH_FAILED = "ok", "deferring", "auth_failed"
STATE_THROTTLED, STATE_UNREACHABLE = "throttled", "unreachable"
# Ten minutes without an answer (or with only 421) is more than a smarthost restart or a
# DSL reconnect takes; from then on the status (and the LEDs) say unreachable, not deferring.
UNREACHABLE_AFTER_S = 600.0
# Per process: the credentials digest is only ever compared within one run, never stored.
_DIGEST_KEY = os.urandom(16)
# Messages in flight per account beyond its connection count: enough to keep every
# connection busy, few enough that one slow account cannot fill the active queue.
BACKLOG_PER_SLOT = 2


class Account:
    """One smarthost login as the queue manager sees it."""

    def __init__(self, name: str, concurrency: int, budget: Budget | None = None,
                 digest: bytes = b"") -> None:
        self.name = name
        self.concurrency = max(1, concurrency)
        self.slots = asyncio.Semaphore(self.concurrency)
        self.budget = budget or Budget(Limits())
        self.digest = digest                 # credentials_digest(); compared on reload
        self.served = ServedLog()            # fairness between this account's senders
        self.unreachable_since = 0.0
        self.in_flight = 0                   # messages started for this account, waiting or delivering
        self.counts = {SENT: 0, DEFER: 0, BOUNCE: 0}
        self.last_error = ""
        self.auth_failures = 0               # consecutive refused logins; 0 once one succeeds
        self.auth_failed_since = 0.0         # the first of them (the status page shows it)
        self.paused_until = 0.0
        # The smarthost gave no answer (connect refused, timeout, 421): like Postfix's dead
        # destination, the account pauses for min_backoff and then sends one probe, instead
        # of one connection attempt per queued message against a host that is down.
        self.site_down = False
        self.last_reply = None               # the reply behind last_error
        self._deferring = False
        self._probe: asyncio.Event | None = None

    def state(self, now: float) -> str:
        if self.auth_failures:
            return STATE_AUTH_FAILED
        if self.unreachable_since and now - self.unreachable_since >= UNREACHABLE_AFTER_S:
            return STATE_UNREACHABLE
        if self.budget.over(now) is not None:
            return STATE_THROTTLED
        return STATE_DEFERRING if self._deferring else STATE_OK

    def busy(self) -> bool:
        return self.in_flight >= self.concurrency * BACKLOG_PER_SLOT

    def can_start(self, now: float) -> bool:
        """Room for one more delivery now: a free slot, and rate_delay since the last one
        (with rate_delay deliveries go one at a time, as in Postfix)."""
        if self.budget.limits.rate_delay_s and not self.paused(now):
            return self.in_flight == 0 and now >= self.budget.pace_until()
        return not self.busy()

    def paused(self, now: float) -> bool:
        return self.paused_until > now

    async def admit(self, clock) -> str:
        """GO, PROBE (the one attempt after a pause; call end_probe() after it) or PAUSED."""
        while True:
            if self.paused(clock()):
                return PAUSED
            if not (self.auth_failures or self.site_down):
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
            self.last_error, self.last_reply = str(deferred[0].reply), deferred[0].reply
        if result.auth_failed:
            # A sibling that failed first already paused the account: do not double again.
            if not self.paused(now):
                self.auth_failures += 1
                self.auth_failed_since = self.auth_failed_since or now
                self.paused_until = now + auth_pause_s(self.auth_failures, queue)
            return
        # SENT or BOUNCE proves the smarthost took our login (or needed none); a bare
        # connection failure proves nothing, so the next attempt is a probe again.
        if result.with_status(SENT) or result.with_status(BOUNCE):
            self.auth_failures, self.auth_failed_since = 0, 0.0
            self.paused_until = 0.0
        self._deferring = bool(deferred) and not result.with_status(SENT)
        if deferred and len(deferred) == len(result.recipients) and all(_no_answer(r.reply) for r in deferred):
            self.unreachable_since = self.unreachable_since or now
            if not self.paused(now):        # siblings in flight together pause it once
                self.site_down, self.paused_until = True, now + queue.min_backoff_s
        else:
            self.unreachable_since = 0.0
            if self.site_down and not self.auth_failures:
                self.paused_until = 0.0     # it answered: the site is up again
            self.site_down = False

    def count_deferred(self, n: int) -> None:
        """Recipients deferred without an attempt (paused); last_error keeps the smarthost's words."""
        self.counts[DEFER] += n

    def end_pause(self, now: float) -> None:
        if self.paused(now):
            self.paused_until = now

    def apply(self, route: Route) -> bool:
        """A reloaded config for this account; True if a refused login's pause ended because
        the credentials changed."""
        if route.relay.concurrency != self.concurrency:
            self.concurrency = max(1, route.relay.concurrency)
            self.slots = asyncio.Semaphore(self.concurrency)    # in-flight ones release the old
        self.budget.set_limits(Limits.of(route.relay))
        digest, self.digest = self.digest, credentials_digest(route)
        if digest == self.digest or not self.auth_failures:
            return False
        self.auth_failures, self.paused_until, self.auth_failed_since = 0, 0.0, 0.0
        return True

    def snapshot(self, now: float) -> dict:
        over = self.budget.over(now)
        limits = self.budget.limits
        return {"state": self.state(now), "sent": self.counts[SENT], "deferred": self.counts[DEFER],
                "bounced": self.counts[BOUNCE], "last_error": self.last_error,
                "paused_until": self.paused_until or None, "concurrency": self.concurrency,
                "site_down": self.site_down,
                "throttled_until": over[1] if over else None,
                "unreachable_since": self.unreachable_since or None,
                "auth_failed_since": self.auth_failed_since or None,
                "sent_last_hour": self.budget.used(now, HOUR_S), "sent_last_day": self.budget.used(now, DAY_S),
                "max_per_hour": limits.max_per_hour, "max_per_day": limits.max_per_day,
                "rate_delay": limits.rate_delay_s}


def _no_answer(reply) -> bool:
    """No conversation with the smarthost: DNS, connect, timeout, lost connection (4.4.x), 421."""
    return reply.code == 421 or reply.enhanced.startswith("4.4.")


def credentials_digest(route: Route) -> bytes:
    """A keyed hash of where and as whom the account logs in; never stored, never logged."""
    digest = hashlib.blake2b(key=_DIGEST_KEY, digest_size=16)
    password = route.password.reveal() if route.password else ""
    oauth = route.oauth
    secret = oauth.client_secret.reveal() if oauth and oauth.client_secret else ""
    login = (route.auth, oauth.token_url, oauth.client_id, secret, oauth.scope) if oauth else (route.auth,)
    for part in (route.relay.host, str(route.relay.port), route.username, password, *login):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.digest()


class Accounts:
    """Every account of the configuration, created up front so the status lists them all.
    Budgets start from `book` (the history saved by an earlier run), if given."""

    def __init__(self, cfg: Config, book: BudgetFile | None = None) -> None:
        self._by_name: dict[str, Account] = {}
        self.book = book
        for route in _routes(cfg):
            self.for_route(route)

    def for_route(self, route: Route) -> Account:
        name = route.account
        if name not in self._by_name:
            limits = Limits.of(route.relay)
            budget = self.book.budget(name, limits) if self.book else Budget(limits)
            self._by_name[name] = Account(name, route.relay.concurrency, budget, credentials_digest(route))
        return self._by_name[name]

    def reconfigure(self, cfg: Config) -> set[str]:
        """Apply a reloaded config, keeping each account's budget, counters and pause; the
        names of accounts whose pause ended because their credentials changed."""
        resumed, wanted = set(), {}
        for route in _routes(cfg):
            wanted.setdefault(route.account, route)
        for name in list(self._by_name):
            if name not in wanted and self.book is not None:
                self.book.saved[name] = self._by_name[name].budget.to_dict()
            if name not in wanted:
                del self._by_name[name]
        for name, route in wanted.items():
            if name in self._by_name and self._by_name[name].apply(route):
                resumed.add(name)
            self.for_route(route)
        return resumed

    def budgets(self) -> dict:
        return {name: account.budget for name, account in self._by_name.items()}

    def get(self, name: str) -> Account | None:
        return self._by_name.get(name)

    def end_pauses(self, now: float) -> None:
        for account in self._by_name.values():
            account.end_pause(now)

    def snapshot(self, now: float) -> dict:
        return {name: account.snapshot(now) for name, account in sorted(self._by_name.items())}


def _routes(cfg: Config) -> list[Route]:
    return all_routes(cfg)
