"""mailq — the administrator's view of the queue: list, show, flush, delete, hold, release
(`mta-lite queue ACTION`, and `mailq`).

These work directly on the spool directories, with or without a running daemon, and ring
the queue manager afterwards so it notices at once. A message being delivered right now
(active/) can be deleted or held; its delivery attempt may still complete (as in Postfix),
and the per-recipient results are kept so a released message never goes twice.
Guarantees: every change is one durable rename or unlink; unknown IDs are named in the error.
Must never: print message content for `list`, or a secret anywhere.
"""

from __future__ import annotations

import json
import sys
import time

from mta_lite.config.schema import Config
from mta_lite.errors import CorruptQueueFileError, QueueIdError
from mta_lite.queue import Spool, doorbell
from mta_lite.queue.spool import MAILDROP, STATES
from mta_lite.status import read_status

EX_USAGE = 64

# incoming/ is "waiting for the queue manager": to the admin that is active mail.
# maildrop/ holds local submissions not yet picked up (Postfix's mailq lists them too).
_SHOWN_STATE = {"incoming": "active", "active": "active", "deferred": "deferred", "hold": "hold",
                MAILDROP: MAILDROP}


def ring_qmgr(spool: Spool, what: bytes) -> None:
    """Ring a running queue manager's doorbell; without one (or without access: a local user
    may not ring) its periodic rescan finds the change."""
    try:
        doorbell.ring(spool.doorbell_path, what)
    except OSError:
        pass


def entries(spool: Spool) -> list[dict]:
    out = []
    for state in (MAILDROP, *STATES):
        for queue_id in spool.list(state):
            try:
                entry = spool.read(state, queue_id, verify=False)
            except (CorruptQueueFileError, FileNotFoundError):
                continue
            if state == MAILDROP and not _acceptable_submission(entry):
                continue
            st = spool.load_state(queue_id)
            out.append({
                "id": queue_id, "sender": entry.sender,
                "recipients": st.pending(entry.recipients), "size": entry.size,
                "state": _SHOWN_STATE[state], "arrival": entry.arrival,
                "attempts": st.attempts, "next_attempt": st.next_attempt or None,
                "last_error": st.last_error,
            })
    return sorted(out, key=lambda e: e["id"])


def _acceptable_submission(entry) -> bool:
    """A maildrop/ file is any local user's input until pickup has checked it: list it only
    if pickup would take it, so no control character reaches the administrator's terminal."""
    from mta_lite.qmgr.pickup import RejectedError, checked_envelope
    try:
        checked_envelope(entry)
    except RejectedError:
        return False
    return True


def format_list(items: list[dict]) -> str:
    """Postfix mailq layout: ID (with * active, ! hold), size, arrival, sender; reason; recipients."""
    if not items:
        return "Mail queue is empty"
    lines = ["-Queue ID-        --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    for item in items:
        mark = {"active": "*", "hold": "!"}.get(item["state"], " ")
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(item["arrival"]))
        lines.append(f"{item['id']}{mark} {item['size']:>8} {arrival}  {item['sender'] or 'MAILER-DAEMON'}")
        if item["last_error"]:
            lines.append(f"    ({item['last_error']})")
        lines.extend(f"                                         {r}" for r in item["recipients"])
        lines.append("")
    total = sum(i["size"] for i in items)
    lines.append(f"-- {total // 1024} Kbytes in {len(items)} Request{'s' if len(items) != 1 else ''}.")
    return "\n".join(lines)


def list_json(spool: Spool) -> str:
    return json.dumps(entries(spool), indent=2)


def show(spool: Spool, queue_id: str) -> bytes:
    """Envelope, state and content of one message (like postcat -q)."""
    state = spool.require(queue_id)
    entry = spool.read(state, queue_id)
    st = spool.load_state(queue_id)
    head = [
        f"*** ENVELOPE RECORDS {queue_id} ***",
        f"state: {_SHOWN_STATE[state]}",
        f"arrival: {time.strftime('%a %b %d %H:%M:%S %Y', time.localtime(entry.arrival))}",
        f"client: [{entry.client_address}] helo={entry.client_helo}"
        + (f" sasl_username={entry.sasl_username}" if entry.sasl_username else ""),
        f"sender: {entry.sender}",
        *[f"recipient: {r}" + (f" ({st.done[r]})" if r in st.done else "") for r in entry.recipients],
        f"attempts: {st.attempts}",
        *( [f"last_error: {st.last_error}"] if st.last_error else []),
        f"*** MESSAGE CONTENTS {queue_id} ***",
    ]
    return ("\n".join(head) + "\n").encode() + entry.read_content()


def flush(spool: Spool) -> int:
    """Make every deferred message due now; the daemon retries them at once."""
    count = 0
    for queue_id in spool.list("deferred"):
        st = spool.load_state(queue_id)
        st.next_attempt = 0.0
        spool.save_state(st)
        count += 1
    ring_qmgr(spool, doorbell.FLUSH)
    return count


def _each(spool: Spool, ids: list[str]) -> list[tuple[str, str]]:
    """Resolve IDs first so that a typo changes nothing."""
    return [(queue_id, spool.require(queue_id)) for queue_id in ids]


def delete(spool: Spool, ids: list[str]) -> int:
    if ids == ["ALL"]:
        targets = [(q, s) for s in STATES for q in spool.list(s)]
    else:
        targets = _each(spool, ids)
    count = sum(1 for queue_id, state in targets if spool.remove(queue_id, state))
    ring_qmgr(spool, doorbell.RESCAN)
    return count


def hold(spool: Spool, ids: list[str]) -> int:
    count = sum(1 for queue_id, state in _each(spool, ids)
                if state != "hold" and spool.move(queue_id, state, "hold"))
    ring_qmgr(spool, doorbell.RESCAN)
    return count


def release(spool: Spool, ids: list[str]) -> int:
    count = 0
    for queue_id, state in _each(spool, ids):
        if state != "hold":
            raise QueueIdError(f"{queue_id}: not on hold (it is {_SHOWN_STATE[state]})")
    for queue_id, _ in _each(spool, ids):
        st = spool.load_state(queue_id)
        st.next_attempt = 0.0
        spool.save_state(st)
        count += spool.move(queue_id, "hold", "deferred")
    ring_qmgr(spool, doorbell.FLUSH)
    return count


def queue_main(cfg: Config, action: str, ids: list[str], as_json: bool) -> int:
    """`mta-lite queue ACTION [ID...]` and `mailq`: exit 0, or 64 without a needed ID."""
    spool = Spool(cfg.spool_dir)
    if action in ("show", "why", "delete", "hold", "release") and not ids:
        print(f"mta-lite: queue {action} needs at least one queue ID", file=sys.stderr)
        return EX_USAGE
    if action == "list":
        print(list_json(spool) if as_json else format_list(entries(spool)))
    elif action == "show":
        for queue_id in ids:
            sys.stdout.buffer.write(show(spool, queue_id))
    elif action == "why":
        from mta_lite.commands.why import explain
        status = read_status(cfg.spool_dir)
        for queue_id in ids:
            print(explain(cfg, spool, queue_id, time.time(), status))
    else:
        change = {"flush": flush, "delete": delete, "hold": hold, "release": release}[action]
        count = change(spool, *([ids] if action != "flush" else []))
        print(f"mta-lite: {action}: {count} message{'s' if count != 1 else ''}")
    return 0
