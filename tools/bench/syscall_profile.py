"""syscall_profile: system calls, fsyncs and directory entries per message, mta-lite and Postfix.

Starts each relay exactly as relay_bench does (mta-lite as root dropping to its users, each
queue on its own ext4 loop device), attaches `strace -f` to every process of the relay once
it is idle (so Postfix's processes forked later are traced too), sends --messages messages
of --size bytes with smtp-source (--sessions at once) through it to smtp-sink, waits for the
empty queue, detaches, and prints per message: all system calls, the flushes (fsync,
fdatasync, syncfs, sync, sync_file_range), the journal commits of the queue's file system
(/proc/fs/jbd2), files created (open with O_CREAT), link(), rename(), unlink(), and the
bytes written to the queue's device (under strace, so batching differs from an untraced
run: relay_bench's figure is the one to quote).
Counts do not depend on the machine's load; the strace overhead changes timing only.
Never: talks to anything but 127.0.0.1. Needs root: `python3 tools/bench/syscall_profile.py`.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from relay_bench import RELAYS, BenchError, drained, make_relay, source_argv, wait_delivered  # (same directory)

from tests.support import peers  # noqa: E402  (relay_bench put the repository on sys.path)
from tests.support.waiting import wait_until  # noqa: E402

FLUSHES = ("fsync", "fdatasync", "syncfs", "sync", "sync_file_range")
_CALL = re.compile(r"^\d+\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()")


def classify(text: str) -> Counter:
    """Counts from `strace -f -o` output: one per call (an interrupted call counts once)."""
    counts: Counter = Counter()
    for line in text.splitlines():
        match = _CALL.match(line)
        if not match or match.group(1):
            continue
        name = match.group(2)
        counts[name] += 1
        if name in FLUSHES:
            counts["(flushes)"] += 1
        if name in ("open", "openat", "creat") and ("O_CREAT" in line or name == "creat") and "= -1" not in line:
            counts["(files created)"] += 1
        if name.startswith(("link", "rename", "unlink")) and "= -1" not in line:
            counts[f"({name.rstrip('at2').rstrip('at')})"] += 1
    return counts


def attach(pids: list[int], out: Path) -> subprocess.Popen:
    argv = ["strace", "-f", "-qq", "-o", str(out)]
    for pid in pids:
        argv += ["-p", str(pid)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: tracer.poll() is not None or all(_traced(pid) for pid in pids), 10.0,
               "strace to attach")
    if tracer.poll() is not None:
        raise BenchError(f"strace exited: {tracer.stderr.read().decode(errors='replace')[-300:]}")
    return tracer


def _traced(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True     # gone: nothing to wait for
    return re.search(r"^TracerPid:\s+[1-9]", status, re.M) is not None


def profile_one(name: str, args, workdir: Path) -> dict:
    out = workdir / f"strace-{name}.out"
    with peers.SmtpSink(workdir, dump=False) as sink, make_relay(name, workdir, sink.port) as relay:
        disk_before, commits_before = relay.fs.written_bytes(), relay.fs.journal_commits()
        tracer = attach(relay.pids(), out)
        try:
            source = subprocess.Popen(source_argv(relay.port, args.size, args.messages, args.sessions),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            wait_delivered(sink, source, relay, args.messages, 600.0)
            source.wait(30.0)
            drained(relay)
            time.sleep(0.5)     # the last removals and log writes: a fixed tail, not a wait for a condition
        finally:
            tracer.terminate()          # SIGTERM detaches; the relay runs on
            tracer.wait(30.0)
        disk = relay.fs.written_bytes() - disk_before
        commits_after = relay.fs.journal_commits()
    counts = classify(out.read_text(errors="replace"))
    per = {key: round(value / args.messages, 2) for key, value in counts.items()}
    per["(all syscalls)"] = round(sum(v for k, v in counts.items() if not k.startswith("(")) / args.messages, 1)
    per["(disk KiB)"] = round(disk / args.messages / 1024, 1)
    if commits_before is not None and commits_after is not None:
        per["(journal commits)"] = round((commits_after - commits_before) / args.messages, 2)
    return per


ROWS = ("(all syscalls)", "(flushes)", "fsync", "fdatasync", "syncfs", "sync_file_range", "(journal commits)",
        "(files created)", "(link)", "(rename)", "(unlink)", "(disk KiB)")


def _cell(result: dict, row: str) -> str:
    if row == "(journal commits)" and row not in result:
        return "n/a"
    return f"{result.get(row, 0):g}"


def print_table(results: dict[str, dict], args) -> None:
    names = list(results)
    print(f"\nper message ({args.messages} x {args.size} B, {args.sessions} sessions, under strace)")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in ROWS:
        print(f"| {row.strip('()')} | " + " | ".join(_cell(results[n], row) for n in names) + " |")
    print("\ntop system calls per message:")
    for name in names:
        top = sorted(((v, k) for k, v in results[name].items() if not k.startswith("(")), reverse=True)[:12]
        print(f"  {name}: " + ", ".join(f"{k} {v:g}" for v, k in top))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--only", choices=RELAYS)
    parser.add_argument("--keep", action="store_true", help="keep the strace logs and the relays' logs")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="syscall-profile-"))
    results = {name: profile_one(name, args, tmp / name) for name in ([args.only] if args.only else RELAYS)}
    print_table(results, args)
    if args.keep:
        print(f"syscall_profile: logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
