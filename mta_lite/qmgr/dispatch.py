"""dispatch — which of an account's due messages start now, in what order, and what waits.

The queue manager (manager.py) finds the due messages and the room left under
MAX_ACTIVE_MESSAGES; this module decides, account by account:

    order      notices first, then round-robin between senders (fairness.py)
    clock      mail for a relay that checks certificates while the clock is not set goes
               straight to the delivery step, which defers it without a connection,
               budget or pause (clock.py)
    pace       at most the account's concurrency at once, or one at a time rate_delay
               apart (accounts.py); the time the next one may start is handed back
    budget     over max_per_hour/max_per_day the due messages are deferred to the slots
               they would get in this order (budget.py), so they come due one by one

It also reads what scheduling needs of a message (Meta) from its envelope: how it leaves
(resolve.py), its sender for fairness, whether it is a notice.

Guarantees: never more started than the room given; a budget slot is reserved (a Ticket)
before its delivery starts, so one pass never overdraws a budget; a paused account's mail
is handed on without a budget slot (the delivery step defers it without an attempt); an
unreadable envelope gives None, never an exception (the delivery step quarantines or skips
the message).
Must never: start a delivery or move a queue file itself (the caller's start() does);
read a message's content (only its envelope); wait.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

from mta_lite.config.schema import Config
from mta_lite.envelope import lookup_key
from mta_lite.queue import Spool
from mta_lite.qmgr.accounts import Account
from mta_lite.qmgr.budget import Slot, Ticket
from mta_lite.qmgr.fairness import fair_order
from mta_lite.qmgr.resolve import Outgoing, resolve

# start(queue_id, src, account, out, slot=None, ticket=None): hand one message to the
# delivery step (account None: no concurrency slot taken; slot: defer it to that slot).
Start = Callable[..., None]


class Meta(NamedTuple):
    """What scheduling needs to know of a queued message, read once from its envelope."""

    out: Outgoing       # how it leaves: sender, route, account; handed to the delivery
    sender: str         # the fairness key
    urgent: bool        # a notice: null sender, or only to the admin


class Candidate(NamedTuple):
    queue_id: str
    src: str
    meta: Meta | None


class Started(NamedTuple):
    """What start_account() did for one account."""

    count: int          # messages handed to start(), deferred to a slot or not
    pace_at: float      # when rate_delay lets the rest start (inf: not waiting on it)
    ran_out: bool       # the budget just ran out: its file should be saved now


def read_meta(cfg: Config, spool: Spool, queue_id: str, src: str) -> Meta | None:
    """How it leaves and its sender, from the envelope (a cheap read); None if unreadable."""
    try:
        entry = spool.read(src, queue_id, verify=False)
    except OSError:      # corrupt or gone: the delivery step quarantines or skips it
        return None
    urgent = (entry.is_bounce or not entry.sender
              or {lookup_key(r) for r in entry.recipients} == {cfg.admin_address})
    return Meta(resolve(cfg, entry), lookup_key(entry.sender), urgent)


def by_account(due: Iterable[tuple[str, str]],
               meta: Callable[[str, str], Meta | None]) -> dict[str, list[Candidate]]:
    """Due (queue ID, directory) pairs grouped by account ("" for unreadable ones), in order."""
    groups: dict[str, list[Candidate]] = {}
    for queue_id, src in due:
        found = meta(queue_id, src)
        groups.setdefault(found.out.account if found else "", []).append(Candidate(queue_id, src, found))
    return groups


def start_account(account: Account, waiting: list[Candidate], now: float, room: int, *,
                  start: Start, waits_for_clock: Callable[[Outgoing], bool]) -> Started:
    """Start what the account may take now, fairly ordered (see the module docstring)."""
    account.served.keep_only({item.meta.sender for item in waiting})
    ordered = fair_order(waiting, lambda c: c.meta.sender, lambda c: c.meta.urgent,
                         account.served.last)
    budget, started = account.budget, 0
    for i, item in enumerate(ordered):
        if started >= room:
            break
        if waits_for_clock(item.meta.out):      # deferred without a connection,
            start(item.queue_id, item.src, None, item.meta.out)     # budget or pause
            started += 1
            continue
        # A paused account defers its mail without an attempt; no budget involved.
        counted = bool(budget.limits.windows()) and not account.paused(now)
        if counted and budget.over(now) is not None:
            deferred = _defer_to_slots(account, ordered[i:i + room - started], now, start)
            return Started(started + deferred, math.inf, budget.changed)
        if not account.can_start(now):
            break
        # Reserved here, not in the delivery task, so that one pass never overdraws.
        ticket = Ticket(budget, budget.take(now)) if counted else None
        start(item.queue_id, item.src, account, item.meta.out, ticket=ticket)
        account.served.served(item.meta.sender)
        started += 1
    pace = budget.pace_until()
    return Started(started, pace if started < len(ordered) and pace > now else math.inf, False)


def _defer_to_slots(account: Account, items: list[Candidate], now: float, start: Start) -> int:
    """Over budget: each message deferred to the slot it would get in this order, so
    they come due one by one, not all at once and again and again."""
    why = account.budget.over(now)[0]
    for item, until in zip(items, account.budget.slots(now, len(items))):
        start(item.queue_id, item.src, None, item.meta.out, slot=Slot(until, why))
    return len(items)
