"""The subprocess edge of the stick reader (board.mtools.MtoolsRunner): bounded output, a
deadline that holds against a child that ignores SIGTERM or leaves a process behind that holds
its pipes, and the exit status passed on.

Peers: coreutils and sh stand in for an mtools command that misbehaves (endless output, a
hang); the runner treats every program alike. The fixed environment is checked with `env`.
"""

from __future__ import annotations

import os

import pytest

from mta_lite_board.mtools import MAX_STDERR_BYTES, MTOOLS_ENV, MtoolsRunner, StickReadError, StickTimeoutError
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
TIMEOUT_S = 1.0


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_runner_endless_output_read_to_limit_and_killed():
    done = MtoolsRunner(TIMEOUT_S)(["yes"], 1000)
    assert done.overflow and len(done.stdout) == 1000 and done.returncode == -9


def test_runner_output_within_limit_complete_with_status():
    done = MtoolsRunner(TIMEOUT_S)(["sh", "-c", "printf abc; printf oops >&2; exit 3"], 4)
    assert (done.stdout, done.stderr, done.returncode, done.overflow) == (b"abc", b"oops", 3, False)


def test_runner_output_of_exactly_limit_is_overflow():
    assert MtoolsRunner(TIMEOUT_S)(["printf", "abcd"], 4).overflow


def test_runner_stdin_fed_and_closed():
    done = MtoolsRunner(TIMEOUT_S)(["cat"], 100, b"RESULT\r\n")
    assert done.stdout == b"RESULT\r\n" and done.returncode == 0


def test_runner_stderr_bounded_and_drained():
    done = MtoolsRunner(5.0)(["sh", "-c", "head -c 200000 /dev/zero >&2; echo done"], 100)
    assert len(done.stderr) == MAX_STDERR_BYTES and done.stdout == b"done\n" and done.returncode == 0


def test_runner_child_ignoring_sigterm_killed_at_deadline():
    # Unkilled, the child would end by itself (status 0, no error) after 60 s.
    with pytest.raises(StickTimeoutError) as caught:
        MtoolsRunner(TIMEOUT_S)(["sh", "-c", "trap '' TERM; exec sleep 60"], 100)
    assert "sh did not finish within 1 s and was killed" in str(caught.value)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, StickReadError)


def test_runner_leftover_process_holding_pipes_killed_at_deadline(tmp_path):
    pidfile = tmp_path / "pid"
    with pytest.raises(StickTimeoutError):
        MtoolsRunner(TIMEOUT_S)(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; exit 0"], 100)
    pid = int(pidfile.read_text())
    wait_until(lambda: not pid_alive(pid), 5, what="the process group killed, not only the child")


def test_runner_missing_program_read_error():
    with pytest.raises(StickReadError) as caught:
        MtoolsRunner(TIMEOUT_S)(["mtools-no-such-program"], 100)
    assert "cannot run mtools-no-such-program" in str(caught.value)


def test_runner_environment_fixed():
    os.environ["MTOOLSRC"] = "/tmp/evil-mtoolsrc"
    try:
        done = MtoolsRunner(TIMEOUT_S)(["env"], 10000)
    finally:
        del os.environ["MTOOLSRC"]
    assert dict(line.split("=", 1) for line in done.stdout.decode().splitlines()) == MTOOLS_ENV


def test_runner_large_stdin_to_a_child_that_never_reads_ends_at_deadline():
    """A report or a config is more than a pipe holds: feeding it must not block past the
    deadline when the child (mtools stuck in open()) never reads."""
    # Blocked on the full pipe, the feed would end only with the child (60 s, a broken pipe).
    with pytest.raises(StickTimeoutError):
        MtoolsRunner(TIMEOUT_S)(["sleep", "60"], 100, b"x" * (1024 * 1024))


def test_runner_large_stdin_fed_completely():
    data = bytes(range(256)) * 1024
    done = MtoolsRunner(10.0)(["cat"], len(data) + 1, data)
    assert done.stdout == data and done.returncode == 0 and not done.overflow
