"""Shared fakes for the queue manager tests: config, clock, sleep, smarthost pool, harness.

No tests here. The fake pool implements SmarthostPool.deliver()/close() and answers from a
script; the clock only moves when a test moves it; sleep() never returns by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import shutil
import tempfile
from dataclasses import dataclass

from mta_lite.config.schema import Route
from mta_lite.config.load import parse_config
from mta_lite.envelope import Envelope
from mta_lite.qmgr import QueueManager
from mta_lite.queue import Spool
from mta_lite.reply import Reply
from mta_lite.smarthost.content import Content
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT, DeliveryResult, RecipientResult
from tests.support.waiting import wait_until_async

HOST = "relay.lan.test"
ADMIN = "postmaster@lan.test"
T0 = 1_700_000_000.0
TEST_TIMEOUT_S = 10.0
CONTENT = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n"
           b"Subject: quarterly report\r\nMessage-ID: <m1@example.com>\r\n\r\n"
           b"Hello Bob,\r\nSECRET-BODY-TEXT\r\n")
R250 = Reply(250, "2.0.0", "Ok: queued as 4Xyz")
R451 = Reply(451, "4.3.0", "later")
R550 = Reply(550, "5.1.1", "no such user")
R535 = Reply(535, "5.7.8", "authentication failed")


def async_test(fn):
    """Run an async test in a fresh loop with an overall deadline (no pytest-asyncio here)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_S))
    return wrapper


def make_config(spool_dir: str, queue: dict | None = None, **top):
    data = {
        "hostname": HOST, "spool_dir": spool_dir, "admin_address": ADMIN, "default_relay": "isp",
        "relays": {
            "isp": {"host": "smtp.isp.example", "concurrency": 2},
            "work": {"host": "smtp.work.example", "username": "alice@work.example",
                     "password": "pw-1", "concurrency": 1},
        },
        "senders": [{"address": "@work.example", "relay": "work"}],
        "queue": {"min_backoff": "5m", "max_backoff": "1h", "lifetime": "5d", **(queue or {})},
        **top,
    }
    return parse_config(data, os.path.join(spool_dir, "mta-lite.toml"))


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ManualSleep:
    """An injected sleep that returns only when the test calls ring(). A ring while nobody
    sleeps is kept for the next sleep: the manager may not have gone to sleep yet when the
    test rings (it has nothing in flight, but its nap has not started)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._doorbell = asyncio.Event()
        self._sleepers = 0
        self._kept = False

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self._kept:
            self._kept = False
            return
        bell = self._doorbell
        self._sleepers += 1
        try:
            await bell.wait()
        finally:
            self._sleepers -= 1

    def ring(self) -> None:
        if not self._sleepers:
            self._kept = True
        self._doorbell.set()
        self._doorbell = asyncio.Event()


@dataclass
class Call:
    account: str
    sender: str
    recipients: list[str]
    content: bytes
    smtputf8: bool


def result_for(recipients, statuses: dict[str, tuple[str, Reply]], relay="smtp.isp.example[192.0.2.1]:587"):
    """Per-recipient answers; recipients not named are sent."""
    rows = [RecipientResult(r, *statuses.get(r, (SENT, R250))) for r in recipients]
    return DeliveryResult(relay, tuple(rows))


class FakePool:
    """Records every deliver() call; answers with respond(call) (default: all sent).
    With hold=True each delivery waits until release() (to test in-flight behaviour)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.respond = lambda call: result_for(call.recipients, {})
        self.hold = False
        self._gate = asyncio.Event()
        self.closed = False

    async def deliver(self, route: Route, sender: str, recipients: list[str], content: bytes | Content,
                      smtputf8: bool = False) -> DeliveryResult:
        """The content is recorded as the bytes a real client would send (before dot-stuffing)."""
        whole = content.whole() if isinstance(content, Content) else content
        call = Call(route.account, sender, list(recipients), whole, smtputf8)
        self.calls.append(call)
        await asyncio.sleep(0)            # a real client yields on I/O: let siblings interleave
        if self.hold:
            await self._gate.wait()
        return self.respond(call)

    def release(self) -> None:
        self._gate.set()

    async def close(self) -> None:
        self.closed = True

    def to(self, recipient: str) -> list[Call]:
        return [c for c in self.calls if recipient in c.recipients]


def bounce_all(call: Call) -> DeliveryResult:
    return DeliveryResult.permanent(call.recipients, R550, "smtp.isp.example[192.0.2.1]:587")


def defer_all(call: Call) -> DeliveryResult:
    return DeliveryResult.transient(call.recipients, R451, "smtp.isp.example[192.0.2.1]:587")


class Harness:
    """A spool in a short temp dir (AF_UNIX paths max 108 bytes), a manager, and its fakes.
    build_time: the manager's clock floor (qmgr/clock.py); by default a year before T0, so
    the fake clock counts as set."""

    def __init__(self, queue: dict | None = None, build_time: float = T0 - 365 * 86400.0, **top) -> None:
        self.root = tempfile.mkdtemp(prefix="mq")
        self.spool = Spool(os.path.join(self.root, "s")).ensure()
        self.cfg = make_config(self.root, queue, **top)
        self.clock = FakeClock()
        self.sleep = ManualSleep()
        self.pool = FakePool()
        self.mgr = QueueManager(self.cfg, self.spool, self.pool, clock=self.clock,
                                rng=random.Random(7), sleep=self.sleep, build_time=build_time)
        self._task: asyncio.Task | None = None

    def queue(self, sender="alice@example.com", rcpts=("bob@example.org",), content=CONTENT,
              is_bounce=False, arrival: float | None = None) -> str:
        writer = self.spool.begin(Envelope(sender, list(rcpts), "192.0.2.7", "scanner"),
                                  is_bounce=is_bounce, now=self.clock() if arrival is None else arrival)
        writer.write(content)
        return writer.commit()

    async def start(self) -> None:
        self._task = asyncio.create_task(self.mgr.run())
        await wait_until_async(lambda: os.path.exists(self.spool.doorbell_path), what="the doorbell socket")

    async def settle(self) -> None:
        """Until the manager has nothing in flight and no ring waiting to be handled."""
        await wait_until_async(self.mgr.idle, what="the queue manager to be idle")

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._task is not None:
            await self.mgr.stop(grace_s)
            await self._task
            self._task = None

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def where(self, queue_id: str) -> str | None:
        return self.spool.locate(queue_id)

    def dsns(self) -> list[str]:
        """Queue IDs of notices in incoming/ or deferred/ (is_bounce files)."""
        found = []
        for state in ("incoming", "deferred", "active"):
            found += [q for q in self.spool.list(state) if self.spool.read(state, q).is_bounce]
        return found


@contextlib.asynccontextmanager
async def running(queue: dict | None = None, **top):
    harness = Harness(queue, **top)
    try:
        yield harness
    finally:
        await harness.stop()
        harness.cleanup()


__all__ = ["ADMIN", "BOUNCE", "CONTENT", "DEFER", "HOST", "R250", "R451", "R535", "R550", "SENT",
           "T0", "Call", "FakeClock", "FakePool", "Harness", "ManualSleep", "async_test",
           "bounce_all", "defer_all", "make_config", "result_for", "running", "until"]
