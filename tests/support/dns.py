"""DNS peers on loopback for the postscreen tests: a real dnsmasq answering DNSBL zones, and a
tiny in-process UDP server that answers badly on purpose (SERVFAIL, garbage, silence).

Guarantees: both listen on 127.0.0.1 only, on a port found free for UDP and TCP; Dnsmasq
returns from start() only once it answers a query (polled against a deadline) and raises with
its own log otherwise; stop() ends the process it started, by PID, and reaps it.
Never: sends a query anywhere but 127.0.0.1, reads /etc/resolv.conf, or starts a service.
dnsmasq: `apt-get install dnsmasq` (tools/install-test-deps.sh). This module does not import
pytest.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import dns.resolver

from tests.support.peers import LOOPBACK, free_port, tail_file
from tests.support.waiting import wait_until

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def query(port: int, name: str, timeout: float = 1.0) -> list[str]:
    """A records of `name` from the server on 127.0.0.1:port ([] for NXDOMAIN)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [LOOPBACK], port, timeout
    try:
        return [r.address for r in resolver.resolve(name, "A", search=False)]
    except dns.resolver.NXDOMAIN:
        return []


class Dnsmasq:
    """dnsmasq on 127.0.0.1:port. `zones` answer NXDOMAIN for anything not in `records`
    (dnsmasq `local=/zone/`); other names get REFUSED. `records`: name -> A address."""

    def __init__(self, workdir: Path | str, zones: list[str], records: dict[str, str], ttl: int = 300) -> None:
        self.workdir = Path(workdir)
        self.zones, self.records, self.ttl = zones, records, ttl
        self.port = 0
        self.log = self.workdir / "dnsmasq.log"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        lines = [f"port={self.port}", f"listen-address={LOOPBACK}", "bind-interfaces", "no-resolv",
                 "no-hosts", "no-daemon", f"local-ttl={self.ttl}", f"log-facility={self.log}",
                 "log-queries", f"pid-file={self.workdir / 'dnsmasq.pid'}"]
        lines += [f"local=/{zone}/" for zone in self.zones]
        lines += [f"host-record={name},{address}" for name, address in self.records.items()]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> "Dnsmasq":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(udp_too=True)
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text(self.config())
        with open(self.workdir / "stderr", "wb") as err:
            self.proc = subprocess.Popen([DNSMASQ, f"--conf-file={conf}"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        probe = next(iter(self.records), f"probe.{self.zones[0]}")

        def answers() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                query(self.port, probe, timeout=0.5)
            except dns.exception.DNSException:
                return False
            return True
        try:
            wait_until(answers, timeout, f"dnsmasq on port {self.port}")
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}\n{tail_file(self.log)}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}: "
                               f"{tail_file(self.workdir / 'stderr')}{tail_file(self.log)}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "Dnsmasq":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _BadServer(asyncio.DatagramProtocol):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.transport = None
        self.queries = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.queries += 1
        if self.mode == "silent":
            return
        if self.mode == "garbage":
            self.transport.sendto(data[:2] + b"\x81\x80\xff\xff garbage", addr)   # our ID, then nonsense
            return
        response = dns.message.make_response(dns.message.from_wire(data))
        response.set_rcode({"servfail": dns.rcode.SERVFAIL, "refused": dns.rcode.REFUSED}[self.mode])
        self.transport.sendto(response.to_wire(), addr)


async def bad_dns_server(mode: str) -> tuple[asyncio.DatagramTransport, _BadServer, int]:
    """An in-process UDP DNS server on 127.0.0.1 that answers every query with `mode`:
    servfail, refused, garbage (a reply that does not parse) or silent (never answers)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _BadServer(mode), local_addr=(LOOPBACK, 0))
    return transport, protocol, transport.get_extra_info("sockname")[1]
