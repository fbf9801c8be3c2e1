"""pss_watch: what each of mta-lite's processes holds, idle and at the peak of a bench run.

    pss_watch.py idle [--reloads N]   start a relay the way relay_bench.py does (root, dropping
                                      to its users, spool on a loop ext4), wait 3 s after its
                                      greeting, print Pss, Pss_Anon and USS per process; with
                                      --reloads, SIGHUP the master N times and measure again
                                      after each (the master must not grow with reloads)
    pss_watch.py watch --json FILE    sample every `mta-lite ... serve` process tree on the
                                      machine every 0.1 s until SIGINT/SIGTERM; for each tree
                                      seen, the sample with the most anonymous PSS (summed over
                                      the tree), per process; run it beside relay_bench.py

relay_bench.py reports the tree's total PSS; the file part of it (libpython, libcrypto) is
shared with every other process on the machine and moves with what else runs, so the
anonymous part is the one to compare (docs/benchmark.md, "Memory"). Processes are named by
/proc/PID/comm: mta-lite (the master), mta-smtpd, mta-qmgr.
Guarantees: only reads /proc, except `idle`, which starts and stops its own relay and sink.
Never: signals a process it did not start.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import peers  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

SAMPLE_INTERVAL_S = 0.1
IDLE_AFTER_S = 3.0
FIELDS = ("Rss", "Pss", "Pss_Anon", "Private_Clean", "Private_Dirty")


def rollup(pid: int) -> dict[str, int] | None:
    """Pss, Pss_Anon, USS and what it shares with others (Rss - USS), KiB; None if gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0])
    uss = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return {"pss": values.get("Pss", 0), "anon": values.get("Pss_Anon", 0), "uss": uss,
            "shared": values.get("Rss", 0) - uss}


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def snapshot(master: int) -> list[dict]:
    """One row per live process of the tree: pid, name, pss, anon, uss (KiB)."""
    rows = []
    for pid in peers.process_tree(master):
        values = rollup(pid)
        if values is not None:
            rows.append({"pid": pid, "name": comm(pid), **values})
    return rows


def masters(match: str = "") -> list[int]:
    """PIDs of `mta-lite ... serve` masters (their children carry other names) whose
    command line contains `match` (relay_bench's configs are under relay-bench-*)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and comm(int(entry)) == "mta-lite":
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if b"serve" in argv and match.encode() in b" ".join(argv):
                found.append(int(entry))
    return found


def total(rows: list[dict], key: str) -> int:
    return sum(row[key] for row in rows)


def show(title: str, rows: list[dict]) -> None:
    print(f"{title}: total PSS {total(rows, 'pss') / 1024:.1f} MiB, anonymous {total(rows, 'anon') / 1024:.1f} MiB")
    for row in sorted(rows, key=lambda row: row["pid"]):
        print(f"  {row['name']:<10} pid {row['pid']:>7}  PSS {row['pss'] / 1024:5.1f}  "
              f"anon {row['anon'] / 1024:5.1f}  USS {row['uss'] / 1024:5.1f}  shared {row['shared'] / 1024:5.1f} MiB")


def _children_settled(relay, old: set[int]) -> bool:
    rows = snapshot(relay.proc.pid)
    names = [row["name"] for row in rows if row["pid"] not in old]
    return names.count("mta-smtpd") == 1 and names.count("mta-qmgr") == 1


def idle(args) -> dict:
    from relay_bench import MtaLiteRelay      # same directory
    result = {"reloads": []}
    with tempfile.TemporaryDirectory(prefix="pss-watch-") as tmp, \
            peers.SmtpSink(Path(tmp), dump=False) as sink, MtaLiteRelay(Path(tmp) / "relay", sink.port) as relay:
        time.sleep(IDLE_AFTER_S)        # the measurement is of a relay idle this long
        result["idle"] = snapshot(relay.proc.pid)
        show("idle", result["idle"])
        for number in range(args.reloads):
            old = {row["pid"] for row in snapshot(relay.proc.pid)} - {relay.proc.pid}
            os.kill(relay.proc.pid, signal.SIGHUP)
            wait_until(lambda: _children_settled(relay, old), 30.0, "new smtpd and qmgr after SIGHUP")
            wait_until(lambda: relay._greets(), 30.0, "the new smtpd's greeting")
            time.sleep(IDLE_AFTER_S)
            rows = snapshot(relay.proc.pid)
            result["reloads"].append(rows)
            show(f"after reload {number + 1}", rows)
    return result


def watch(args) -> dict:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    peaks: dict[int, list[dict]] = {}
    while not stop:
        for master in masters(args.match):
            rows = snapshot(master)
            if total(rows, "anon") > total(peaks.get(master, []), "anon"):
                peaks[master] = rows
        time.sleep(SAMPLE_INTERVAL_S)
    for master, rows in peaks.items():
        show(f"tree {master}, peak anonymous", rows)
    return {"peaks": [rows for _, rows in sorted(peaks.items())]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    idle_parser = sub.add_parser("idle")
    idle_parser.add_argument("--reloads", type=int, default=0)
    watch_parser = sub.add_parser("watch")
    watch_parser.add_argument("--match", default="relay-bench-", help="part of the master's command line")
    for each in (idle_parser, watch_parser):
        each.add_argument("--json", help="write the figures (KiB) here too")
    args = parser.parse_args(argv)
    if args.mode == "idle" and os.geteuid() != 0:
        print("pss_watch: idle needs root (the relay drops to its users)", file=sys.stderr)
        return 2
    result = idle(args) if args.mode == "idle" else watch(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
