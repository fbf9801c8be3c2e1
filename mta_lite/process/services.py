"""services — both halves of the relay in one event loop, for `mta-lite demo`.

    Daemon        SmtpdService (smtpd_service.py) and QmgrService (qmgr_service.py) in one
                  process, without privilege separation

`mta-lite serve` runs each half in its own process (see master.py, runner.py); under
systemd each runs as its own unit (`mta-lite smtpd`, `mta-lite qmgr`), which loads its own
half's module only. Only the demo imports both halves, through this module.
Must never: let the receiving side hold a secret (its config is loaded with secrets=False).
"""

from __future__ import annotations

import logging

from mta_lite.config.schema import Config
from mta_lite.process.qmgr_service import QmgrService
from mta_lite.process.smtpd_service import SmtpdService

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
