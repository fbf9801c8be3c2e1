"""qmgr — the queue manager: schedules queued mail onto smarthosts, retries, bounces.

    manager    QueueManager: what is tried when (incoming, deferred, rings, stop)
    dispatch   which of an account's due messages start now: order, pace, budget slots
    delivery   one attempt for one message and what happens to it afterwards
    outbound   what an attempt sends: a small message read at once, a big one from its
               queue file in chunks, its size checked against what was verified
    notices    the DSNs a delivery queues: whom, the hourly cap, the template (G6)
    resolve    how a message leaves: the sender after [rewrite], its route and account (pure)
    rewrite    the From: of the bytes sent, when [rewrite] gives another identity (pure)
    accounts   per smarthost login: concurrency, budget, the pause after a refused login (S5),
               unreachable smarthosts, credentials changed by a reload
    budget     rate_delay, max_per_hour, max_per_day; state/budgets.json (pure but the file)
    fairness   notices first, then round-robin between senders (pure)
    backoff    retry delays, auth pauses, queue lifetime (pure)
    bounce     RFC 3464 DSNs and who receives them (pure, G6)
    ratelimit  the DSNs-per-hour cap (pure)
    clock      is the system clock set? its trusted floor; mail that waits for it
    pickup     local submissions from maildrop/ into incoming/, as Postfix's pickup

The doorbell other processes ring (W, F, R on spool/public/qmgr) is queue/doorbell.py;
`queue why` is commands/why.py.
"""

from mta_lite.qmgr.manager import QueueManager
from mta_lite.queue.doorbell import FLUSH, NEW_MAIL, RESCAN, ring

__all__ = ["QueueManager", "ring", "NEW_MAIL", "FLUSH", "RESCAN"]
