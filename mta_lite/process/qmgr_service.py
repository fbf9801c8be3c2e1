"""qmgr_service — the delivering half as a service: recovery, queue manager, smarthost pool.

    QmgrService      recovery, queue manager, smarthost pool; the only holder of credentials;
                     writes the status file (its own figures plus the smtpd counters it got)
    StatusHeartbeat  when the status file is due
    run_qmgr_unit()  `mta-lite qmgr`, this half on its own (a systemd unit)

On its own (`mta-lite qmgr`, a systemd unit) it loads none of the receiving half's code
(smtpd.*, postscreen.*).
On SIGHUP the queue manager re-reads its config (C1: a config with any error is not used;
the running one stays and one line names file, key and value).
Must never: listen on the network, or import the receiving side's code (smtpd, postscreen).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time

from mta_lite import __version__
from mta_lite.config.schema import Config, all_routes
from mta_lite.process.runner import STATUS_INTERVAL_S, run_service
from mta_lite.qmgr.manager import QueueManager
from mta_lite.queue import Spool
from mta_lite.smarthost.oauth.store import store_for
from mta_lite.smarthost.oauth.tokens import TokenManager, load_endpoint_code
from mta_lite.smarthost.pool import SmarthostPool
from mta_lite.status import StatusSnapshot, disk_usage, oldest_arrival, queue_counts, write_status

log = logging.getLogger("mta_lite.master")
# An unchanged status snapshot is rewritten only this often, as a heartbeat: readers take a
# snapshot older than status.STALE_AFTER_S (30 s) for a dead daemon. Rewriting it every
# STATUS_INTERVAL_S cost about 115 MiB an hour on the SD card of an idle box (docs/benchmark.md).
STATUS_HEARTBEAT_S = 10.0


@dataclasses.dataclass
class StatusHeartbeat:
    """When the status file is due: its content changed, or `heartbeat_s` passed since the
    last write (readers need a fresh `written` to tell a live daemon from a dead one)."""

    heartbeat_s: float = STATUS_HEARTBEAT_S
    content: str = ""
    at: float | None = None

    def due(self, content: str, now: float) -> bool:
        return content != self.content or self.at is None or now - self.at >= self.heartbeat_s

    def wrote(self, content: str, now: float) -> None:
        self.content, self.at = content, now


class QmgrService:
    """The delivering half; `purge_staging` only when no receiver can be writing (in-process)."""

    def __init__(self, cfg: Config, purge_staging: bool = False, spool_name: str = "",
                 after_reload: bool = False) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool_dir)
        self.spool_name = spool_name or cfg.spool_dir     # for the log: cfg's may be "."
        self.tokens = TokenManager(store_for(cfg.spool_dir, cfg.path))
        self.pool = SmarthostPool(helo_name=cfg.hostname, tokens=self.tokens)
        self._import_seeds()
        for relay in cfg.relays.values():
            if relay.tls != "none":
                # Now, while a master's child is still root: the CA file may be root's alone.
                self.pool.tls_context(relay.ca_file)
        self.qmgr = QueueManager(cfg, self.spool, self.pool, after_reload=after_reload)
        self.started = time.time()
        self.extra_counters = None          # in-process smtpd counters (Daemon)
        self._purge_staging = purge_staging

    def _import_seeds(self) -> None:
        """Now, while a master's child is still root: a seed from `oauth login` may be in a
        secrets/ directory the queue manager's user cannot enter, a CA file root's alone.
        The token endpoint's code is loaded here too, only for a config with providers."""
        if self.cfg.oauth:
            load_endpoint_code()
            from mta_lite.smarthost.oauth.http import context_for
        for provider in self.cfg.oauth.values():
            try:
                context_for(provider.ca_file)
            except OSError as exc:      # ssl.SSLError too; the token step says so at each try
                log.warning("oauth %s: cannot load ca_file %s: %s", provider.name, provider.ca_file, exc)
            if provider.grant == "refresh_token":
                try:
                    self.tokens.store.load(provider.name)
                except OSError as exc:
                    log.warning("oauth %s: cannot import the login's tokens: %s", provider.name, exc.strerror or exc)

    async def start(self) -> None:
        self.spool.ensure()
        counts = self.spool.recover(purge_staging=self._purge_staging)
        if not self._purge_staging:
            counts["purged"] = self.spool.purge_staging(older_than_s=self.cfg.smtpd.session_limit_s)
        log.info("daemon started -- version %s, spool %s (recovered: %s)", __version__,
                 self.spool_name, ", ".join(f"{k} {v}" for k, v in counts.items()))
        self.task = asyncio.create_task(self.qmgr.run(), name="qmgr")
        self._status_task = asyncio.create_task(self._status_loop(), name="status")

    def snapshot(self) -> StatusSnapshot:
        data = self.qmgr.snapshot()
        smtpd = self.extra_counters() if self.extra_counters else data.get("smtpd", {})
        relays = data["accounts"]
        for route in all_routes(self.cfg):       # OAuth accounts: token health, never a token
            if route.oauth is not None and route.account in relays:
                relays[route.account]["oauth"] = self.tokens.snapshot(route.oauth)
        return StatusSnapshot(pid=os.getpid(), started=self.started, running=True,
                              queue=queue_counts(self.cfg.spool_dir),
                              relays=relays, qmgr=data["totals"], smtpd=smtpd,
                              config=self.cfg.digest, clock=data["clock"], recent=self.qmgr.history.snapshot(),
                              disk=disk_usage(self.cfg.spool_dir), oldest=oldest_arrival(self.cfg.spool_dir))

    async def _status_loop(self) -> None:
        """Look every STATUS_INTERVAL_S; write when the snapshot changed or the heartbeat is due."""
        heartbeat = StatusHeartbeat()
        while True:
            try:
                snapshot = self.snapshot()
                self.qmgr.history.observe_smtpd(snapshot.smtpd)     # smtpd's refusals, for the history
                # What changed, before write_status() stamps `written`; the free space moves
                # with any write on the file system and is brought up to date by the heartbeat.
                content = dataclasses.replace(snapshot, disk={}).to_json()
                if heartbeat.due(content, time.monotonic()):
                    write_status(self.cfg.spool_dir, snapshot)
                    heartbeat.wrote(content, time.monotonic())
            except OSError as exc:
                log.warning("cannot write status file: %s", exc.strerror)
            await asyncio.sleep(STATUS_INTERVAL_S)

    def reload(self) -> bool:
        """SIGHUP: validate the config file completely, then apply it; on error keep running."""
        from mta_lite.config.load import load_config
        from mta_lite.errors import ConfigError
        from mta_lite.maillog import add_secrets
        try:
            cfg = load_config(self.cfg.path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        for key in ("spool_dir", "hostname"):
            if getattr(cfg, key) != getattr(self.cfg, key):
                log.warning("reload: %s changes only with a restart; keeping %s", key, getattr(self.cfg, key))
        self.cfg = cfg = dataclasses.replace(cfg, spool_dir=self.cfg.spool_dir, hostname=self.cfg.hostname)
        add_secrets(cfg)            # S3: a new password is masked in the log like the old
        self.qmgr.reconfigure(cfg)
        log.info("configuration reloaded from %s", cfg.path)
        return True

    async def stop(self) -> None:
        await self.qmgr.stop()
        await self.pool.close()
        self._status_task.cancel()
        snapshot = self.snapshot()
        snapshot.pid = 0
        write_status(self.cfg.spool_dir, snapshot)


def run_qmgr_unit(cfg: Config) -> int:
    """`mta-lite qmgr`, the delivering half on its own (a systemd unit)."""
    from mta_lite.maillog import setup_logging
    setup_logging(cfg)
    return run_service(QmgrService(cfg))
