"""Test support for listener tests: a fake spool with the real queue API, a config builder.

FakeSpool implements exactly the API the listener codes against (begin/write/commit/abort,
queue_id, free_bytes) on a temporary directory, and can be told to fail at each step.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from mta_lite.config.schema import Config, Listen, QueueConfig, SmtpdConfig
from mta_lite.envelope import Envelope
from mta_lite.errors import SpoolError

HOSTNAME = "mta-lite.test"
ADMIN = "admin@example.com"


@dataclass
class Stored:
    queue_id: str
    envelope: Envelope
    content: bytes


class FakeWriter:
    def __init__(self, spool: "FakeSpool", envelope: Envelope, queue_id: str) -> None:
        self.spool, self.envelope, self.queue_id = spool, envelope, queue_id
        self.path = spool.incoming / f".tmp-{queue_id}"
        self.handle = open(self.path, "wb")

    def write(self, chunk: bytes) -> None:
        if self.spool.fail == "write":
            raise SpoolError("injected write failure")
        self.spool.largest_write = max(self.spool.largest_write, len(chunk))
        self.handle.write(chunk)

    def commit(self) -> str:
        if self.spool.fail == "commit":
            raise SpoolError("injected commit failure")
        self.handle.close()
        final = self.spool.incoming / self.queue_id
        os.rename(self.path, final)
        self.spool.stored.append(Stored(self.queue_id, self.envelope, final.read_bytes()))
        return self.queue_id

    def abort(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)
        self.spool.aborted += 1


@dataclass
class FakeSpool:
    root: Path
    free: int = 10**12
    fail: str = ""                 # "", "begin", "write", "commit", "crash"
    stored: list[Stored] = field(default_factory=list)
    aborted: int = 0
    largest_write: int = 0
    _next: int = 0

    def __post_init__(self) -> None:
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return self.free

    async def commit_async(self, writer: FakeWriter) -> str:
        return writer.commit()

    def begin(self, envelope: Envelope) -> FakeWriter:
        if self.fail == "begin":
            raise SpoolError("injected begin failure")
        if self.fail == "crash":
            raise RuntimeError("internal detail /secret/path must not reach the client")
        self._next += 1
        return FakeWriter(self, envelope, f"{0xA0000 + self._next:X}")

    def tmp_files(self) -> list[str]:
        """Staged files (.tmp-ID in incoming/), as the real spool stages them."""
        return sorted(name for name in os.listdir(self.incoming) if name.startswith(".tmp-"))


def make_config(tmp_path: Path, *, mynetworks: tuple[str, ...] = ("127.0.0.0/8",),
                message_size_limit: int = 10_240_000, listen: Listen | None = None,
                reserve_bytes: int = 0, **smtpd: object) -> Config:
    listen = listen or Listen("127.0.0.1", 0)
    return Config(path="test.toml", hostname=HOSTNAME, spool_dir=str(tmp_path),
                  mynetworks=tuple(ipaddress.ip_network(n) for n in mynetworks),
                  admin_address=ADMIN, message_size_limit=message_size_limit,
                  default_relay="isp", listen=(listen,), relays={}, senders=(),
                  queue=QueueConfig(reserve_bytes=reserve_bytes), smtpd=SmtpdConfig(**smtpd))
