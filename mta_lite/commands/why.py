"""why — `mta-lite queue why ID`: one line on what holds a queued message back, and until when.

It reads what the queue manager leaves on disk: the message's state file (attempts, next
attempt, the last reply with its enhanced code, and what it waits for: MessageState.wait),
state/budgets.json (the account's send history, judged against the limits of the config as
it is now) and the status file (the account's state: a refused login's pause, an
unreachable smarthost). In order of weight: on hold, being delivered, paused account, over
budget, unreachable smarthost, backoff after a failure. A message waiting for the system
clock (wait "clock") is judged by the clock as it reads now against the queue manager's
record of it (state/clock.json; qmgr/clock.py).
Works with the daemon stopped, and says so, since then nothing is tried at all.
Must never: change anything; print message content or a secret.
"""

from __future__ import annotations

from mta_lite.config.schema import Config
from mta_lite.queue import WAIT_BUDGET, WAIT_CLOCK, MessageState, Spool
from mta_lite.status import StatusSnapshot
from mta_lite.qmgr.accounts import STATE_AUTH_FAILED, STATE_UNREACHABLE
from mta_lite.qmgr.budget import Budget, BudgetFile, Limits, budget_path, when
from mta_lite.qmgr.clock import BUILD_TIME, NOT_SET, clock_path, not_set_reason, observe, read_record
from mta_lite.qmgr.resolve import resolve


def explain(cfg: Config, spool: Spool, queue_id: str, now: float, status: StatusSnapshot,
            build_time: float = BUILD_TIME) -> str:
    """The line for one message; QueueIdError if it is not in the queue."""
    where = spool.require(queue_id)
    state = spool.load_state(queue_id)
    daemon = "" if status.running else "; the daemon is not running, nothing is tried"
    if where == "hold":
        return f"{queue_id}: on hold by the administrator until `queue release {queue_id}`{_last(state)}"
    if where == "active":
        return f"{queue_id}: being delivered now"
    if where == "incoming":
        return f"{queue_id}: queued, waiting for its first attempt{daemon}"
    route = resolve(cfg, spool.read(where, queue_id, verify=False)).route   # as the qmgr routes it
    if state.wait == WAIT_CLOCK:
        return f"{queue_id}: deferred: {_clock(spool, route.account, now, build_time)}{daemon}"
    reasons, next_at = _reasons(route, status.relays.get(route.account, {}), state,
                              BudgetFile(budget_path(spool.root)), now)
    # Deferred to its budget slot, the last reply is our own and says what the reason says.
    last = "" if state.wait == WAIT_BUDGET else _last(state)
    next_try = when(next_at, now) if next_at > now else "now"
    return f"{queue_id}: deferred: {'; '.join(reasons)}{last}; next try {next_try}{daemon}"


def _reasons(route, account: dict, state: MessageState, book: BudgetFile, now: float) -> tuple[list[str], float]:
    """The reasons in order of weight, and the earliest next try they allow; `account` is
    the account's entry in the status file (Account.snapshot())."""
    name, reasons, next_at = route.account, [], state.next_attempt
    paused_until = account.get("paused_until") or 0.0
    token = _token_trouble(account)
    if account.get("state") == STATE_AUTH_FAILED and paused_until > now:
        why = (f"{token} (fix the [oauth] settings or run `mta-lite oauth login`, then `queue flush`)"
               if token else "the smarthost refused its login (fix the credentials and reload to resume at once)")
        reasons.append(f"account {name} paused until {when(paused_until, now)}: {why}")
        next_at = max(next_at, paused_until)
    elif account.get("site_down") and paused_until > now:
        why = token or "its smarthost did not answer"
        reasons.append(f"account {name} paused until {when(paused_until, now)}: {why} "
                       "(one probe then; `queue flush` probes now)")
        next_at = max(next_at, paused_until)
    book.load()
    over = Budget.from_dict(book.saved.get(name, {}), Limits.of(route.relay)).over(now)
    if over is not None:
        reasons.append(f"account {name} {over[0]}, next slot at {when(over[1], now)}")
        next_at = max(next_at, over[1])
    if account.get("state") == STATE_UNREACHABLE and account.get("unreachable_since"):
        reasons.append(f"the smarthost of account {name} has been unreachable since "
                       f"{when(account['unreachable_since'], now)}")
    if not reasons and state.wait == WAIT_BUDGET:
        reasons.append(f"account {name} was over its budget; its slot has come")
    if not reasons:
        attempts = f"{state.attempts} failed attempt{'s' if state.attempts != 1 else ''}"
        reasons.append(f"retry backoff after {attempts}" if state.attempts else "waiting for its next attempt")
    return reasons, next_at


def _clock(spool: Spool, account: str, now: float, build_time: float) -> str:
    """Waiting for the clock: still not set, or set since (then it goes at once)."""
    record = observe(read_record(clock_path(spool.root)), now, build_time)
    if record.state != NOT_SET:
        return "it waited for the system clock to be set; the clock is set now; next try now"
    detail = not_set_reason(record, now, build_time).removeprefix("clock not set: ")
    return (f"the system clock is not set ({detail}), so the certificate of the smarthost of account "
            f"{account} cannot be checked; no connection is made until the clock is set (NTP); "
            "next try as soon as it is set")


def _token_trouble(account: dict) -> str:
    """What the account's OAuth2 entry in the status file (the token manager's health of its
    provider) says went wrong: the provider refused or could not be asked (`token refresh
    failed: ...`), or the smarthost refused the token (the account's last reply); "" for an
    account without OAuth2 or without trouble."""
    oauth = account.get("oauth")
    if not isinstance(oauth, dict):
        return ""
    if oauth.get("failed"):
        return f"token refresh failed: {oauth['failed']} ([oauth.{oauth.get('provider', '?')}])"
    if account.get("state") == STATE_AUTH_FAILED:
        return str(account.get("last_error") or "the smarthost refused the token")
    return ""


def _last(state: MessageState) -> str:
    return f"; last reply: {state.last_error}" if state.last_error else ""
