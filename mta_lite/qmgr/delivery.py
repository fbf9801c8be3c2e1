"""delivery — one message, one attempt: move it into active/, deliver its pending recipients, settle it.

    incoming/ or deferred/ --move--> active/ --read, validate--> smarthost pool
        all recipients done   -> DSN queued (if any bounced; notices.py), then the message removed
        some still pending    -> DSN queued (for those bounced now), state saved, -> deferred/

Guarantees: only recipients not yet done are offered to the smarthost, at most the relay's
recipient_limit per transaction (a larger message goes as several transactions, each one
counted against the account's budget and spaced by its rate_delay), and each result is
recorded in the message's state file before the message leaves active/ (G3). Mail over an
account's budget is deferred to its slot, with the reason and the time in last_error, and
never bounced for it. A DSN is in the queue before the message it reports on is removed or
marks its recipients done, so a crash can repeat a DSN but never lose one. A transient failure of a message older than the
queue lifetime bounces its remaining recipients (4.4.7); the age counts from the effective
arrival (clock.py), so mail accepted while the clock was not set does not bounce as old.
While the clock is not set, mail to a relay that checks certificates is deferred with
`clock not set` (wait "clock"): no connection, no attempt counted, no account pause. An invalid queue file goes to
corrupt/ (G4). A message deleted or held by the administrator while in flight is respected:
deleted -> results dropped; held -> results saved, so a release resends nothing.
The queue file verified at activation is opened once for the attempt and sent from
(outbound.py): a message of 256 KiB or more is read and sent in 64 KiB chunks, so the memory
a delivery takes stays flat whatever the message's size; a file whose size changed since it
was verified is deferred, never sent.
Must never: bounce on a transient or unknown result; remove a message before its DSN is
queued; read a big message whole (the rare exceptions are in outbound.py and transaction.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass

from mta_lite import maillog
from mta_lite.config.schema import Config
from mta_lite.errors import CorruptQueueFileError
from mta_lite.history import History
from mta_lite.queue import WAIT_AUTH, WAIT_BUDGET, WAIT_CLOCK, WAIT_UNREACHABLE, MessageState, QueueEntry, Spool
from mta_lite.reply import R451_INTERNAL, Reply
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT, DeliveryResult, RecipientResult
from mta_lite.qmgr import bounce
from mta_lite.qmgr.accounts import PAUSED, PROBE, Account, Accounts
from mta_lite.qmgr.backoff import expired, retry_delay_s
from mta_lite.qmgr.budget import Slot, Ticket, when
from mta_lite.qmgr.clock import ClockWatch, needs_clock
from mta_lite.qmgr.notices import Notices
from mta_lite.qmgr.outbound import content_for, verified_content
from mta_lite.qmgr.resolve import Outgoing, resolve
from mta_lite.smarthost.content import Content

log = logging.getLogger("mta_lite.qmgr")

# A recipient the client's result left out: a bug with no traceback, so its own words are
# the only trace of it in the log (a raised error is R451_INTERNAL, its traceback logged).
R451_NO_RESULT = Reply(451, "4.3.0", "Error: no result from the smarthost client")
EXPIRED_STATUS = "4.4.7"          # RFC 3463: delivery time expired
CLOCK_STATUS = "4.3.0"            # RFC 3463: other mail system status (our own clock)


@dataclass
class Attempt:
    result: DeliveryResult
    attempted: bool = True        # False: nothing was tried (account paused or over budget)
    not_before: float = 0.0       # earliest next attempt (the account's pause or budget slot)
    exact: bool = False           # not_before is the next attempt itself (a budget slot)
    wait: str = ""                # spool.WAIT_*: what holds the message back, if not a backoff


def slot_reply(account: str, slot: Slot, now: float) -> Reply:
    """`deferred: account isp over max_per_hour=100 (100 sent in the last hour), next slot at 14:05:00 UTC`."""
    return Reply(451, "4.7.0", f"deferred: account {account} {slot.why}, next slot at {when(slot.until, now)}")


def chunks(recipients: list[str], limit: int) -> list[list[str]]:
    """Recipients in transactions of at most `limit` (Postfix: *_destination_recipient_limit)."""
    limit = max(1, limit)
    return [recipients[i:i + limit] for i in range(0, len(recipients), limit)]


class Deliverer:
    """Runs single delivery attempts; the QueueManager decides which and when."""

    def __init__(self, cfg: Config, spool: Spool, pool, accounts: Accounts, notices: Notices, *,
                 clock=time.time, rng: random.Random, on_deferred, sleep=asyncio.sleep,
                 watch: ClockWatch | None = None, history: History | None = None) -> None:
        self.cfg, self.spool, self.pool, self.accounts = cfg, spool, pool, accounts
        self.watch = watch                      # None: the clock is taken as set (tests)
        self.notices = notices
        self.clock, self.rng, self.sleep = clock, rng, sleep
        self.on_deferred = on_deferred          # (queue_id, next_attempt) -> None
        self.history = history or History(os.devnull, clock=clock)    # the status page's record
        self.stats = {"corrupt": 0}

    # ------------------------------------------------------------------ one message
    async def process(self, queue_id: str, src: str, out: Outgoing | None = None,
                      slot: Slot | None = None, ticket: Ticket | None = None) -> None:
        """One attempt; `out` is how it leaves, as the manager resolved it (None: resolved
        here); with a budget `slot` the message is only deferred to it, nothing tried;
        `ticket` is the send the manager reserved for its first transaction."""
        entry = self._activate(queue_id, src)
        if entry is None:
            return
        state = self.spool.load_state(queue_id)
        if src == "incoming":
            maillog.activated(queue_id, entry.sender, entry.size, len(entry.recipients))
        pending = list(dict.fromkeys(state.pending(entry.recipients)))
        if not pending:                          # a crash after the last result, before removal
            self._finish(entry, state, [], complete=True)
            return
        # [rewrite]: the message leaves as `out.sender`, through that sender's route (S4).
        out = out or resolve(self.cfg, entry)
        if slot is None and self.waits_for_clock(out):
            self._hold_for_clock(entry, state, pending)
            return
        account = self.accounts.for_route(out.route)
        if slot is not None:
            attempt = self._to_slot(account, pending, slot)
        else:
            if out.rewrite is not None:
                maillog.sender_rewritten(queue_id, entry.sender, out.sender, out.rewrite.rule)
            attempt = await self._attempt(account, out, entry, pending, ticket)
        if attempt is not None:
            self._settle(entry, state, pending, attempt)

    def waits_for_clock(self, out: Outgoing) -> bool:
        """The clock is not set and this route's certificate would be checked against it."""
        return self.watch is not None and not self.watch.is_set() and needs_clock(out.route.relay.tls)

    def _hold_for_clock(self, entry: QueueEntry, state: MessageState, pending) -> None:
        """Deferred without a connection: `status=deferred (clock not set: ...)`. The queue
        manager releases it the moment the clock is set; until then it is looked at again
        after max_backoff. Attempts, backoff and account stay as they were."""
        now = self.clock()
        reason = f"{self.watch.reason()}; TLS to the smarthost waits for it"
        for recipient in pending:
            maillog.delivery(entry.queue_id, recipient, "none", now - entry.arrival, CLOCK_STATUS,
                             DEFER, reason)
            self.history.record(entry.queue_id, entry.sender, recipient, DEFER, reason, "none")
        state.last_error, state.wait = reason, WAIT_CLOCK
        state.next_attempt = now + self.cfg.queue.max_backoff_s
        self._finish(entry, state, [], complete=False)

    def _activate(self, queue_id: str, src: str) -> QueueEntry | None:
        """incoming/ or deferred/ -> active/, then read and validated; None if gone or corrupt."""
        if not self.spool.move(queue_id, src, "active", durable=False):
            log.info("%s: gone from %s/ before pickup", queue_id, src)    # words of old: scripts may grep them
            return None
        try:
            # A small message comes with its verified content: sent without reading it again.
            return self.spool.read("active", queue_id, keep_content=True)
        except CorruptQueueFileError as exc:
            self._quarantine(queue_id, str(exc))
            return None

    def _quarantine(self, queue_id: str, reason: str) -> None:
        self.stats["corrupt"] += 1
        try:
            self.spool.quarantine(queue_id, "active", reason)   # logs the event itself
        except FileNotFoundError:
            return

    # ------------------------------------------------------------------ the attempt
    async def _attempt(self, account: Account, out: Outgoing, entry: QueueEntry, pending,
                       ticket: Ticket | None) -> Attempt | None:
        async with account.slots:
            verdict = await account.admit(self.clock)
            if verdict == PAUSED:
                return self._paused(account, pending)
            try:
                return await self._deliver(account, out, entry, pending, ticket)
            finally:
                if verdict == PROBE:
                    account.end_probe()

    def _paused(self, account: Account, pending) -> Attempt:
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(account.paused_until))
        last = account.last_reply
        if account.auth_failures or last is None:
            reply = Reply(451, "4.7.0", f"delivery temporarily suspended: the smarthost refused the login of "
                                        f"account {account.name}; next try after {until} ({account.last_error})")
        else:       # Postfix's words for a dead destination, with the smarthost's last failure
            reply = Reply(last.code, last.enhanced, f"delivery temporarily suspended: {last.text}")
        account.count_deferred(len(pending))
        result = DeliveryResult.transient(pending, reply)
        wait = WAIT_AUTH if account.auth_failures or last is None else WAIT_UNREACHABLE
        return Attempt(result, attempted=False, not_before=account.paused_until, wait=wait)

    def _to_slot(self, account: Account, pending, slot: Slot) -> Attempt:
        """Over budget: deferred to the slot, nothing tried, no backoff on top."""
        reply = slot_reply(account.name, slot, self.clock())
        return Attempt(DeliveryResult.transient(pending, reply), attempted=False,
                       not_before=slot.until, exact=True, wait=WAIT_BUDGET)

    async def _deliver(self, account: Account, out: Outgoing, entry: QueueEntry, pending,
                       ticket: Ticket | None) -> Attempt | None:
        """Send the message verified in _activate (outbound.py): a small one as it was read
        then, if it is still in active/; a big one from its queue file, in chunks."""
        content = verified_content(entry, out)
        if content is not None:
            if not os.path.lexists(entry.path):
                return self._removed(entry)
            return await self._transactions(account, out, entry, pending, ticket, content)
        try:
            handle = open(entry.path, "rb")
        except FileNotFoundError:
            return self._removed(entry)
        with handle:
            try:
                content = content_for(handle, entry, out)
            except OSError as exc:              # changed or unreadable since it was verified
                log.warning("%s: %s", entry.queue_id, exc)
                reply = Reply(451, "4.3.0", f"Error: queue file unreadable: {exc}")
                return Attempt(DeliveryResult.transient(list(pending), reply))
            return await self._transactions(account, out, entry, pending, ticket, content)

    @staticmethod
    def _removed(entry: QueueEntry) -> None:
        """Deleted or held while it waited for a connection: not sent."""
        log.info("%s: removed from active/ before delivery", entry.queue_id)
        return None

    async def _transactions(self, account: Account, out: Outgoing, entry: QueueEntry, pending,
                            ticket: Ticket | None, content: Content) -> Attempt:
        """The pending recipients in transactions of at most the relay's recipient_limit."""
        parts = chunks(list(pending), out.route.relay.recipient_limit)
        results: list[DeliveryResult] = []
        for i, part in enumerate(parts):
            if i and account.budget.limits.rate_delay_s:
                await self.sleep(account.budget.limits.rate_delay_s)
            stamp = self._reserve(account, ticket if i == 0 else None)
            if stamp is None:                   # another delivery used the last of the budget
                why, until = account.budget.over(self.clock())
                rest = self._to_slot(account, [r for p in parts[i:] for r in p], Slot(until, why))
                return _combined(results, rest, attempted=bool(results))
            result = await self._transaction(account, out, entry, part, content, stamp)
            results.append(result)
            if len(result.with_status(DEFER)) == len(part) and i + 1 < len(parts):
                # Nothing got through (no connection, refused login...): the other parts
                # would only repeat it, and a refused login must be tried once per pause.
                rest = DeliveryResult.transient([r for p in parts[i + 1:] for r in p],
                                                result.recipients[0].reply, result.relay)
                results.append(rest)
                break
        not_before = account.paused_until if any(r.auth_failed for r in results) else 0.0
        return _combined(results, Attempt(DeliveryResult("none", ()), not_before=not_before))

    def _reserve(self, account: Account, ticket: Ticket | None) -> float | None:
        if ticket is not None and ticket.budget is account.budget and not ticket.used:
            ticket.used = True
            return ticket.stamp
        return account.budget.take(self.clock())

    async def _transaction(self, account: Account, out: Outgoing, entry: QueueEntry, part,
                           content: Content, stamp: float) -> DeliveryResult:
        try:
            result = await self.pool.deliver(out.route, out.sender, list(part), content,
                                             smtputf8=entry.smtputf8)
        except Exception:   # a client bug must cost a retry, never the message or the manager
            log.exception("%s: smarthost client failed", entry.queue_id)
            result = DeliveryResult.transient(part, R451_INTERNAL)
        now = self.clock()
        if not result.with_status(SENT):
            account.budget.give_back(stamp)     # the smarthost took nothing: not counted
        account.budget.finished(now)
        account.record(result, now, self.cfg.queue)
        return result

    # ------------------------------------------------------------------ results
    def _settle(self, entry: QueueEntry, state: MessageState, pending, attempt: Attempt) -> None:
        now = self.clock()
        failed, last_error = self._record(entry, state, pending, attempt.result, now)
        still = state.pending(entry.recipients)
        arrival = self.watch.arrival(entry.arrival) if self.watch else entry.arrival
        if still and expired(arrival, now, self.cfg.queue):
            failed += self._expire(entry, state, still, last_error or state.last_error)
            still = []
        if still:
            state.attempts += 1 if attempt.attempted else 0
            delay = retry_delay_s(max(state.attempts, 1), self.cfg.queue, self.rng)
            state.next_attempt = attempt.not_before if attempt.exact else max(now + delay, attempt.not_before)
            state.last_error = last_error
            state.wait = attempt.wait or (WAIT_AUTH if attempt.result.auth_failed else "")
        self._finish(entry, state, failed, complete=not still)

    def _record(self, entry: QueueEntry, state: MessageState, pending, result: DeliveryResult,
                now: float) -> tuple[list[bounce.FailedRecipient], str]:
        """Log and record each pending recipient's result; unanswered ones count as deferred."""
        answers: dict[str, RecipientResult] = {}
        for rcpt in result.recipients:
            if rcpt.recipient in pending and rcpt.recipient not in answers:
                answers[rcpt.recipient] = rcpt
        failed: list[bounce.FailedRecipient] = []
        last_error = ""
        for recipient in pending:
            rcpt = answers.get(recipient) or RecipientResult(recipient, DEFER, R451_NO_RESULT)
            status = rcpt.status if rcpt.status in (SENT, BOUNCE) else DEFER
            maillog.delivery(entry.queue_id, recipient, result.relay, now - entry.arrival,
                             bounce.status_of(rcpt.reply), status, str(rcpt.reply))
            self.history.record(entry.queue_id, entry.sender, recipient, status, str(rcpt.reply), result.relay)
            if status == DEFER:
                last_error = last_error or str(rcpt.reply)
                continue
            state.done[recipient] = status
            if status == BOUNCE:
                failed.append(bounce.failed_from_reply(recipient, rcpt.reply, result.relay))
        return failed, last_error

    def _expire(self, entry: QueueEntry, state: MessageState, still, last_error: str):
        """Postfix's maximal_queue_lifetime: the remaining recipients are returned (4.4.7)."""
        maillog.expired(entry.queue_id, entry.sender)
        reason = f"message expired in queue (last error: {last_error or 'none recorded'})"
        failed = []
        for recipient in still:
            state.done[recipient] = BOUNCE
            self.history.record(entry.queue_id, entry.sender, recipient, BOUNCE, reason, "none")
            failed.append(bounce.FailedRecipient(recipient, EXPIRED_STATUS, reason,
                                                 last_error or "message expired in queue"))
        return failed

    # ------------------------------------------------------------------ leaving active/
    def _finish(self, entry: QueueEntry, state: MessageState, failed, complete: bool) -> None:
        queue_id = state.queue_id
        where = self.spool.locate(queue_id, likely="active")
        if where is None:
            log.info("%s: deleted during delivery; its results are dropped", queue_id)
            return
        self.notices.send(entry, failed, where)
        if where == "active" and self._leave_active(state, complete):
            return
        where = self.spool.locate(queue_id)
        if where is None:
            return
        # Moved by the administrator (hold/) while in flight: keep what was done, so a
        # release retries only the recipients still pending.
        self.spool.save_state(state)
        log.info("%s: moved to %s/ during delivery; recipient results kept", queue_id, where)

    def _leave_active(self, state: MessageState, complete: bool) -> bool:
        queue_id = state.queue_id
        if complete:
            if self.spool.remove(queue_id, "active", durable=False):
                maillog.removed(queue_id)
                return True
            return False
        self.spool.save_state(state)             # state before the move: the move publishes it
        if self.spool.move(queue_id, "active", "deferred", durable=False):
            self.on_deferred(queue_id, state.next_attempt)
            return True
        return False


def _combined(results: list[DeliveryResult], last: Attempt, attempted: bool = True) -> Attempt:
    """The transactions of one message as one Attempt (relay= of the first that connected)."""
    parts = [*results, last.result]
    relay = next((r.relay for r in parts if r.relay != "none"), "none")
    merged = DeliveryResult(relay, tuple(rcpt for r in parts for rcpt in r.recipients),
                            any(r.auth_failed for r in parts))
    # Exact only if every other recipient is done: a transient failure adds its backoff, and
    # then the message waits for that backoff, not for its budget slot alone.
    exact = last.exact and not any(r.with_status(DEFER) for r in results)
    return Attempt(merged, attempted=attempted, not_before=last.not_before, exact=exact,
                   wait=last.wait if exact else "")
