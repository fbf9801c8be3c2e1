"""daemon — the two halves of the relay as services: SmtpdService receives, QmgrService delivers.

    SmtpdService  listeners + SMTP engine; writes only tmp/ and incoming/; rings the queue
                  manager's doorbell after each accepted message and sends it its counters.
    QmgrService   recovery, queue manager, smarthost pool; the only holder of credentials;
                  writes the status file (its own figures plus the smtpd counters it got).
    Daemon        both in one event loop, for `mta-lite demo` (no privilege separation).

`mta-lite serve` runs each service in its own process (see master.py); under systemd each
runs as its own unit. A service stops gracefully on SIGTERM: listeners finish or refuse
their sessions, in-flight deliveries finish or stay queued; nothing accepted is lost (G2).
Must never: let the receiving side hold a secret (its config is loaded with secrets=False),
or open a listener before its start-up clean-up is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

from .config import Config
from .errors import MtaLiteError
from .qmgr.manager import QueueManager
from .qmgr.wakeup import Bell
from .queue import Spool
from .smarthost.client import SmarthostPool
from .smtpd.listener import Listener
from .status import StatusSnapshot, write_status

log = logging.getLogger("mta_lite.master")
STATUS_INTERVAL_S = 2.0
VERSION = "0.1.0"


def _sum_counters(listeners: list[Listener]) -> dict[str, int]:
    total: dict[str, int] = {}
    for listener in listeners:
        for key, value in listener.counters.items():
            total[key] = total.get(key, 0) + value
    return total


class SmtpdService:
    """The receiving half. `socks` are listening sockets handed over by the master."""

    def __init__(self, cfg: Config, wakeup=None, socks: list[socket.socket] | None = None) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool_dir)
        self._bell = None if wakeup else Bell(self.spool.wakeup_socket)
        ring = wakeup or self._ring
        self.listeners = [Listener(cfg, item, self.spool, wakeup=ring) for item in cfg.listen]
        self.socks = socks or [None] * len(self.listeners)
        self._stats_task: asyncio.Task | None = None

    def _ring(self) -> None:
        try:
            self._bell.ring()
        except OSError as exc:     # the periodic rescan finds the message anyway
            log.warning("cannot wake the queue manager: %s", exc.strerror)

    async def start(self) -> None:
        # Only files older than any session can be: in one-user mode tmp/ is shared with the
        # queue manager's own writes (bounces, pickup copies), which must not be cut short.
        purged = self.spool.purge_tmp(older_than_s=self.cfg.smtpd.session_limit_s)
        if purged:
            log.info("removed %d unfinished files from tmp/", purged)
        for listener, sock in zip(self.listeners, self.socks):
            await listener.start(sock)
        if self._bell:
            self._stats_task = asyncio.create_task(self._send_stats(), name="smtpd-stats")

    def counters(self) -> dict[str, int]:
        return {**_sum_counters(self.listeners), "pid": os.getpid()}

    async def _send_stats(self) -> None:
        while True:
            try:
                self._bell.stats(self.counters())
            except OSError:
                pass
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def stop(self) -> None:
        if self._stats_task:
            self._stats_task.cancel()
        for listener in self.listeners:
            await listener.close()


class QmgrService:
    """The delivering half; `purge_tmp` only when no receiver can be writing (in-process)."""

    def __init__(self, cfg: Config, purge_tmp: bool = False) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool_dir)
        self.pool = SmarthostPool(helo_name=cfg.hostname)
        self.qmgr = QueueManager(cfg, self.spool, self.pool)
        self.started = time.time()
        self.extra_counters = None          # in-process smtpd counters (Daemon)
        self._purge_tmp = purge_tmp

    async def start(self) -> None:
        self.spool.ensure()
        counts = self.spool.recover(purge_tmp=self._purge_tmp)
        if not self._purge_tmp:
            counts["purged"] = self.spool.purge_tmp(older_than_s=self.cfg.smtpd.session_limit_s)
        log.info("daemon started -- version %s, spool %s (recovered: %s)", VERSION,
                 self.cfg.spool_dir, ", ".join(f"{k} {v}" for k, v in counts.items()))
        self.task = asyncio.create_task(self.qmgr.run(), name="qmgr")
        self._status_task = asyncio.create_task(self._status_loop(), name="status")

    def snapshot(self) -> StatusSnapshot:
        data = self.qmgr.snapshot()
        smtpd = self.extra_counters() if self.extra_counters else data.get("smtpd", {})
        return StatusSnapshot(pid=os.getpid(), started=self.started, running=True,
                              relays=data["accounts"], qmgr=data["totals"], smtpd=smtpd)

    async def _status_loop(self) -> None:
        while True:
            try:
                write_status(self.cfg.spool_dir, self.snapshot())
            except OSError as exc:
                log.warning("cannot write status file: %s", exc.strerror)
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def stop(self) -> None:
        await self.qmgr.stop()
        await self.pool.close()
        self._status_task.cancel()
        snapshot = self.snapshot()
        snapshot.pid = 0
        write_status(self.cfg.spool_dir, snapshot)


class Daemon:
    """Both halves in one event loop (the demo): the listener wakes the manager directly."""

    def __init__(self, cfg: Config) -> None:
        self.qmgr_service = QmgrService(cfg, purge_tmp=True)
        self.smtpd_service = SmtpdService(cfg, wakeup=self.qmgr_service.qmgr.wake)
        self.qmgr_service.extra_counters = lambda: _sum_counters(self.smtpd_service.listeners)

    async def start(self) -> None:
        await self.qmgr_service.start()
        await self.smtpd_service.start()

    async def shutdown(self) -> None:
        await self.smtpd_service.stop()
        await self.qmgr_service.stop()
        log.info("daemon stopped")


def run_service(service) -> int:
    """Run one service in the foreground until SIGTERM/SIGINT; the process exit status."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.start()
        waiters = [asyncio.create_task(stop.wait())]
        if isinstance(service, QmgrService):
            waiters.append(service.task)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        await service.stop()

    try:
        asyncio.run(main())
    except (MtaLiteError, OSError) as exc:
        log.error("fatal: %s", exc)
        return 71       # EX_OSERR: cannot bind, spool not writable, ...
    return 0
