"""bigmsg_bench: memory while ten 10 MB messages stream in at once, mta-lite against Postfix.

smtp-source sends ten messages of 10,000,000 bytes over ten parallel sessions to a fresh relay
(relay_bench.py's MtaLiteRelay / PostfixRelay: started as root the way the box runs them),
which relays them to smtp-sink. It measures the PSS of all the relay's processes and its
anonymous part (Pss_Anon: the processes' own heaps; the file part also moves with whatever
else on the machine maps the same libraries) three times: idle after the greeting; warm,
after ten 1 KB messages went the same way over ten sessions (every code path has run once,
and Postfix has its per-session processes); and the peak, sampled every 0.1 s until the
sink has all ten big ones, for mta-lite also per process. Warm to peak is what streaming
the messages costs; idle to warm is what any mail costs first. Prints a table, writes
bigmsg-results.json.
Guarantees: every process it starts is stopped by PID; a run that stalls fails after
--timeout seconds with the relay's log tail; the exit status is non-zero if a run failed.
Never: talks to anything but 127.0.0.1, or compares against stored figures.
Needs root, like relay_bench.py (`make bench` runs both).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import relay_bench as rb  # noqa: E402  (same directory: the relays, the sink, the waits)
from relay_bench import peers  # noqa: E402

MESSAGES = 10
SIZE = 10_000_000
WARM_UP_SIZE = 1024
WARM_SETTLE_S = 1.0
ROLES = {"mta-smtpd": "smtpd", "mta-lite": "qmgr"}     # the service users of the box


def rollup(pid: int) -> dict[str, int]:
    """Pss and Pss_Anon (KiB) of one process; zeros once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {"pss": 0, "anon": 0}
    field = lambda name: int(re.search(rf"^{name}:\s+(\d+) kB", text, re.M).group(1))  # noqa: E731
    return {"pss": field("Pss"), "anon": field("Pss_Anon")}


def role(pid: int, master: int) -> str:
    if pid == master:
        return "master"
    try:
        uid = int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
    except (FileNotFoundError, ProcessLookupError, AttributeError):
        return "gone"
    import pwd
    try:
        return ROLES.get(pwd.getpwuid(uid).pw_name, str(pid))
    except KeyError:
        return str(pid)


class PeakSampler(threading.Thread):
    """Every 0.1 s: the per-process rollups of relay.pids(); keeps the sample of highest PSS."""

    def __init__(self, relay, master: int):
        super().__init__(name="pss-peak", daemon=True)
        self.relay, self.master = relay, master
        self.peak: dict = {"pss": 0, "anon": 0, "by_process": {}}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(rb.SAMPLE_INTERVAL):
            sample = {pid: rollup(pid) for pid in self.relay.pids()}
            total = sum(item["pss"] for item in sample.values())
            if total > self.peak["pss"]:
                self.peak = {"pss": total, "anon": sum(item["anon"] for item in sample.values()),
                             "by_process": {role(pid, self.master): item for pid, item in sample.items()}}


def send(name: str, relay, sink, workdir: Path, size: int, total: int, args) -> None:
    """MESSAGES messages of `size` bytes over MESSAGES sessions at once; returns once the
    sink has counted `total` (the messages of earlier calls included)."""
    with open(workdir / f"smtp-source-{size}-{name}.log", "ab") as out:
        source = subprocess.Popen(rb.source_argv(relay.port, size, MESSAGES, MESSAGES),
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            rb.wait_delivered(sink, source, relay, total, args.timeout)
            source.wait(30.0)
        except (rb.BenchError, subprocess.TimeoutExpired) as exc:
            peers.stop_pids([source.pid])
            raise rb.BenchError(f"{name}: {exc}\n{relay.log_tail()}") from None


def run_one(name: str, args, workdir: Path) -> dict:
    with peers.SmtpSink(workdir, dump=False) as sink, rb.make_relay(name, workdir, sink.port) as relay:
        idle = [rollup(pid) for pid in relay.pids()]
        # The same ten sessions with small messages first: every code path a big message
        # takes has run once, and Postfix has its smtpd, cleanup and smtp processes.
        send(name, relay, sink, workdir, WARM_UP_SIZE, MESSAGES, args)
        rb.drained(relay)
        time.sleep(WARM_SETTLE_S)
        warm = [rollup(pid) for pid in relay.pids()]
        sampler = PeakSampler(relay, relay.proc.pid if name == "mta-lite" else (relay.master_pid() or 0))
        sampler.start()
        try:
            send(name, relay, sink, workdir, SIZE, 2 * MESSAGES, args)
        finally:
            sampler.done.set()
            sampler.join()
    sums = {f"{when}_{key}_kib": sum(item[key] for item in rows)
            for when, rows in (("idle", idle), ("warm", warm)) for key in ("pss", "anon")}
    return {"relay": name, "messages": MESSAGES, "size": SIZE, **sums,
            "peak_pss_kib": sampler.peak["pss"], "peak_anon_kib": sampler.peak["anon"],
            "peak_by_process": sampler.peak["by_process"]}


def print_table(results: list[dict]) -> None:
    print(f"\n{'relay':10} {'MiB PSS:':>9} {'idle':>6} {'warm':>6} {'peak':>6} {'anon:':>6} {'idle':>6} {'warm':>6} {'peak':>6}")
    for r in results:
        pss = " ".join(f"{r[f'{when}_pss_kib'] / 1024:6.1f}" for when in ("idle", "warm", "peak"))
        anon = " ".join(f"{r[f'{when}_anon_kib'] / 1024:6.1f}" for when in ("idle", "warm", "peak"))
        print(f"{r['relay']:10} {'':9} {pss} {'':6} {anon}")
        if r["relay"] == "mta-lite":
            print("  at the peak: " + ", ".join(f"{who} {item['pss'] / 1024:.1f} MiB"
                                                 for who, item in sorted(r["peak_by_process"].items())))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=rb.RELAYS, help="run one relay only")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--json", default="bigmsg-results.json", help="results file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bigmsg_bench: needs root (as relay_bench.py)", file=sys.stderr)
        return 2
    results, failed = [], False
    for name in [args.only] if args.only else list(rb.RELAYS):
        print(f"bigmsg_bench: {name}, {MESSAGES} x {SIZE} B at once ...", flush=True)
        try:
            results.append(run_one(name, args, Path(tempfile.mkdtemp(prefix=f"bigmsg-{name}-"))))
        except rb.BenchError as exc:
            print(f"bigmsg_bench: FAILED: {exc}", file=sys.stderr)
            failed = True
        time.sleep(1.0)
    print_table(results)
    Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
