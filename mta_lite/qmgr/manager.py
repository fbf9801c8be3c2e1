"""manager — the queue manager (qmgr): decides which queued message is tried when.

    incoming/   tried in arrival order (queue IDs sort by arrival)
    deferred/   retried when state.next_attempt <= now (backoff.retry_delay_s)
    hold/       never touched
    maildrop/   local submissions (sendmail), copied into incoming/ by pickup.py first
    doorbell    mail_arrived() / flush() in-process; W, F, R rung on spool/public/qmgr by other
                processes; and a rescan every RESCAN_INTERVAL_S in case a ring was lost

Which due messages start, per account, is dispatch.py's: notices first, then round-robin
between senders; at most the account's concurrency deliver while a few more wait, or one at
a time at least rate_delay apart; over max_per_hour/max_per_day the due messages are deferred
to their slots (budget.py), whose history this module saves in state/budgets.json (at most
once a second) and reads back at start; the status page's counts go to public/history.json
(mta_lite.history) at most once a minute. While the system clock is not set (clock.py), mail for relays that
check certificates is deferred without a connection; the clock is read again every
CHECK_INTERVAL_S, and when it is set that mail is due at once. reconfigure() applies a
reloaded config without losing budgets, counters or pauses, except that new credentials end
an account's auth pause at once.

Guarantees: a message is handled by at most one delivery at a time; at most
MAX_ACTIVE_MESSAGES are in flight, so one slow, paused or throttled smarthost cannot starve
the others, and one noisy sender cannot starve the others of its account. In memory are only
queue IDs, next-attempt times, senders and how each message leaves (resolve.py: resolved
once, handed to the delivery); content is read at delivery time. stop() lets in-flight
deliveries finish for a bounded time, then cancels them: a cancelled message stays in
active/ and recovery (spool.recover(), run by the caller at start-up) requeues it.
Must never: crash on a bad queue file or a failing spool operation; deliver a held message;
run spool recovery itself (active/ may hold another manager's work until the caller says).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time

from mta_lite.config.schema import Config
from mta_lite.history import History, history_path
from mta_lite.maillog import config_secrets
from mta_lite.errors import MtaLiteError
from mta_lite.identity import bound_to_other_clients
from mta_lite.queue import WAIT_AUTH, WAIT_CLOCK, Spool
from mta_lite.queue import doorbell
from mta_lite.qmgr.accounts import Account, Accounts
from mta_lite.qmgr.budget import BudgetFile, Slot, Ticket, budget_path
from mta_lite.qmgr.clock import BUILD_TIME, CHECK_INTERVAL_S, ClockWatch, clock_path
from mta_lite.qmgr.delivery import Deliverer
from mta_lite.qmgr.dispatch import Meta, by_account, read_meta, start_account
from mta_lite.qmgr.notices import Notices
from mta_lite.qmgr.pickup import LOCAL_ADDRESS, Pickup
from mta_lite.qmgr.resolve import Outgoing

log = logging.getLogger("mta_lite.qmgr")

# Safety net for lost rings and for messages moved by hand; Postfix's queue_run_delay is
# 300 s, but a relay box with a handful of messages can afford to look every 15 s.
RESCAN_INTERVAL_S = 15.0
# Bounds memory and open work on a small board: Postfix's qmgr_message_active_limit is 20000
# for a server; a home relay rarely has more than a few messages in flight.
MAX_ACTIVE_MESSAGES = 200
# stop(): how long in-flight deliveries may finish before they are cancelled (and requeued
# by recovery at the next start). Below systemd's default 90 s stop timeout.
STOP_GRACE_S = 30.0


class QueueManager:
    """Schedules queued messages onto the smarthost pool; see the module docstring."""

    def __init__(self, cfg: Config, spool: Spool, pool, *, clock=time.time,
                 rng: random.Random | None = None, sleep=asyncio.sleep,
                 template: str | None = None, after_reload: bool = False,
                 build_time: float = BUILD_TIME) -> None:
        self.cfg, self.spool, self.pool = cfg, spool, pool
        self.clock, self.sleep = clock, sleep
        self.budget_file = BudgetFile(budget_path(spool.root))
        self.budget_file.load()
        self.accounts = Accounts(cfg, self.budget_file)
        self.history = History(history_path(spool.root), clock=clock)    # for the status page
        self.history.load()
        self.history.secrets = sorted(config_secrets(cfg), key=len, reverse=True)
        self.watch = ClockWatch(clock_path(spool.root), clock=clock, build_time=build_time)
        self.notices = Notices(cfg, spool, clock=clock, on_new_mail=self._new_mail, template=template)
        self.deliverer = Deliverer(cfg, spool, pool, self.accounts, self.notices, clock=clock,
                                   rng=rng or random.Random(), sleep=sleep,
                                   on_deferred=self._deferred_until, watch=self.watch,
                                   history=self.history)
        self.pickup = Pickup(spool, cfg.message_size_limit, clock=clock, sender_bound=self._locally_bound)
        self._incoming: dict[str, None] = {}        # IDs in incoming/, in arrival order
        self._deferred: dict[str, float] = {}       # ID -> next attempt
        self._meta_of: dict[str, Meta] = {}         # ID -> account, sender; learned once
        self._pace_at = math.inf                    # next rate_delay start for waiting mail
        self._inflight: dict[str, asyncio.Task] = {}
        self._work = asyncio.Event()
        self._want = {"incoming": True, "rescan": True, "flush": False}
        self._last_scan = -math.inf
        self._stopping = False
        self._running = False
        self._stopped = asyncio.Event()
        # Started for a reload (the master replaces a queue manager that dropped root): the
        # config may carry new credentials, so mail waiting on a refused login is tried again
        # at once, as reconfigure() does in place. One login per account tells.
        self._resume_auth = after_reload
        self.smtpd_stats: dict[str, int] = {}       # counters the smtpd process sends

    # ------------------------------------------------------------------ public
    async def run(self) -> None:
        """Deliver until stop(). The caller ran spool.recover() before, once."""
        listening = await doorbell.listen(self.spool.doorbell_path, self._on_ring, self._on_stats)
        self._running = True
        try:
            while not self._stopping:
                self._work.clear()
                self._pass()
                if not self._stopping:
                    await self._idle(self._idle_delay())
        finally:
            listening.close()
            self._save_budgets(force=True)
            self.watch.save(force=True)
            self.history.save_if_due(force=True)
            self._stopped.set()

    def mail_arrived(self) -> None:
        """New mail in incoming/ (called by the in-process SMTP listener after a commit)."""
        self._want["incoming"] = True
        self._work.set()

    def flush(self) -> None:
        """Retry everything deferred now; ends account pauses early (still one probe each)."""
        self._want["flush"] = True
        self._work.set()

    def rescan(self) -> None:
        """Re-read incoming/ and deferred/ (a message was held, released or deleted)."""
        self._want["rescan"] = True
        self._work.set()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Take no new work; give in-flight deliveries grace_s, then cancel them."""
        self._stopping = True
        self._work.set()
        tasks = list(self._inflight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("stop: %d deliveries cancelled; they stay in active/ and are "
                            "requeued at the next start", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        if self._running:
            await self._stopped.wait()

    def _locally_bound(self, sender: str) -> bool:
        """pickup's S4 check, on the config in use now (a reload changes bindings)."""
        return bound_to_other_clients(self.cfg, sender, LOCAL_ADDRESS)

    def reconfigure(self, cfg: Config) -> None:
        """A reloaded, validated config: new relays, credentials, limits and queue settings;
        budgets, counters and pauses stay; new credentials end an auth pause at once."""
        self.cfg = self.deliverer.cfg = cfg
        self.notices.reconfigure(cfg)
        self.history.secrets = sorted(config_secrets(cfg), key=len, reverse=True)
        self.pickup.size_limit = cfg.message_size_limit
        resumed = self.accounts.reconfigure(cfg)
        self._meta_of.clear()                       # routes may have changed
        now = self.clock()
        for queue_id in list(self._deferred):
            meta = self._meta(queue_id, "deferred")
            if meta is not None and meta.out.account in resumed:
                self._deferred[queue_id] = now
        for name in sorted(resumed):
            log.info("account %s: credentials changed, login pause ended", name)
        self.rescan()

    def idle(self) -> bool:
        """Running, nothing in flight, no ring waiting to be handled (tests, status)."""
        return self._running and not self._inflight and not self._work.is_set()

    def snapshot(self) -> dict:
        """Per-account state and counters, plus totals (for status.py and the board)."""
        accounts = self.accounts.snapshot(self.clock())
        totals = {key: sum(a[key] for a in accounts.values())
                  for key in ("sent", "deferred", "bounced")}
        totals.update(in_flight=len(self._inflight), incoming=len(self._incoming),
                      deferred_queue=len(self._deferred), **self.deliverer.stats, **self.notices.stats,
                      bounces_last_hour=self.notices.limit.used(self.clock()))
        return {"accounts": accounts, "totals": totals, "smtpd": dict(self.smtpd_stats),
                "clock": self.watch.snapshot()}

    # ------------------------------------------------------------------ the doorbell
    def _on_stats(self, counters: dict) -> None:
        """The smtpd process's counters, shown in the status file the daemon writes."""
        self.smtpd_stats = counters

    def _on_ring(self, what: bytes) -> None:
        {doorbell.NEW_MAIL: self.mail_arrived, doorbell.FLUSH: self.flush, doorbell.RESCAN: self.rescan}[what]()

    def _new_mail(self, queue_id: str) -> None:
        self._incoming[queue_id] = None
        self._work.set()

    def _deferred_until(self, queue_id: str, when: float) -> None:
        self._deferred[queue_id] = when

    async def _idle(self, delay: float) -> None:
        if self._work.is_set():
            return
        if self.sleep is asyncio.sleep:     # the loop's own clock: one timer, no tasks (per pass)
            try:
                async with asyncio.timeout(delay):
                    await self._work.wait()
            except TimeoutError:
                pass    # the pass is due: a retry, a rescan, a budget save
            return
        work = asyncio.ensure_future(self._work.wait())     # a test's clock: its own sleep
        nap = asyncio.ensure_future(self.sleep(delay))
        try:
            await asyncio.wait({work, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            work.cancel()
            nap.cancel()

    def _idle_delay(self) -> float:
        """Until the next rescan, future retry, rate_delay start or budget save; work blocked
        by busy slots waits for a delivery that ends to signal work."""
        now = self.clock()
        wake_at = [self._last_scan + RESCAN_INTERVAL_S, self._pace_at]
        if not self.watch.is_set():             # look again soon: NTP may set it any moment
            wake_at.append(now + CHECK_INTERVAL_S)
        save_at = self.budget_file.due(self.accounts.budgets(), now)
        future = [t for q, t in self._deferred.items() if t > now and q not in self._inflight]
        return max(0.0, min([*wake_at, *future, *([save_at] if save_at is not None else [])]) - now)

    def _save_budgets(self, force: bool = False) -> None:
        self.budget_file.save_if_due(self.accounts.budgets(), self.clock(), force)

    # ------------------------------------------------------------------ scheduling
    def _pass(self) -> None:
        clock_set = self.watch.check()
        now = self.clock()
        want, self._want = self._want, {"incoming": False, "rescan": False, "flush": False}
        want["rescan"] = want["rescan"] or clock_set
        full = now - self._last_scan >= RESCAN_INTERVAL_S or want["rescan"] or want["flush"]
        try:
            if full or want["incoming"]:
                self._pickup()
                self._scan_incoming()
            if full:
                self._last_scan = now      # also on failure: retry at the next interval, no spin
                self._scan_deferred()
        except OSError as exc:
            log.error("queue scan failed, retrying in %d s: %s", RESCAN_INTERVAL_S, exc)
        if want["flush"]:
            self._deferred = dict.fromkeys(self._deferred, now)
            self.accounts.end_pauses(now)
        if clock_set:
            self._release_clock_waits(now)
        self._start_due(now)
        self._save_budgets()
        self.history.save_if_due()

    def _release_clock_waits(self, now: float) -> None:
        """The clock was just set: mail deferred for it is due now (its wait is in its state)."""
        waiting = [q for q in self._deferred if self.spool.load_state(q).wait == WAIT_CLOCK]
        for queue_id in waiting:
            self._deferred[queue_id] = now
        if waiting:
            log.info("clock is set: %d message%s waiting for it go out now", len(waiting), "s" if len(waiting) != 1 else "")

    def _pickup(self) -> None:
        """maildrop/ -> incoming/ before incoming/ is read; a backlog continues next pass."""
        try:
            more = self.pickup.run().more
        except OSError as exc:      # maildrop/ unreadable: local submissions wait, SMTP mail not
            log.error("maildrop/ scan failed, retrying in %d s: %s", RESCAN_INTERVAL_S, exc)
            return
        if more:
            self._want["incoming"] = True
            self._work.set()

    def _scan_incoming(self) -> None:
        self._incoming = {q: None for q in self.spool.list("incoming") if q not in self._inflight}

    def _scan_deferred(self) -> None:
        known, self._deferred = self._deferred, {}
        resumed = 0
        for queue_id in self.spool.list("deferred"):
            if queue_id not in self._inflight:
                when = known.get(queue_id)
                if when is None:
                    state = self.spool.load_state(queue_id)
                    when = state.next_attempt
                    if self._resume_auth and state.wait == WAIT_AUTH:
                        when, resumed = 0.0, resumed + 1     # due at once
                self._deferred[queue_id] = when
        if self._resume_auth and resumed:
            log.info("reload: %d message%s held by a refused login tried again", resumed, "s" if resumed != 1 else "")
        self._resume_auth = False
        live = self._incoming.keys() | self._deferred.keys() | self._inflight.keys()
        self._meta_of = {q: m for q, m in self._meta_of.items() if q in live}

    def _due(self, now: float) -> list[tuple[str, str]]:
        """(queue ID, directory) of what may start now: incoming/ in arrival order, then the
        deferred messages that are due, oldest due first; none in flight."""
        due = sorted((t, q) for q, t in self._deferred.items() if t <= now)
        found = [(q, "incoming") for q in self._incoming] + [(q, "deferred") for _, q in due]
        return [(q, src) for q, src in found if q not in self._inflight]

    def _start_due(self, now: float) -> None:
        """Hand due messages to dispatch.py account by account, within MAX_ACTIVE_MESSAGES."""
        room = MAX_ACTIVE_MESSAGES - len(self._inflight)
        self._pace_at = math.inf
        for name, waiting in by_account(self._due(now), self._meta).items():
            if room <= 0 or self._stopping:
                return
            account = self.accounts.get(name) if name else None
            if account is None:          # unreadable: the delivery step quarantines or skips it
                for item in waiting[:room]:
                    self._start(item.queue_id, item.src, None, None)
                room -= len(waiting[:room])
                continue
            started = start_account(account, waiting, now, room, start=self._start,
                                    waits_for_clock=self.deliverer.waits_for_clock)
            if started.ran_out:     # it just ran out: `queue why` and a restart must know
                self._save_budgets(force=True)
            self._pace_at = min(self._pace_at, started.pace_at)
            room -= started.count

    def _meta(self, queue_id: str, src: str) -> Meta | None:
        """What scheduling needs of a message (dispatch.read_meta), read once and cached."""
        meta = self._meta_of.get(queue_id)
        if meta is None:
            meta = read_meta(self.cfg, self.spool, queue_id, src)
            if meta is not None:
                self._meta_of[queue_id] = meta
        return meta

    def _start(self, queue_id: str, src: str, account: Account | None, out: Outgoing | None,
               slot: Slot | None = None, ticket: Ticket | None = None) -> None:
        self._incoming.pop(queue_id, None)
        self._deferred.pop(queue_id, None)
        if account is not None:
            account.in_flight += 1
        self._inflight[queue_id] = asyncio.create_task(self._run_one(queue_id, src, account, out, slot, ticket))

    async def _run_one(self, queue_id: str, src: str, account: Account | None, out: Outgoing | None,
                       slot: Slot | None, ticket: Ticket | None) -> None:
        try:
            await self.deliverer.process(queue_id, src, out, slot, ticket)
        except (MtaLiteError, OSError) as exc:
            log.error("%s: spool error, message left for a later retry: %s", queue_id, exc)
            self._park(queue_id)
        except Exception:   # a bug in one message's handling must not stop the queue
            log.exception("%s: unexpected error, message left for a later retry", queue_id)
            self._park(queue_id)
        finally:
            if ticket is not None:
                ticket.release()                # not used: gone, paused, failed early
            if account is not None:
                account.in_flight -= 1
            self._inflight.pop(queue_id, None)
            self._work.set()

    def _park(self, queue_id: str) -> None:
        """After an error: back to deferred/ for a retry at min_backoff (or active/ until restart)."""
        try:
            if self.spool.move(queue_id, "active", "deferred"):
                self._deferred[queue_id] = self.clock() + self.cfg.queue.min_backoff_s
        except OSError as exc:
            log.error("%s: stays in active/ until the next start: %s", queue_id, exc)
