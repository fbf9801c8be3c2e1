"""The board's clock check against a real NTP server: chrony on loopback, in step and skewed by
an hour under faketime; the report the status page reads, and the alert the LED shows.

Peers: chronyd (tests/support/ntp.py), the real `mta-lite-board` daemon for the end-to-end case.
"""

import asyncio
import json
import os
import stat
import subprocess
import sys

import pytest
import tomli_w

from mta_lite_board.clock import OFFSET_ALERT_S, REPORT_NAME, ClockCheck, read_alert, write_report
from tests.support.ntp import ChronyServer, chrony_available
from tests.support.peers import free_port
from tests.support.relay import REPO, relay_config
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not chrony_available(), reason="chrony or faketime not installed "
                                 "(tools/install-test-deps.sh installs them)")]

REPORT_KEYS = {"checked", "server", "offset_s", "error", "alert", "alert_after_s"}


def check(directory, port: int, servers=("127.0.0.1",), **kwargs) -> dict:
    checker = ClockCheck(servers, str(directory), port=port, **kwargs)
    report = asyncio.run(checker.check_once())
    path = write_report(str(directory), report)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_clock_check_in_step_with_the_server_reports_a_small_offset_no_alert(tmp_path):
    with ChronyServer(tmp_path / "chrony") as server:
        report = check(tmp_path / "run", server.port)
    assert set(report) == REPORT_KEYS
    assert report["server"] == "127.0.0.1" and report["error"] == ""
    assert abs(report["offset_s"]) < 0.5 and report["alert"] is False
    assert report["alert_after_s"] == OFFSET_ALERT_S


def test_clock_check_server_an_hour_ahead_raises_the_alert(tmp_path):
    with ChronyServer(tmp_path / "chrony", skew_s=3600) as server:
        report = check(tmp_path / "run", server.port)
    assert 3590 < report["offset_s"] < 3610 and report["alert"] is True
    assert read_alert(str(tmp_path / "run" / REPORT_NAME)) is True


def test_clock_check_report_is_readable_by_other_users(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    with ChronyServer(tmp_path / "chrony") as server:
        check(run, server.port)
    assert stat.S_IMODE(os.stat(run / REPORT_NAME).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(run).st_mode) & 0o111 == 0o111       # traversable


def test_clock_check_without_an_answer_reports_the_error_then_alerts_after_long(tmp_path):
    silent_port = free_port()                       # nothing answers there
    ticks = iter([0.0, 10.0, 0.0, 7200.0])
    report = check(tmp_path / "run", silent_port, monotonic=lambda: next(ticks))
    assert report["server"] == "" and report["offset_s"] is None and report["alert"] is False
    assert report["error"].startswith("no NTP server answered (127.0.0.1: ")
    report = check(tmp_path / "run", silent_port, monotonic=lambda: next(ticks))
    assert report["alert"] is True                  # two hours without an answer


def test_clock_check_unknown_name_is_an_error_in_words(tmp_path):
    report = check(tmp_path / "run", 123, servers=("no-such-host.invalid",))
    assert report["error"] == "no NTP server answered (no-such-host.invalid: name not resolved)"


def test_board_daemon_writes_the_clock_report_from_the_configs_servers(tmp_path):
    config = {**relay_config(9, spool_dir=str(tmp_path / "spool"), admin_address="admin@lan.test"),
              "board": {"ntp_servers": ["127.0.0.1"]}}
    config_path = tmp_path / "mta-lite.toml"
    config_path.write_bytes(tomli_w.dumps(config).encode())
    run = tmp_path / "run"
    with ChronyServer(tmp_path / "chrony", skew_s=3600) as server:
        log = open(tmp_path / "board.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "mta_lite_board.daemon", "--config", str(config_path),
                                 "--no-leds", "--runtime-dir", str(run), "--ntp-port", str(server.port)],
                                stdout=log, stderr=log, cwd=REPO, start_new_session=True)
        try:
            wait_until(lambda: (run / REPORT_NAME).exists(), 30, what="clock.json")
            report = json.loads((run / REPORT_NAME).read_text())
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    assert proc.returncode == 0
    assert report["server"] == "127.0.0.1" and report["alert"] is True
    assert "clock check: 127.0.0.1 says the clock is off by +3600" in (tmp_path / "board.log").read_text()
