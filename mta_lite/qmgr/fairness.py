"""fairness — in which order one account's waiting messages get its delivery slots (pure).

    notices first    bounces and notices (null sender, or mail to the admin) go ahead of
                     any backlog: they report on mail that already failed
    then round-robin one message per sender in turn, the sender served longest ago
                     first, each sender's own messages in arrival order

So a scanner that queues 500 pages delays a printer's one message by at most a slot or two
per other waiting sender, not by 500 deliveries (Postfix gets a similar effect from its
per-destination round-robin; a relay box has one destination, so senders take its place).
Guarantees: a permutation of the input; arrival order kept within each sender; never
starves a sender whose messages keep being passed over (the served-longest-ago rule).
Must never: read files or the clock.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, TypeVar

T = TypeVar("T")


def fair_order(items: Iterable[T], sender: Callable[[T], Hashable], urgent: Callable[[T], bool],
               last_served: dict) -> list[T]:
    """Notices first, then one item per sender in turn; `last_served` maps a sender to a
    number that grows each time it is served (see ServedLog); unknown senders go first."""
    notices: list[T] = []
    queues: dict[Hashable, list[T]] = {}
    for item in items:
        if urgent(item):
            notices.append(item)
        else:
            queues.setdefault(sender(item), []).append(item)
    # sorted() is stable: senders never served keep their order of first arrival.
    turn = sorted(queues, key=lambda key: last_served.get(key, -1))
    out, total = list(notices), len(notices) + sum(len(q) for q in queues.values())
    depth = 0
    while len(out) < total:
        out.extend(queues[key][depth] for key in turn if depth < len(queues[key]))
        depth += 1
    return out


class ServedLog:
    """Which sender of one account was served when (a counter, not the clock)."""

    def __init__(self) -> None:
        self.last: dict[Hashable, int] = {}
        self._serial = 0

    def served(self, sender: Hashable) -> None:
        self._serial += 1
        self.last[sender] = self._serial

    def keep_only(self, senders: set) -> None:
        """Forget senders with nothing waiting: bounded memory, and a sender who comes back
        after a pause counts as new (first in line), which is fair to a quiet sender."""
        self.last = {k: v for k, v in self.last.items() if k in senders}
