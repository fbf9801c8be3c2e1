"""qmgr — the queue manager: schedules queued mail onto smarthosts, retries, bounces.

    manager    QueueManager: what is tried when (incoming, deferred, wake-ups, stop)
    delivery   one attempt for one message and what happens to it afterwards
    accounts   per smarthost login: concurrency, budget, the pause after a refused login (S5),
               unreachable smarthosts, credentials changed by a reload
    budget     rate_delay, max_per_hour, max_per_day; state/budgets.json (pure but the file)
    fairness   notices first, then round-robin between senders (pure)
    why        `queue why ID`: one line on what holds a message back
    backoff    retry delays, auth pauses, queue lifetime (pure)
    bounce     RFC 3464 DSNs and who receives them (pure, G6)
    ratelimit  the DSNs-per-hour cap (pure)
    wakeup     the doorbell socket spool/public/qmgr and poke() for other processes
"""

from mta_lite.qmgr.manager import QueueManager
from mta_lite.queue.doorbell import FLUSH, RESCAN, WAKE, poke

__all__ = ["QueueManager", "poke", "WAKE", "FLUSH", "RESCAN"]
