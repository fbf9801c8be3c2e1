"""budget — output rate control per smarthost account: rate_delay, max_per_hour, max_per_day.

    Budget      one account's send history and the gap since its last delivery (pure: the
                caller passes the time). over() says whether the hourly or daily budget is
                used up and until when; pace_until() when the next delivery may start;
                slots() when the next n messages can go, for "next slot at" texts.
    BudgetFile  the histories of every account in spool/state/budgets.json, so that a
                restart or a config reload does not hand the account a fresh budget
                (Postfix forgets its rate-delay state on reload; we do not).

A message counts once the smarthost accepted it (a transaction with at least one recipient
sent): take() reserves the slot before the transaction, give_back() returns it when nothing
was accepted, so concurrent deliveries can never overrun a budget.
Guarantees: never more than max_per_hour sends in any hour, nor max_per_day in any day, as
long as the history on disk is intact; memory and file size are bounded by the larger
limit (an unlimited account keeps only its last delivery time). History from the future
(the clock was stepped back, e.g. a board without RTC before NTP) is dropped, not obeyed.
Must never: block anything itself (callers decide to wait or defer), or hold message data.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from mta_lite import safeio

log = logging.getLogger("mta_lite.qmgr")

HOUR_S = 3600.0
DAY_S = 86400.0
# Send times newer than now + this are from a clock that was stepped back since; obeying
# them would throttle the account for as long as the step. Five minutes absorbs ordinary
# NTP corrections without forgetting real history.
FUTURE_SLACK_S = 300.0
# budgets.json is rewritten at most this often while sends happen: a crash loses at most
# this much history (a message or two over budget), and the SD card sees one write a second
# at worst, not one per message.
SAVE_INTERVAL_S = 1.0
FILE_VERSION = 1
FILE_MODE = 0o600


class Slot(NamedTuple):
    """Over budget: when a message's turn comes, and why it waits (over()'s text)."""

    until: float
    why: str


@dataclass(frozen=True)
class Limits:
    rate_delay_s: float = 0.0
    max_per_hour: int = 0
    max_per_day: int = 0

    @classmethod
    def of(cls, relay) -> "Limits":
        return cls(relay.rate_delay_s, relay.max_per_hour, relay.max_per_day)

    def windows(self) -> list[tuple[str, int, float]]:
        """(key name, limit, window) for each limit in force, the longest window first."""
        out = [("max_per_day", self.max_per_day, DAY_S), ("max_per_hour", self.max_per_hour, HOUR_S)]
        return [item for item in out if item[1] > 0]


class Budget:
    """One account's budget; see the module docstring."""

    def __init__(self, limits: Limits, sent=(), last_end: float = 0.0) -> None:
        self.limits = limits
        self._sent = sorted(float(t) for t in sent)
        self.last_end = float(last_end)
        self.changed = False

    # ---------------------------------------------------------------- questions
    def used(self, now: float, window_s: float) -> int:
        """Sends counted in the window that ends now."""
        self._prune(now)
        return len(self._sent) - bisect.bisect_right(self._sent, now - window_s)

    def over(self, now: float) -> tuple[str, float] | None:
        """(why, until) while max_per_hour or max_per_day is used up, else None."""
        worst: tuple[str, float] | None = None
        for name, limit, window in self.limits.windows():
            used = self.used(now, window)
            if used >= limit:
                until = self._sent[-limit] + window      # when the limit-th newest ages out
                if worst is None or until > worst[1]:
                    worst = (f"over {name}={limit} ({used} sent in the last "
                             f"{'day' if window == DAY_S else 'hour'})", until)
        return worst

    def pace_until(self) -> float:
        """Earliest start of the next delivery under rate_delay (0.0 without one)."""
        if not self.limits.rate_delay_s or not self.last_end:
            return 0.0
        return self.last_end + self.limits.rate_delay_s

    def slots(self, now: float, n: int) -> list[float]:
        """When the next n messages could go, if nothing else were sent meanwhile."""
        trial = Budget(self.limits, self._sent, self.last_end)
        out, at = [], now
        for _ in range(n):
            at = max(at, trial.pace_until())
            over = trial.over(at)
            while over is not None:
                at = max(at, over[1])
                over = trial.over(at)
            trial.take(at)
            trial.finished(at)
            out.append(at)
        return out

    # ---------------------------------------------------------------- changes
    def take(self, now: float) -> float | None:
        """Reserve one send at `now`; its stamp (for give_back), or None if over budget."""
        if self.over(now) is not None:
            return None
        bisect.insort(self._sent, now)
        self._trim()
        self.changed = True
        return now

    def give_back(self, stamp: float) -> None:
        """The smarthost took nothing: the reserved send does not count."""
        i = bisect.bisect_left(self._sent, stamp)
        if i < len(self._sent) and self._sent[i] == stamp:
            del self._sent[i]
            self.changed = True

    def finished(self, now: float) -> None:
        """A delivery through this account ended: rate_delay counts from here."""
        if now > self.last_end:
            self.last_end = now
            self.changed = True

    def set_limits(self, limits: Limits) -> None:
        """A reloaded config: new limits, same history."""
        self.limits = limits

    # ---------------------------------------------------------------- bookkeeping
    def _prune(self, now: float) -> None:
        newest = bisect.bisect_right(self._sent, now + FUTURE_SLACK_S)
        if newest < len(self._sent):
            del self._sent[newest:]
            self.changed = True
        if self.last_end > now + FUTURE_SLACK_S:
            self.last_end = now
        windows = self.limits.windows()
        oldest = bisect.bisect_right(self._sent, now - (windows[0][2] if windows else 0.0))
        if oldest:
            del self._sent[:oldest]
            self.changed = True
        self._trim()

    def _trim(self) -> None:
        """Only as many sends as the largest limit can ever look at."""
        keep = max([limit for _, limit, _ in self.limits.windows()] or [0])
        if len(self._sent) > keep:
            del self._sent[:len(self._sent) - keep]

    def to_dict(self) -> dict:
        return {"sent": [round(t, 3) for t in self._sent], "last_end": round(self.last_end, 3)}

    @classmethod
    def from_dict(cls, data: dict, limits: Limits) -> "Budget":
        sent = [float(t) for t in data.get("sent", []) if isinstance(t, (int, float)) and math.isfinite(t)]
        last_end = data.get("last_end", 0.0)
        last_end = float(last_end) if isinstance(last_end, (int, float)) and math.isfinite(last_end) else 0.0
        return cls(limits, sent, last_end)


