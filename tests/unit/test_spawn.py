"""spawn.Child: how the master records a child's exit, and when it starts it again.

Real processes: each test forks a child that exits the way a smtpd or qmgr would, and the
exit status and report pipe reach Child.died() as they do in the master.
"""

import gc
import logging
import os
import signal

import pytest

from mta_lite.process import spawn
from mta_lite.process.spawn import Child


def run_child(child: Child, body) -> int:
    """Fork `body` as child `child` (report pipe and all), wait for it, return its status."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    child.run = body
    spawn.fork_child(child, mask, [])
    _, status = os.waitpid(child.pid, 0)
    return status


def test_child_config_error_reason_reaches_state_and_log(caplog):
    child = Child("qmgr", run=lambda: 0)
    caplog.set_level(logging.INFO, logger="mta_lite.master")
    reason = "/etc/mta-lite/mta-lite.toml: relays.isp.password_file: file not found: /etc/mta-lite/isp.pw"
    status = run_child(child, lambda: spawn.REPORT.config_error(reason))
    child.died(status)
    assert (child.state, child.reason, child.pid) == (spawn.STATE_CONFIG_ERROR, reason, 0)
    assert f"exit status 78 (config error: {reason}); restarting in 1s" in caplog.text
    assert child.record()["state"] == "config_error" and child.restarts == 1


def test_child_restarts_back_off_to_a_minute_and_keep_the_reason():
    child = Child("smtpd", run=lambda: 0)
    delays = []
    for _ in range(8):
        child.died(run_child(child, lambda: spawn.REPORT.config_error("bad key")))
        delays.append(child.delay_s)
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert child.reason == "bad key"


def test_child_stopped_for_a_reload_starts_again_at_once_without_backoff(caplog):
    child = Child("qmgr", run=lambda: 0)
    caplog.set_level(logging.INFO, logger="mta_lite.master")
    child.replace = True
    status = run_child(child, lambda: 0)
    child.died(status)
    assert child.restart_at is not None and child.delay_s == spawn.RESTART_MIN_S and not child.replace
    assert "stopped for the reload" in caplog.text and "warning" not in caplog.text


def test_child_crash_is_restarting_with_its_signal():
    child = Child("smtpd", run=lambda: 0)
    child.died(run_child(child, lambda: os.kill(os.getpid(), signal.SIGKILL)))
    assert child.state == spawn.STATE_RESTARTING and child.reason == "killed by signal 9"


def test_child_config_error_clears_once_it_stays_up(monkeypatch):
    child = Child("smtpd", run=lambda: 0)
    child.died(run_child(child, lambda: spawn.REPORT.config_error("bad key")))
    child.pid, child.started = 12345, 100.0
    monkeypatch.setattr(spawn.time, "monotonic", lambda: 100.0 + spawn.CONFIG_OK_AFTER_S / 2)
    assert not child.settled() and child.state == spawn.STATE_CONFIG_ERROR
    monkeypatch.setattr(spawn.time, "monotonic", lambda: 100.0 + spawn.CONFIG_OK_AFTER_S + 1)
    assert child.settled() and child.state == spawn.STATE_RUNNING and child.reason == ""


def test_report_pipe_caps_the_reason():
    child = Child("smtpd", run=lambda: 0)
    child.died(run_child(child, lambda: spawn.REPORT.config_error("x" * 5000)))
    assert len(child.reason) == spawn.MAX_REASON_BYTES


@pytest.mark.parametrize("exit_status", [0, 1, 71])
def test_child_without_report_has_no_config_error(exit_status):
    child = Child("qmgr", run=lambda: 0)
    child.died(run_child(child, lambda: exit_status))
    assert child.state == spawn.STATE_RESTARTING and child.reason == f"exit status {exit_status}"


def _private_dirty_kib() -> int:
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise AssertionError("no Private_Dirty line")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux's smaps_rollup")
def test_child_collection_leaves_the_pages_shared_with_the_master_shared():
    # What the master preloaded and froze: 300,000 containers, about 30 MiB. A child that
    # thawed them would copy nearly every one of those pages at its first full collection.
    preloaded = [[number] for number in range(300_000)]
    gc.collect()
    gc.freeze()
    try:
        def body() -> int:
            before = _private_dirty_kib()
            gc.collect()
            return min((_private_dirty_kib() - before) // 1024, 100)     # MiB copied, as the exit status
        copied_mib = os.waitstatus_to_exitcode(run_child(Child("qmgr", run=lambda: 0), body))
    finally:
        gc.unfreeze()
    assert len(preloaded) == 300_000
    assert copied_mib < 3, f"a full collection in the child copied {copied_mib} MiB of the master's pages"
