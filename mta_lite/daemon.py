"""daemon — `mta-lite serve`: wire the spool, the queue manager and the listeners, and run.

Start-up: create the spool directories, recover (purge tmp/, requeue active/, quarantine
corrupt files), start the queue manager, then open the listeners. SIGTERM/SIGINT stop
gracefully: listeners stop accepting and finish or refuse their sessions, in-flight
deliveries finish or stay queued; nothing accepted is lost (G2).
Guarantees: the status snapshot is refreshed every STATUS_INTERVAL_S while running.
Must never: open a listener before recovery is done (a restart must not race the spool).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from .config import Config
from .errors import MtaLiteError
from .qmgr.manager import QueueManager
from .queue import Spool
from .smarthost.client import SmarthostPool
from .smtpd.listener import Listener
from .status import StatusSnapshot, write_status

log = logging.getLogger("mta_lite.master")
STATUS_INTERVAL_S = 2.0


class Daemon:
    """The running relay: one queue manager, one listener per [[listen]] entry."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool_dir)
        self.pool = SmarthostPool(helo_name=cfg.hostname)
        self.qmgr = QueueManager(cfg, self.spool, self.pool)
        self.listeners = [Listener(cfg, item, self.spool, wakeup=self.qmgr.wake) for item in cfg.listen]
        self.started = time.time()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        self.spool.ensure()
        counts = self.spool.recover()
        log.info("daemon started -- version 0.1.0, spool %s (recovered: %s)", self.cfg.spool_dir,
                 ", ".join(f"{k} {v}" for k, v in counts.items()))
        self._qmgr_task = asyncio.create_task(self.qmgr.run(), name="qmgr")
        for listener in self.listeners:
            await listener.start()
        self._status_task = asyncio.create_task(self._status_loop(), name="status")

    async def run(self) -> None:
        await self.start()
        done, _ = await asyncio.wait([self._qmgr_task, asyncio.create_task(self._stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._qmgr_task in done and self._qmgr_task.exception():
            log.error("queue manager failed: %r", self._qmgr_task.exception())
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("terminating on signal, closing listeners and finishing deliveries")
        for listener in self.listeners:
            await listener.close()
        await self.qmgr.stop()
        await self.pool.close()
        self._status_task.cancel()
        snapshot = self.snapshot()
        snapshot.pid = 0
        write_status(self.cfg.spool_dir, snapshot)
        log.info("daemon stopped")

    def snapshot(self) -> StatusSnapshot:
        qmgr = self.qmgr.snapshot()
        smtpd: dict[str, int] = {}
        for listener in self.listeners:
            for key, value in listener.counters.items():
                smtpd[key] = smtpd.get(key, 0) + value
        return StatusSnapshot(pid=os.getpid(), started=self.started, running=True,
                              relays=qmgr.get("accounts", {}), qmgr=qmgr.get("totals", {}), smtpd=smtpd)

    async def _status_loop(self) -> None:
        while True:
            try:
                write_status(self.cfg.spool_dir, self.snapshot())
            except OSError as exc:
                log.warning("cannot write status file: %s", exc.strerror)
            await asyncio.sleep(STATUS_INTERVAL_S)


def serve(cfg: Config) -> int:
    """Run in the foreground until SIGTERM or SIGINT; the exit status for the CLI."""
    async def main() -> None:
        daemon = Daemon(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        await daemon.run()

    try:
        asyncio.run(main())
    except (MtaLiteError, OSError) as exc:
        log.error("fatal: %s", exc)
        return 71   # EX_OSERR: cannot bind, spool not writable, ...
    return 0
