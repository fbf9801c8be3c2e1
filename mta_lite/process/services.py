"""services — the two halves of the relay, and both in one event loop for the demo.

    SmtpdService  the receiving half (smtpd_service.py)
    QmgrService   the delivering half (qmgr_service.py)
    Daemon        both in one event loop, for `mta-lite demo` (no privilege separation)
    run_service   one half in the foreground (runner.py)

`mta-lite serve` runs each half in its own process (see master.py); under systemd each
runs as its own unit (`mta-lite smtpd`, `mta-lite qmgr`), which loads its own half's
module only. This module imports both halves: the demo imports it, and code that wants
both names in one place.
Must never: let the receiving side hold a secret (its config is loaded with secrets=False).
"""

from __future__ import annotations

import logging

from mta_lite.config.schema import Config
from mta_lite.process.qmgr_service import QmgrService, StatusHeartbeat, run_qmgr_unit
from mta_lite.process.runner import EX_CONFIG, STATUS_INTERVAL_S, run_service
from mta_lite.process.smtpd_service import SmtpdService, run_smtpd_unit

__all__ = ["Daemon", "EX_CONFIG", "QmgrService", "STATUS_INTERVAL_S", "SmtpdService", "StatusHeartbeat",
           "run_qmgr_unit", "run_service", "run_smtpd_unit"]

log = logging.getLogger("mta_lite.master")


class Daemon:
    """Both halves in one event loop (the demo): the listener wakes the manager directly."""

    def __init__(self, cfg: Config) -> None:
        self.qmgr_service = QmgrService(cfg, purge_staging=True)
        self.smtpd_service = SmtpdService(cfg, ring=self.qmgr_service.qmgr.mail_arrived)
        self.qmgr_service.extra_counters = self.smtpd_service.totals

    async def start(self) -> None:
        await self.qmgr_service.start()
        await self.smtpd_service.start()

    async def shutdown(self) -> None:
        await self.smtpd_service.stop()
        await self.qmgr_service.stop()
        log.info("daemon stopped")
