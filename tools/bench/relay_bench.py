"""relay_bench: smtp-source -> relay -> smtp-sink on 127.0.0.1, mta-lite against a stock Postfix.

For each message size (1 KiB, then 20 KiB) it runs mta-lite and then Postfix, --rounds times
(alternating, so drift on this machine hits both alike; report.py takes the medians), each
run with a fresh smtp-sink and a fresh relay, and measures end-to-end throughput (from smtp-source's start until the sink has counted every
message), the peak PSS of all the relay's processes (sampled every 0.1 s), the bytes written
to the disk per message and the CPU seconds per 1,000 messages. Prints a table and the
mta-lite/Postfix ratios, and writes bench-results.json in the current directory.

Both relays run the way they run in production: mta-lite as `mta-lite serve` started as root,
dropping to mta-smtpd and mta-lite (the box's unit); Postfix as root's `postfix start`.
Disk: each relay's queue (mta-lite's spool_dir, Postfix's queue_directory) is on a fresh ext4
file system of its own on a loop device (meter.LoopFs, made like the box's data partition),
and the figure is that device's sectors written from the idle relay to the empty queue,
after a syncfs: file data, inodes, directories and the journal alike. Logs go elsewhere for
both (mta-lite's stderr, Postfix's maillog_file), as on the box (the journal, in RAM).
CPU: each relay runs in a cgroup of its own (meter.CpuCgroup), whose cpu.stat counts every
process that ran in it, Postfix's short-lived cleanup/smtp/trivial-rewrite included.
Guarantees: every process it starts is stopped by PID, a run that stalls fails after --timeout
seconds with the relay's log tail, and the exit status is non-zero if any run failed.
Never: talks to anything but 127.0.0.1, compares against stored figures, or tunes Postfix.
Needs root (private Postfix instance, smtp-sink -u nobody): `make bench`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.support import peers  # noqa: E402  (the same real-peer helpers the integration tests use)
from tests.support.relay import listening_ports  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402
from meter import CpuCgroup, LoopFs, MeterError  # noqa: E402  (same directory)
import report  # noqa: E402  (same directory)

SIZES = (1024, 20480)
RELAYS = ("mta-lite", "postfix")
SAMPLE_INTERVAL = 0.1
# The services' users of the box (firmware/systemd/mta-lite.service runs serve as root).
DEPLOYED_USERS = "[master]\nsmtpd_user = \"mta-smtpd\"\nqmgr_user = \"mta-lite\"\n"
# After the sink has every message, the relay still removes the last queue files.
DRAIN_TIMEOUT_S = 30.0


class BenchError(RuntimeError):
    """A run that did not complete; the message says why and carries the relay's log tail."""


