"""postscreen_bench: hold 1,000 idle connections in postscreen, measure new connections per second.

For mta-lite (a listener with `postscreen = true`) and for Postfix 3.7's postscreen (a private
instance on the same machine), alternately, each fresh per round: open --idle connections from
distinct loopback addresses (127.X.Y.Z, so neither server sees a cached client or hits a
per-client limit) and keep them waiting in the pregreet test (greet wait 60 s); then, while
they are held, open --new connections with --concurrency at a time, each reading the first line
(the `220-` teaser) and hanging up (a client of plain non-blocking sockets: one on asyncio
streams was slower than either server), and report that connection rate; then the RSS and PSS of
the server's processes (all of them, and the screening process alone) with the idle
connections still held. Then one more run per server holding --large-idle (10,000)
connections, for the total PSS at that count. Prints a table and the mta-lite/Postfix
ratios; writes postscreen-bench.json. mta-lite runs as the box runs it (`mta-lite serve` as
root, dropping to mta-smtpd and mta-lite). The file descriptor limit (RLIMIT_NOFILE) is
raised in the bench, which both servers inherit; the box's unit sets LimitNOFILE=16384.
Guarantees: every process it starts is stopped by PID; a run that fails is reported with the
server's log tail and makes the exit status non-zero.
Never: talks to anything but 127.0.0.1, or compares against stored figures.
Needs root (a private Postfix instance): `make bench`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import selectors
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.support import peers  # noqa: E402  (the same real-peer helpers the integration tests use)
from relay_bench import DEPLOYED_USERS, BenchError, MtaLiteRelay  # noqa: E402  (same directory)

SERVERS = ("mta-lite", "postfix")
GREET_WAIT = "60s"          # long enough that the idle connections stay in the pregreet test
CONNECT_TIMEOUT_S = 30.0


def rss_pss_kib(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        rss += int(re.search(r"^Rss:\s+(\d+) kB", text, re.M).group(1))
        pss += int(re.search(r"^Pss:\s+(\d+) kB", text, re.M).group(1))
    return rss, pss


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class MtaLiteScreen(MtaLiteRelay):
    """`mta-lite serve` with one screened listener; clients outside mynetworks are screened.
    Started, waited for and stopped exactly as relay_bench's MtaLiteRelay."""

    screener = "mta-smtpd"

    def __init__(self, workdir: Path, max_connections: int) -> None:
        super().__init__(workdir, sink_port=9)
        self.max_connections = max_connections

    def config_text(self) -> str:
        q = json.dumps
        return (f"hostname = \"bench.lan.test\"\nspool_dir = {q(str(self.spool))}\n"
                "mynetworks = [\"10.0.0.0/8\"]\nadmin_address = \"admin@lan.test\"\n"
                f"[[listen]]\naddress = \"{peers.LOOPBACK}:{self.port}\"\npostscreen = true\n"
                f"[postscreen]\ngreet_wait = \"{GREET_WAIT}\"\ngreet_action = \"enforce\"\n"
                f"max_connections = {self.max_connections}\n"
                f"max_connections_per_client = {self.max_connections}\n"
                f"[relays.sink]\nhost = \"{peers.LOOPBACK}\"\nport = {self.sink_port}\ntls = \"none\"\n"
                + DEPLOYED_USERS)


class PostfixScreen(peers._PostfixInstance):
    """A private Postfix whose port 25 service is postscreen, handing passed clients to smtpd."""

    kind = "postscreen"
    screener = "postscreen"

    def __init__(self, workdir: Path, max_connections: int) -> None:
        super().__init__(workdir)
        self.max_connections = max_connections

    def main_cf(self) -> dict[str, str]:
        limit = str(self.max_connections)
        return super().main_cf() | {
            "mynetworks": "10.0.0.0/8",
            "postscreen_greet_wait": GREET_WAIT,
            "postscreen_greet_action": "enforce",
            "postscreen_pre_queue_limit": limit,
            "postscreen_post_queue_limit": limit,
            "postscreen_client_connection_count_limit": limit,
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
        }

    def _write_config(self) -> None:
        super()._write_config()
        services = (self.conf_dir / "master.cf").read_text().split("\n", 1)[1]
        screen = (f"{peers.LOOPBACK}:{self.port} inet n - n - 1 postscreen\n"
                  "smtpd     pass  -       -       n       -       -       smtpd\n"
                  "dnsblog   unix  -       -       n       -       0       dnsblog\n")
        (self.conf_dir / "master.cf").write_text(screen + services)

    def log_tail(self) -> str:
        return peers.tail_file(self.maillog, 30)


