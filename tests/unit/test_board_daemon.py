"""mta-lite-board's part supervisor and arguments (board.daemon).

Peer: none; the parts are coroutines of the test, and SIGTERM goes to this process while
run() has its handler installed. A part that fails is restarted and logged by type and place
(never by its message: it could hold anything), a part that returns is done, and SIGTERM
stops them all with exit status 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from mta_lite_board import daemon
from tests.support.relay import PASSWORD
from tests.support.waiting import wait_until_async


def test_board_run_restarts_a_failing_part_finishes_a_returning_one_and_stops_on_sigterm(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="board")
    monkeypatch.setattr(daemon, "RESTART_MIN_S", 0.01)
    monkeypatch.setattr(daemon, "RESTART_MAX_S", 0.02)
    calls = {"bad": 0, "once": 0}

    async def bad():
        calls["bad"] += 1
        raise KeyError(PASSWORD)

    async def once():
        calls["once"] += 1

    async def stopper():
        await wait_until_async(lambda: calls["bad"] >= 3, 10, what="three restarts of the failing part")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.Event().wait()            # until run() cancels it

    status = asyncio.run(asyncio.wait_for(daemon.run([("bad", bad), ("once", once), ("stopper", stopper)]), 30))
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "board")
    assert status == 0
    assert calls["once"] == 1 and calls["bad"] >= 3
    assert "bad: internal error: KeyError at test_board_daemon.py:" in text
    assert "once: finished" in text and text.endswith("stopped")
    assert PASSWORD not in text


def test_board_config_defaults_to_the_environment_then_etc(monkeypatch):
    monkeypatch.setenv("MTA_LITE_CONFIG", "/srv/box.toml")
    args = daemon.parse_args(["--serial", "/dev/ttyGS0"])
    assert (args.config, args.serial, args.spool) == ("/srv/box.toml", "/dev/ttyGS0", None)
    monkeypatch.delenv("MTA_LITE_CONFIG")
    assert daemon.parse_args([]).config == "/etc/mta-lite/mta-lite.toml"
    assert daemon.parse_args(["--config", "a.toml", "--spool", "/s"]).spool == "/s"


def test_board_without_serial_runs_no_console(monkeypatch, tmp_path, caplog):
    ran = []

    async def fake_run(parts):
        ran.append([name for name, _ in parts])
        return 0

    monkeypatch.setattr(daemon, "run", fake_run)
    monkeypatch.setattr(daemon, "setup_logging", lambda cfg: None)
    caplog.set_level(logging.INFO, logger="board")
    assert daemon.main(["--config", str(tmp_path / "missing.toml")]) == 0
    assert daemon.main(["--config", str(tmp_path / "missing.toml"), "--serial", "/dev/null"]) == 0
    assert ran == [["clock"], ["console", "clock"]]
    assert "file not found" in caplog.text and "the console is off" in caplog.text
