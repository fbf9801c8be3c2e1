"""manager — the queue manager (qmgr): decides which queued message is tried when.

    incoming/   picked up in arrival order (queue IDs sort by arrival)
    deferred/   retried when state.next_attempt <= now (backoff.retry_delay_s)
    hold/       never touched
    maildrop/   local submissions (sendmail), copied into incoming/ by pickup.py first
    wake-ups    wake() / flush() in-process; W, F, R on spool/public/qmgr from other processes;
                and a rescan every RESCAN_INTERVAL_S in case a wake-up was lost

Guarantees: a message is handled by at most one delivery at a time; at most
MAX_ACTIVE_MESSAGES are in flight, and per account at most its concurrency deliver while a
few more wait, so one slow or paused smarthost cannot starve the others. In memory are only
queue IDs, next-attempt times and account names; content is read at delivery time. stop()
lets in-flight deliveries finish for a bounded time, then cancels them: a cancelled message
stays in active/ and recovery (spool.recover(), run by the caller at start-up) requeues it.
Must never: crash on a bad queue file or a failing spool operation; deliver a held message;
run spool recovery itself (active/ may hold another manager's work until the caller says).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time

from ..config import Config, route_for
from ..errors import MtaLiteError
from ..queue import Spool
from . import wakeup
from .accounts import Account, Accounts
from .delivery import Deliverer
from .pickup import Pickup

log = logging.getLogger("mta_lite.qmgr")

# Safety net for lost wake-ups and for messages moved by hand; Postfix's queue_run_delay is
# 300 s, but a relay box with a handful of messages can afford to look every 15 s.
RESCAN_INTERVAL_S = 15.0
# Bounds memory and open work on a small board: Postfix's qmgr_message_active_limit is 20000
# for a server; a home relay rarely has more than a few messages in flight.
MAX_ACTIVE_MESSAGES = 200
# stop(): how long in-flight deliveries may finish before they are cancelled (and requeued
# by recovery at the next start). Below systemd's default 90 s stop timeout.
STOP_GRACE_S = 30.0
DEFAULT_TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "templates", "bounce.txt")
FALLBACK_TEMPLATE = ("This is the mail system at host $hostname.\n\n"
                     "Your message could not be delivered to:\n\n$recipients\n")


def load_template(cfg: Config) -> str:
    """The owner's bounce_template, else the packaged templates/bounce.txt."""
    if cfg.bounce_template:
        try:
            with open(cfg.bounce_template, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("bounce_template %s unusable, using the default: %s", cfg.bounce_template, exc)
    try:
        # A plain path, not importlib.resources: that imports lazily, which fails once the
        # process has dropped to a user who cannot read the interpreter's own directory.
        with open(DEFAULT_TEMPLATE_PATH, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("default bounce template unusable, using a minimal one: %s", exc)
        return FALLBACK_TEMPLATE


class QueueManager:
    """Schedules queued messages onto the smarthost pool; see the module docstring."""

    def __init__(self, cfg: Config, spool: Spool, pool, *, clock=time.time,
                 rng: random.Random | None = None, sleep=asyncio.sleep,
                 template: str | None = None) -> None:
        self.cfg, self.spool, self.pool = cfg, spool, pool
        self.clock, self.sleep = clock, sleep
        self.accounts = Accounts(cfg)
        self.deliverer = Deliverer(
            cfg, spool, pool, self.accounts,
            load_template(cfg) if template is None else template,
            clock=clock, rng=rng or random.Random(),
            on_deferred=self._deferred_until, on_new_mail=self._new_mail)
        self.pickup = Pickup(spool, cfg.message_size_limit, clock=clock)
        self._incoming: dict[str, None] = {}        # IDs in incoming/, in arrival order
        self._deferred: dict[str, float] = {}       # ID -> next attempt
        self._account_of: dict[str, str] = {}       # ID -> account name, learned once
        self._inflight: dict[str, asyncio.Task] = {}
        self._kick = asyncio.Event()
        self._want = {"incoming": True, "rescan": True, "flush": False}
        self._last_scan = -math.inf
        self._stopping = False
        self._running = False
        self._stopped = asyncio.Event()
        self.smtpd_stats: dict[str, int] = {}       # counters the smtpd process sends

    # ------------------------------------------------------------------ public
    async def run(self) -> None:
        """Deliver until stop(). The caller ran spool.recover() before, once."""
        doorbell = await wakeup.listen(self.spool.wakeup_socket, self._on_poke, self._on_stats)
        self._running = True
        try:
            while not self._stopping:
                self._kick.clear()
                self._pass()
                if not self._stopping:
                    await self._idle(self._idle_delay())
        finally:
            doorbell.close()
            self._stopped.set()

    def wake(self) -> None:
        """New mail in incoming/ (called by the in-process SMTP listener after a commit)."""
        self._want["incoming"] = True
        self._kick.set()

    def flush(self) -> None:
        """Retry everything deferred now; ends account pauses early (still one probe each)."""
        self._want["flush"] = True
        self._kick.set()

    def rescan(self) -> None:
        """Re-read incoming/ and deferred/ (a message was held, released or deleted)."""
        self._want["rescan"] = True
        self._kick.set()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Take no new work; give in-flight deliveries grace_s, then cancel them."""
        self._stopping = True
        self._kick.set()
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

    def idle(self) -> bool:
        """Running, nothing in flight, no wake-up waiting to be handled (tests, status)."""
        return self._running and not self._inflight and not self._kick.is_set()

    def snapshot(self) -> dict:
        """Per-account state and counters, plus totals (for status.py and the board)."""
        accounts = self.accounts.snapshot()
        totals = {key: sum(a[key] for a in accounts.values())
                  for key in ("sent", "deferred", "bounced")}
        totals.update(in_flight=len(self._inflight), incoming=len(self._incoming),
                      deferred_queue=len(self._deferred), **self.deliverer.stats,
                      bounces_last_hour=self.deliverer.bounce_limit.used(self.clock()))
        return {"accounts": accounts, "totals": totals, "smtpd": dict(self.smtpd_stats)}

    # ------------------------------------------------------------------ wake-ups
    def _on_stats(self, counters: dict) -> None:
        """The smtpd process's counters, shown in the status file the daemon writes."""
        self.smtpd_stats = counters

    def _on_poke(self, what: bytes) -> None:
        {wakeup.WAKE: self.wake, wakeup.FLUSH: self.flush, wakeup.RESCAN: self.rescan}[what]()

    def _new_mail(self, queue_id: str) -> None:
        self._incoming[queue_id] = None
        self._kick.set()

    def _deferred_until(self, queue_id: str, when: float) -> None:
        self._deferred[queue_id] = when

    async def _idle(self, delay: float) -> None:
        if self._kick.is_set():
            return
        kick = asyncio.ensure_future(self._kick.wait())
        nap = asyncio.ensure_future(self.sleep(delay))
        try:
            await asyncio.wait({kick, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            kick.cancel()
            nap.cancel()

    def _idle_delay(self) -> float:
        """Until the next rescan or the next future retry; due-but-blocked work waits for a kick."""
        now = self.clock()
        wake_at = self._last_scan + RESCAN_INTERVAL_S
        future = [t for q, t in self._deferred.items() if t > now and q not in self._inflight]
        return max(0.0, min([wake_at, *future]) - now)

    # ------------------------------------------------------------------ scheduling
    def _pass(self) -> None:
        now = self.clock()
        want, self._want = self._want, {"incoming": False, "rescan": False, "flush": False}
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
        self._start_due(now)

    def _pickup(self) -> None:
        """maildrop/ -> incoming/ before incoming/ is read; a backlog continues next pass."""
        try:
            more = self.pickup.run().more
        except OSError as exc:      # maildrop/ unreadable: local submissions wait, SMTP mail not
            log.error("maildrop/ scan failed, retrying in %d s: %s", RESCAN_INTERVAL_S, exc)
            return
        if more:
            self._want["incoming"] = True
            self._kick.set()

    def _scan_incoming(self) -> None:
        self._incoming = {q: None for q in self.spool.list("incoming") if q not in self._inflight}

    def _scan_deferred(self) -> None:
        known, self._deferred = self._deferred, {}
        for queue_id in self.spool.list("deferred"):
            if queue_id not in self._inflight:
                when = known.get(queue_id)
                self._deferred[queue_id] = (self.spool.load_state(queue_id).next_attempt
                                            if when is None else when)
        live = self._incoming.keys() | self._deferred.keys() | self._inflight.keys()
        self._account_of = {q: a for q, a in self._account_of.items() if q in live}

    def _candidates(self, now: float) -> list[tuple[str, str]]:
        due = sorted((t, q) for q, t in self._deferred.items() if t <= now)
        return [(q, "incoming") for q in self._incoming] + [(q, "deferred") for _, q in due]

    def _start_due(self, now: float) -> None:
        budget = MAX_ACTIVE_MESSAGES - len(self._inflight)
        for queue_id, src in self._candidates(now):
            if budget <= 0 or self._stopping:
                return
            if queue_id in self._inflight:
                continue
            account = self._account(queue_id, src)
            if account is not None and account.busy():
                continue
            self._start(queue_id, src, account)
            budget -= 1

    def _account(self, queue_id: str, src: str) -> Account | None:
        """The message's account from its envelope (cheap read, cached); None if unreadable."""
        name = self._account_of.get(queue_id)
        if name is None:
            try:
                sender = self.spool.read(src, queue_id, verify=False).sender
            except OSError:      # corrupt or gone: the delivery step quarantines or skips it
                return None
            name = self._account_of[queue_id] = self.accounts.for_route(route_for(self.cfg, sender)).name
        return self.accounts.get(name)

    def _start(self, queue_id: str, src: str, account: Account | None) -> None:
        self._incoming.pop(queue_id, None)
        self._deferred.pop(queue_id, None)
        if account is not None:
            account.picked += 1
        self._inflight[queue_id] = asyncio.create_task(self._run_one(queue_id, src, account))

    async def _run_one(self, queue_id: str, src: str, account: Account | None) -> None:
        try:
            await self.deliverer.process(queue_id, src)
        except (MtaLiteError, OSError) as exc:
            log.error("%s: spool error, message left for a later retry: %s", queue_id, exc)
            self._park(queue_id)
        except Exception:   # a bug in one message's handling must not stop the queue
            log.exception("%s: unexpected error, message left for a later retry", queue_id)
            self._park(queue_id)
        finally:
            if account is not None:
                account.picked -= 1
            self._inflight.pop(queue_id, None)
            self._kick.set()

    def _park(self, queue_id: str) -> None:
        """After an error: back to deferred/ for a retry at min_backoff (or active/ until restart)."""
        try:
            if self.spool.move(queue_id, "active", "deferred"):
                self._deferred[queue_id] = self.clock() + self.cfg.queue.min_backoff_s
        except OSError as exc:
            log.error("%s: stays in active/ until the next start: %s", queue_id, exc)