async def open_held(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(peers.LOOPBACK, port, local_addr=(source, 0))
    line = await reader.readline()
    if not line.startswith(b"220-"):
        writer.close()
        raise BenchError(f"expected the 220- teaser from {source}, got {line[:80]!r}")
    return reader, writer


def sources(net: int, count: int) -> list[str]:
    return [f"127.{net}.{i // 250}.{i % 250 + 1}" for i in range(count)]


async def churn(port: int, addresses: list[str], concurrency: int) -> float:
    """Connect from each address, read the teaser, hang up; returns connections per second.
    Plain non-blocking sockets in a thread of their own: a client on asyncio streams spent
    more CPU per connection than either server and capped both at its own rate."""
    return await asyncio.to_thread(churn_sockets, port, addresses, concurrency)


def churn_sockets(port: int, addresses: list[str], concurrency: int) -> float:
    selector = selectors.DefaultSelector()
    waiting = list(reversed(addresses))

    def connect() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((waiting.pop(), 0))
        sock.connect_ex((peers.LOOPBACK, port))        # EINPROGRESS; the teaser makes it readable
        selector.register(sock, selectors.EVENT_READ, bytearray())

    started = time.monotonic()
    deadline = started + CONNECT_TIMEOUT_S * 4
    try:
        for _ in range(min(concurrency, len(waiting))):
            connect()
        while selector.get_map():
            if time.monotonic() > deadline:
                raise BenchError(f"new connections: {len(waiting) + len(selector.get_map())} not done in time")
            for key, _ in selector.select(1.0):
                data = key.fileobj.recv(4096)
                key.data.extend(data)
                if b"\n" in key.data or not data:
                    if not key.data.startswith(b"220-"):
                        raise BenchError(f"expected the 220- teaser, got {bytes(key.data[:80])!r}")
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    if waiting:
                        connect()
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    return len(addresses) / (time.monotonic() - started)


async def measure(server, args, round_no: int) -> dict:
    base = 10 + 2 * round_no
    idle_before = rss_pss_kib(server.pids())
    held = []
    started = time.monotonic()
    for batch in range(0, args.idle, 100):
        held += await asyncio.gather(*(open_held(server.port, ip)
                                       for ip in sources(base, args.idle)[batch:batch + 100]))
    open_s = time.monotonic() - started
    rate = await churn(server.port, sources(base + 1, args.new), args.concurrency)
    pids = server.pids()
    rss, pss = rss_pss_kib(pids)
    screener = [pid for pid in pids if comm(pid) == server.screener]
    s_rss, s_pss = rss_pss_kib(screener)
    alive = sum(1 for _, writer in held if not writer.is_closing())
    for _, writer in held:
        writer.close()
    return {"idle_held": alive, "open_idle_s": round(open_s, 2), "new": args.new,
            "concurrency": args.concurrency, "conn_per_s": round(rate, 1), "rss_kib": rss, "pss_kib": pss,
            "screener_rss_kib": s_rss, "screener_pss_kib": s_pss, "processes": len(pids),
            "pss_kib_before": idle_before[1]}


def run_one(name: str, args, workdir: Path, round_no: int) -> dict:
    make = MtaLiteScreen if name == "mta-lite" else PostfixScreen
    with make(workdir, max(args.idle * 3, 1000)) as server:
        try:
            result = asyncio.run(measure(server, args, round_no))
        except (BenchError, OSError, asyncio.TimeoutError) as exc:
            raise BenchError(f"{name}: {exc!r}\n{server.log_tail()}") from None
    if result["idle_held"] != args.idle:
        raise BenchError(f"{name}: only {result['idle_held']} of {args.idle} idle connections survived")
    return {"server": name, "round": round_no, **result}


def summary(results: list[dict], idle: int) -> dict:
    """Means over the rounds with `idle` connections held, and the PSS of the large run."""
    def mean(name, key):
        values = [r[key] for r in results if r["server"] == name and r["idle_held"] == idle]
        return sum(values) / len(values) if values else 0
    out = {name: {key: round(mean(name, key), 1) for key in ("conn_per_s", "rss_kib", "pss_kib",
                                                            "screener_rss_kib", "screener_pss_kib")}
           for name in SERVERS}
    for r in results:
        if r["idle_held"] != idle:
            out[r["server"]][f"pss_kib_{r['idle_held']}_idle"] = r["pss_kib"]
    if all(out[name]["conn_per_s"] for name in SERVERS):
        out["ratio"] = {key: round(out["mta-lite"][key] / out["postfix"][key], 3)
                        for key in ("conn_per_s", "pss_kib", "screener_rss_kib")}
    return out


def print_table(results: list[dict], totals: dict) -> None:
    print(f"\n{'server':<9} {'round':>5} {'idle held':>9} {'new conn/s':>10} {'RSS MiB':>8} {'PSS MiB':>8}"
          f" {'screener RSS':>12} {'screener PSS':>12} {'procs':>5}")
    for r in results:
        print(f"{r['server']:<9} {r['round']:>5} {r['idle_held']:>9} {r['conn_per_s']:>10.1f}"
              f" {r['rss_kib'] / 1024:>8.1f} {r['pss_kib'] / 1024:>8.1f} {r['screener_rss_kib'] / 1024:>12.1f}"
              f" {r['screener_pss_kib'] / 1024:>12.1f} {r['processes']:>5}")
    if "ratio" in totals:
        ratio = totals["ratio"]
        print(f"mta-lite/Postfix postscreen: connection rate x{ratio['conn_per_s']:.2f}, "
              f"PSS (all processes) x{ratio['pss_kib']:.2f}, screening process RSS x{ratio['screener_rss_kib']:.2f}")
    for name in SERVERS:
        for key, value in totals.get(name, {}).items():
            if key.startswith("pss_kib_"):
                print(f"{name}: PSS of all processes with {key.split('_')[2]} idle connections held:"
                      f" {value / 1024:.1f} MiB")


def raise_fd_limit(need: int) -> None:
    """Soft (and, as root, hard) RLIMIT_NOFILE to at least `need`; the servers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need:
        try:        # root with CAP_SYS_RESOURCE; in a container perhaps not
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, min(need, int(Path("/proc/sys/fs/nr_open").read_text()))))
        except (ValueError, OSError):
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if hard < need:
        print(f"postscreen_bench: open files limited to {hard} (wanted {need})", file=sys.stderr)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1000, help="idle connections held")
    parser.add_argument("--new", type=int, default=20000, help="new connections measured")
    parser.add_argument("--concurrency", type=int, default=50, help="new connections in flight")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument("--large-idle", type=int, default=10000,
                        help="idle connections of the last run per server, for its PSS (0: no such run)")
    parser.add_argument("--only", choices=SERVERS, help="run one server only")
    parser.add_argument("--json", default="postscreen-bench.json", help="results file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("postscreen_bench: needs root (private Postfix instance)", file=sys.stderr)
        return 2
    raise_fd_limit(4 * (max(args.idle, args.large_idle) + args.concurrency) + 1024)
    names = [args.only] if args.only else list(SERVERS)
    tmp = Path(tempfile.mkdtemp(prefix="postscreen-bench-"))
    results, failures = [], []
    for round_no in range(args.rounds):
        for name in names:
            print(f"postscreen_bench: {name} round {round_no}: {args.idle} idle, {args.new} new ...", flush=True)
            try:
                results.append(run_one(name, args, tmp / f"{name}-{round_no}", round_no))
            except (BenchError, RuntimeError, TimeoutError) as exc:
                failures.append(str(exc))
                print(f"postscreen_bench: FAILED {exc}", file=sys.stderr, flush=True)
    large = argparse.Namespace(**{**vars(args), "idle": args.large_idle, "new": min(args.new, 1000)})
    for name in names if args.large_idle else ():
        print(f"postscreen_bench: {name}: {large.idle} idle, {large.new} new ...", flush=True)
        try:
            results.append(run_one(name, large, tmp / f"{name}-large", args.rounds))
        except (BenchError, RuntimeError, TimeoutError) as exc:
            failures.append(str(exc))
            print(f"postscreen_bench: FAILED {exc}", file=sys.stderr, flush=True)
    totals = summary(results, args.idle)
    print_table(results, totals)
    Path(args.json).write_text(json.dumps({"runs": results, "summary": totals, "failures": failures,
                                           "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"postscreen_bench: wrote {args.json}")
    if failures:
        print(f"postscreen_bench: logs kept in {tmp}", file=sys.stderr)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
