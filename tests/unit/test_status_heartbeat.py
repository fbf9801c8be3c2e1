"""The status file is rewritten when it changed, else only as a heartbeat (SD-card writes)."""

from mta_lite.process.qmgr_service import StatusHeartbeat
from mta_lite.status import STALE_AFTER_S


def test_first_snapshot_is_written_at_once():
    assert StatusHeartbeat().due("{}", now=0.0)


def test_unchanged_snapshot_waits_for_the_heartbeat():
    beat = StatusHeartbeat(heartbeat_s=10.0)
    beat.wrote("{a}", now=100.0)
    assert not beat.due("{a}", now=102.0) and not beat.due("{a}", now=109.9)
    assert beat.due("{a}", now=110.0)


def test_changed_snapshot_is_written_at_once():
    beat = StatusHeartbeat(heartbeat_s=10.0)
    beat.wrote("{a}", now=100.0)
    assert beat.due("{b}", now=100.5)


def test_heartbeat_leaves_readers_room_before_they_call_the_daemon_stopped():
    # Checked every 2 s: a heartbeat of 10 s is written at most 12 s after the last one.
    assert StatusHeartbeat().heartbeat_s + 2.0 < STALE_AFTER_S / 2
