"""runner — run one half of the relay (smtpd or qmgr) in the foreground until it is told to stop.

    run_service(service)   the event loop of one process: start, wait for SIGTERM/SIGINT (or
                           the queue manager's end), stop; SIGHUP calls service.reload()

Both halves run through here; each half's own code is in smtpd_service.py and
qmgr_service.py, so that a half run on its own (a systemd unit) loads only its own code.
A service stops gracefully on SIGTERM: listeners finish or refuse their sessions, in-flight
deliveries finish or stay queued; nothing accepted is lost (G2). A service without reload()
(smtpd) logs that it keeps its config: the master (or systemd's mta-lite-config.service)
replaces it with a new process instead.
Must never: import either half's code.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from mta_lite.errors import MtaLiteError
from mta_lite.process import alloc

log = logging.getLogger("mta_lite.master")
# How often smtpd sends its counters to the queue manager, and the queue manager looks at
# whether the status snapshot changed.
STATUS_INTERVAL_S = 2.0


def _keep_config() -> None:
    log.info("SIGHUP: smtpd keeps its configuration; restart it to change listeners")


def run_service(service) -> int:
    """Run one service in the foreground until SIGTERM/SIGINT; the process exit status.
    A service with a `task` (the queue manager's loop) also ends when that task does."""
    alloc.tune()            # before the loop reads its first socket

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, getattr(service, "reload", _keep_config))
        await service.start()
        waiters = [asyncio.create_task(stop.wait())]
        if getattr(service, "task", None) is not None:
            waiters.append(service.task)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        await service.stop()

    try:
        asyncio.run(main())
    except (MtaLiteError, OSError) as exc:
        log.error("fatal: %s", exc)
        return 71       # EX_OSERR: cannot bind, spool not writable, ...
    return 0
