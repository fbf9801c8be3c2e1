"""status.read_status: a damaged or hostile status file never crashes a reader and never
makes a dead relay look running."""

import json
import os

import pytest

from mta_lite.status import PID_LIMIT, STATUS_FILE, read_status, write_processes


@pytest.mark.parametrize("pid, written", [(-1, 0), ("1", 0), (2 ** 70, 0), (True, 0), (os.getpid(), "now")])
def test_read_status_with_bad_types_reports_not_running(tmp_path, pid, written):
    (tmp_path / "public").mkdir()
    (tmp_path / STATUS_FILE).write_text(json.dumps({"pid": pid, "written": written}))
    snapshot = read_status(str(tmp_path))
    assert snapshot.running is False


@pytest.fixture
def world_tmp():
    """A directory another user can reach (pytest's tmp_path is under a 0700 directory)."""
    import pathlib
    import shutil
    import tempfile
    path = pathlib.Path(tempfile.mkdtemp(prefix="mta-status-"))
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3.11"),
                    reason="needs root to switch to mta-test-user (tools/install-test-deps.sh)")
def test_read_status_as_other_user_keeps_queue_managers_count_for_unlistable_dir(world_tmp):
    """The board's user may not list active/: the count the queue manager wrote stands."""
    import subprocess
    tmp_path = world_tmp
    spool = tmp_path / "spool"
    (spool / "public").mkdir(parents=True)
    (spool / "active").mkdir(mode=0o700)
    (spool / "active" / "A1").write_bytes(b"")
    (spool / "deferred").mkdir(mode=0o755)
    (spool / "deferred" / "D1").write_bytes(b"")
    (spool / STATUS_FILE).write_text(json.dumps({"pid": 1, "written": 0, "queue": {"active": 7, "deferred": 9}}))
    for path in (tmp_path, spool, spool / "public", spool / STATUS_FILE):
        path.chmod(0o755 if path.is_dir() else 0o644)
    code = "from mta_lite.status import read_status; import json, sys; print(json.dumps(read_status(sys.argv[1]).queue))"
    result = subprocess.run(["setpriv", "--reuid=mta-test-user", "--regid=mta-test-user", "--clear-groups",
                             "/usr/bin/python3.11", "-c", code, str(spool)], capture_output=True, cwd="/",
                            env={"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))})
    assert result.returncode == 0, result.stderr.decode()
    queue = json.loads(result.stdout)
    assert queue["active"] == 7, "not listable: the queue manager's figure"
    assert queue["deferred"] == 1, "listable: the live count"


def test_read_status_shows_the_masters_processes_only_while_the_master_lives(tmp_path):
    (tmp_path / "public").mkdir()
    record = {"state": "config_error", "pid": 0, "since": 1.0, "reason": "a.toml: listen: bad key", "restarts": 2}
    write_processes(str(tmp_path), {"pid": os.getpid(), "processes": {"smtpd": record}})
    assert read_status(str(tmp_path)).processes == {"smtpd": record}
    write_processes(str(tmp_path), {"pid": PID_LIMIT - 1, "processes": {"smtpd": record}})     # gone
    assert read_status(str(tmp_path)).processes == {}


@pytest.mark.parametrize("text", ["", "{", "[]", '{"pid": "1", "processes": {}}', '{"pid": 1}',
                                  '{"pid": -1, "processes": {"smtpd": {}}}'])
def test_read_status_with_a_bad_processes_file_shows_none(tmp_path, text):
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "master.json").write_text(text)
    assert read_status(str(tmp_path)).processes == {}


def test_status_shows_a_clock_not_set_only_while_the_relay_runs():
    from mta_lite.status import StatusSnapshot, format_status
    clock = {"state": "not_set", "trusted_floor": 1796515200.0, "since": 7.0}
    running = format_status(StatusSnapshot(pid=1, running=True, clock=clock))
    assert "clock: not set (earlier than 2026-12-06 00:00:00 UTC): mail for smarthosts with TLS waits for it" in running
    assert "clock:" not in format_status(StatusSnapshot(running=False, clock=clock))
    assert "clock:" not in format_status(StatusSnapshot(pid=1, running=True, clock={"state": "ok"}))
