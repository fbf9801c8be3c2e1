"""status (command) — `mta-lite status [--json]`: what the relay is doing, from its status
files (status.py); works while the relay is stopped, and needs no secret."""

from __future__ import annotations

from mta_lite.config.schema import Config
from mta_lite.status import format_status, read_status


def status_main(cfg: Config, as_json: bool) -> int:
    snapshot = read_status(cfg.spool_dir)
    print(snapshot.to_json() if as_json else format_status(snapshot))
    return 0