class PssSampler:
    """Samples the PSS of ``pids_fn()`` every 0.1 s in a thread and keeps the peak."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, peers.pss_kib(self.pids_fn()))
        self.samples += 1

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sample()


def queue_files(top: Path) -> int:
    """Files (queue entries) anywhere below the given queue directories."""
    return sum(len(files) for directory in top for _, _, files in os.walk(directory))


class MtaLiteRelay:
    """``mta-lite -c CONFIG serve`` as root, dropping to its users, relaying everything to
    the sink; its spool on a LoopFs, its processes in a CpuCgroup; stderr goes to a log."""

    def __init__(self, workdir: Path, sink_port: int, start_timeout: float = 30.0):
        self.workdir = workdir
        self.sink_port = sink_port
        self.start_timeout = start_timeout
        self.port = 0               # the kernel picks it; read from the relay's log once it listens
        self.config = workdir / "mta-lite.toml"
        self.log = workdir / "mta-lite.log"
        self.proc: subprocess.Popen | None = None
        self.fs = LoopFs(workdir, "spoolfs")
        self.cgroup: CpuCgroup | None = None

    @property
    def spool(self) -> Path:
        return self.fs.mount / "spool"

    def queue_dirs(self) -> list[Path]:
        return [self.spool / name for name in ("incoming", "active", "deferred")]

    def config_text(self) -> str:
        q = json.dumps  # a JSON string is a valid TOML basic string
        return (f"hostname = \"bench.lan.test\"\nspool_dir = {q(str(self.spool))}\n"
                "mynetworks = [\"127.0.0.0/8\"]\nadmin_address = \"admin@lan.test\"\n"
                "default_relay = \"sink\"\n\n[[listen]]\n"
                f"address = \"{peers.LOOPBACK}:0\"\n\n[relays.sink]\n"
                f"host = \"{peers.LOOPBACK}\"\nport = {self.sink_port}\ntls = \"none\"\n"
                "concurrency = 10\n\n" + DEPLOYED_USERS)

    def __enter__(self) -> MtaLiteRelay:
        exe = Path(sys.executable).parent / "mta-lite"
        if not exe.exists():
            exe = REPO / ".venv" / "bin" / "mta-lite"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fs.__enter__()
        self.cgroup = CpuCgroup(f"mta-lite-{id(self)}")
        self.config.write_text(self.config_text())
        self.config.chmod(0o600)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(exe), "-c", str(self.config), "serve"],
                                         cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, preexec_fn=self.cgroup.enter)
        try:
            wait_until(lambda: self.proc.poll() is not None or self._greets(), self.start_timeout,
                       "mta-lite's 'listening on' line and its greeting")
        except TimeoutError as exc:
            self.__exit__()
            raise BenchError(f"{exc}\n{self.log_tail()}") from None
        if self.proc.poll() is not None:
            self.__exit__()
            raise BenchError(f"mta-lite exited with {self.proc.returncode}\n{self.log_tail()}")
        return self

    def _greets(self) -> bool:
        """True once the relay logged its port (tests/support/relay.py) and answers 220 on it."""
        ports = listening_ports(self.log.read_text(errors="replace"), 1)
        self.port = ports[0] if ports else 0
        return bool(self.port) and (peers.smtp_probe(self.port) or b"").startswith(b"220")

    def __exit__(self, *exc_info) -> None:
        """SIGTERM the serve process, wait for its whole tree (SIGKILL after 15 s), reap it,
        unmount its spool."""
        if self.proc is not None:
            tree = self.pids()
            if self.alive():
                self.proc.terminate()
            peers.stop_pids(tree, timeout=15.0, sig=0)
            self.proc.wait(5.0)
        self.fs.__exit__()
        if self.cgroup is not None:
            self.cgroup.remove()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        return peers.process_tree(self.proc.pid) if self.alive() else []

    def log_tail(self) -> str:
        return f"--- tail of {self.log} ---\n{peers.tail_file(self.log, 40)}"


class PostfixRelay(peers.PostfixNullClient):
    """The Postfix null client with its queue_directory on a LoopFs of its own and its
    processes in a CpuCgroup (`postfix start` runs in it; the master and all it forks stay)."""

    def __init__(self, workdir: Path, sink_port: int):
        super().__init__(workdir, sink_port)
        self.fs: LoopFs | None = None
        self.cgroup: CpuCgroup | None = None

    @property
    def queue(self) -> Path:
        return self.root / "queuefs" / "queue"

    def queue_dirs(self) -> list[Path]:
        return [self.queue / name for name in ("incoming", "active", "deferred", "maildrop")]

    def main_cf(self) -> dict[str, str]:
        return super().main_cf() | {"queue_directory": str(self.queue)}

    def _write_config(self) -> None:
        super()._write_config()
        self.fs = LoopFs(self.root, "queuefs").__enter__()
        self.queue.mkdir(mode=0o755)
        self.cgroup = CpuCgroup(f"postfix-{self.port}")

    def _postfix(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        enter = self.cgroup.enter if args[:1] == ("start",) and self.cgroup else None
        return subprocess.run([peers.POSTFIX, "-c", str(self.conf_dir), *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
                              preexec_fn=enter)

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if peers.pid_alive(pid) else None

    def _archive(self) -> None:
        if self.fs is not None:
            self.fs.__exit__()
            self.fs = None
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        super()._archive()

    def alive(self) -> bool:
        return self.master_pid() is not None

    def log_tail(self) -> str:
        return f"--- tail of {self.maillog} ---\n{peers.tail_file(self.maillog, 40)}"


def make_relay(name: str, workdir: Path, sink_port: int):
    if name == "mta-lite":
        return MtaLiteRelay(workdir, sink_port)
    return PostfixRelay(workdir, sink_port)


def wait_delivered(sink: peers.SmtpSink, source: subprocess.Popen, relay, n: int,
                   timeout: float) -> None:
    """Return as soon as the sink has counted ``n`` messages; raise BenchError if smtp-source
    failed, the relay died, or ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sink.wait_count(n, timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            return
        except TimeoutError:
            pass
        problem = None
        if source.poll() not in (None, 0):
            problem = f"smtp-source exited with {source.returncode}"
        elif not relay.alive():
            problem = "the relay died"
        elif time.monotonic() >= deadline:
            problem = f"timed out after {timeout:g} s"
        if problem:
            raise BenchError(f"{problem}: the sink counted {sink.count()} of {n} messages")


def source_argv(port: int, size: int, messages: int, sessions: int) -> list[str]:
    return [peers.SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", "a@lan.test", "-t", "b@ext.test", f"{peers.LOOPBACK}:{port}"]


def drained(relay) -> None:
    """Wait until the relay's queue is empty (the sink has all, the files are being removed)."""
    try:
        wait_until(lambda: queue_files(relay.queue_dirs()) == 0, DRAIN_TIMEOUT_S,
                   "the relay's queue to empty")
    except TimeoutError as exc:
        raise BenchError(f"{exc}\n{relay.log_tail()}") from None


def run_one(name: str, size: int, args, workdir: Path) -> dict:
    """One relay, one size: fresh sink, fresh relay, smtp-source, end-to-end time, peak PSS,
    disk bytes and CPU seconds from the idle relay to its empty queue."""
    with peers.SmtpSink(workdir, dump=False) as sink, make_relay(name, workdir, sink.port) as relay:
        idle_kib = peers.pss_kib(relay.pids())
        disk_before, cpu_before = relay.fs.written_bytes(), relay.cgroup.cpu_seconds()
        out = open(workdir / f"smtp-source-{name}-{size}.log", "wb")
        with out, PssSampler(relay.pids) as sampler:
            start = time.monotonic()
            source = subprocess.Popen(source_argv(relay.port, size, args.messages, args.sessions),
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            try:
                wait_delivered(sink, source, relay, args.messages, args.timeout)
                seconds = time.monotonic() - start
                source.wait(30.0)
                drained(relay)
            except (BenchError, subprocess.TimeoutExpired) as exc:
                peers.stop_pids([source.pid])
                source.wait(5.0)
                raise BenchError(f"{name} {size} B: {exc}\n{relay.log_tail()}") from None
        disk = relay.fs.written_bytes() - disk_before
        cpu = relay.cgroup.cpu_seconds() - cpu_before
    return {"relay": name, "size": size, "messages": args.messages, "sessions": args.sessions,
            "seconds": round(seconds, 3), "msgs_per_s": round(args.messages / seconds, 1),
            "peak_pss_kib": sampler.peak_kib, "idle_pss_kib": idle_kib,
            "disk_bytes_per_msg": round(disk / args.messages),
            "cpu_s_per_1000": round(cpu * 1000 / args.messages, 3),
            "pss_samples": sampler.samples, "smtp_source_rc": source.returncode}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=10, help="parallel smtp-source sessions")
    parser.add_argument("--only", choices=RELAYS, help="run one relay only")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="message sizes in bytes")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per size, each running the relays in turn; medians are reported")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--json", default="bench-results.json", help="results file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("relay_bench: needs root (private Postfix, smtp-sink -u nobody)", file=sys.stderr)
        return 2
    relays = [args.only] if args.only else list(RELAYS)
    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    runs, failures = [], []
    for size in args.sizes:
        for round_no in range(1, args.rounds + 1):
            for name in relays:
                print(f"relay_bench: {name}, {args.messages} x {size} B, {args.sessions} sessions,"
                      f" round {round_no} of {args.rounds} ...", flush=True)
                try:
                    runs.append(run_one(name, size, args, tmp / f"{name}-{size}-{round_no}") | {"round": round_no})
                except (BenchError, MeterError, RuntimeError, TimeoutError) as exc:
                    failures.append(str(exc))
                    print(f"relay_bench: FAILED {exc}", file=sys.stderr, flush=True)
    rows = report.medians(runs)
    report.print_table(rows, runs, failures)
    result = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "kernel": platform.release()},
              "messages": args.messages, "sessions": args.sessions, "rounds": args.rounds,
              "medians": rows, "ratios_mta_lite_over_postfix": report.ratios(rows),
              "throughput_ratio_per_round": report.round_ratios(runs), "runs": runs,
              "failures": failures}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"relay_bench: wrote {args.json}")
    if failures:
        print(f"relay_bench: logs kept in {tmp}", file=sys.stderr)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