@dataclass
class Ticket:
    """A send reserved by the queue manager when it starts a delivery; released (not
    counted) unless the delivery uses it for a transaction."""

    budget: Budget
    stamp: float
    used: bool = False

    def release(self) -> None:
        if not self.used:
            self.used = True
            self.budget.give_back(self.stamp)


class BudgetFile:
    """Every account's budget in one small JSON file; only the queue manager writes it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.saved: dict[str, dict] = {}        # as loaded: for accounts not yet created
        self.saved_at = -math.inf

    def load(self) -> dict[str, dict]:
        """The stored budgets by account name; {} when absent or unreadable (logged)."""
        try:
            with open(self.path, "rb") as handle:
                data = json.load(handle)
            accounts = data["accounts"] if data.get("version") == FILE_VERSION else {}
            self.saved = {str(k): v for k, v in accounts.items() if isinstance(v, dict)}
        except FileNotFoundError:
            self.saved = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Losing the history costs at most one window of extra sends, never mail.
            log.warning("%s unreadable, budgets start afresh: %s", self.path, exc)
            self.saved = {}
        return self.saved

    def budget(self, name: str, limits: Limits) -> Budget:
        return Budget.from_dict(self.saved.get(name, {}), limits)

    def due(self, budgets: dict[str, Budget], now: float) -> float | None:
        """When the next save should happen (now or later), or None if nothing changed."""
        if not any(b.changed for b in budgets.values()):
            return None
        return max(now, self.saved_at + SAVE_INTERVAL_S)

    def save(self, budgets: dict[str, Budget], now: float) -> None:
        # Accounts not in the running config (removed by a reload) keep their history.
        accounts = {**self.saved, **{n: b.to_dict() for n, b in budgets.items()}}
        data = {"version": FILE_VERSION, "accounts": dict(sorted(accounts.items()))}
        for budget in budgets.values():
            budget.changed = False
        self.saved_at = now
        safeio.atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode(), mode=FILE_MODE)

    def save_if_due(self, budgets: dict[str, Budget], now: float, force: bool = False) -> None:
        """Save if a second has passed since the last save and something changed (or force)."""
        due = self.due(budgets, now)
        if not force and (due is None or due > now):
            return
        try:
            self.save(budgets, now)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc.strerror or exc)


def when(t: float, now: float) -> str:
    """A time for a person: the clock time within the next day, else with the date (UTC)."""
    fmt = "%H:%M:%S UTC" if 0 <= t - now < DAY_S else "%Y-%m-%d %H:%M:%S UTC"
    return time.strftime(fmt, time.gmtime(t))


def budget_path(spool_root: str) -> str:
    return os.path.join(spool_root, "state", "budgets.json")
