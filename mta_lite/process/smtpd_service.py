"""smtpd_service — the receiving half as a service: listeners, postscreen, the SMTP engine.

    SmtpdService     listeners + SMTP engine; writes only incoming/; rings the queue
                     manager's doorbell after each accepted message and sends it its counters
    run_smtpd_unit() `mta-lite smtpd`, this half on its own (a systemd unit)

On its own (`mta-lite smtpd`, a systemd unit) it loads none of the delivering half's code
(qmgr.*, smarthost.*, aiosmtplib): about 3 MiB less than both halves (docs/benchmark.md).
Must never: hold a secret (its config is loaded with secrets=False), import the delivering
side's code (qmgr, smarthost), or open a listener before its start-up clean-up is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

from mta_lite.config.schema import Config
from mta_lite.errors import ConfigError
from mta_lite.postscreen.service import PostscreenService
from mta_lite.process.runner import STATUS_INTERVAL_S, run_service
from mta_lite.process.spawn import EX_CONFIG
from mta_lite.queue import Spool
from mta_lite.queue.doorbell import Doorbell
from mta_lite.smtpd.listener import Listener

log = logging.getLogger("mta_lite.master")


def _sum_counters(listeners: list[Listener]) -> dict[str, int]:
    total: dict[str, int] = {}
    for listener in listeners:
        for key, value in listener.counters.items():
            total[key] = total.get(key, 0) + value
    return total


class SmtpdService:
    """The receiving half. `socks` are listening sockets handed over by the master."""

    def __init__(self, cfg: Config, ring=None, socks: list[socket.socket] | None = None) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool_dir)
        self._doorbell = None if ring else Doorbell(self.spool.doorbell_path)
        ring = ring or self._ring
        screened = any(item.postscreen for item in cfg.listen)
        self.postscreen = PostscreenService(cfg) if screened else None
        self.listeners = [self._listener(item, ring) for item in cfg.listen]
        self.socks = socks or [None] * len(self.listeners)
        self._stats_task: asyncio.Task | None = None

    def _listener(self, item, ring) -> Listener:
        if not item.postscreen:
            return Listener(self.cfg, item, self.spool, ring=ring)
        listener = Listener(self.postscreen.listener_config(), item, self.spool, ring=ring)
        listener.pre_greet = self.postscreen.screen(lambda: listener.active)
        return listener

    def _ring(self) -> None:
        try:
            self._doorbell.ring()
        except OSError as exc:     # the periodic rescan finds the message anyway
            log.warning("cannot ring the queue manager's doorbell: %s", exc.strerror)

    async def start(self) -> None:
        # Only files older than any session can be: the queue manager stages its own writes
        # (bounces, pickup copies) in incoming/ too, and they must not be cut short.
        purged = self.spool.purge_staging(older_than_s=self.cfg.smtpd.session_limit_s)
        if purged:
            log.info("removed %d unfinished files from incoming/", purged)
        if self.postscreen:
            await self.postscreen.start()
        for listener, sock in zip(self.listeners, self.socks):
            await listener.start(sock)
        if self._doorbell:
            self._stats_task = asyncio.create_task(self._send_stats(), name="smtpd-stats")

    def totals(self) -> dict[str, int]:
        """The listeners' counters summed, plus postscreen's when a listener is screened."""
        return {**_sum_counters(self.listeners), **dict(self.postscreen.counters.items() if self.postscreen else ())}

    def counters(self) -> dict[str, int]:
        return {**self.totals(), "pid": os.getpid()}

    async def _send_stats(self) -> None:
        while True:
            try:
                self._doorbell.stats(self.counters())
            except OSError:
                pass
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def stop(self) -> None:
        if self._stats_task:
            self._stats_task.cancel()
        for listener in self.listeners:
            await listener.close()
        if self.postscreen:
            self.postscreen.close()


def run_smtpd_unit(config_path: str) -> int:
    """`mta-lite smtpd`, the receiving half on its own (a systemd unit). Like the master, it
    takes its config from a short-lived `config public` process, so no secret enters it (S7)."""
    from mta_lite.config.public import load_public_config
    from mta_lite.maillog import setup_logging
    try:
        cfg = load_public_config(config_path)
        service = SmtpdService(cfg)         # loads the listeners' certificates and keys
    except ConfigError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg)
    return run_service(service)
