"""spawn — the master's children: fork one, learn why one died, decide when to start it again.

    Child                 one supervised process (smtpd or qmgr) and what the master knows of it
    fork_child()          fork; the child runs child.run() and never returns into the master
    Child.died(status)    record an exit: a config error (exit 78) with the reason the child
                          sent over its report pipe, a crash, or a stop the master asked for
    processes_record()    the children's states for spool/public/master.json (status, LEDs)

A child that cannot start because of its configuration (a password file gone, a TLS key
that does not load) writes one line naming file, key and problem to its report pipe and
exits 78 (EX_CONFIG). The master logs that line once per restart attempt, and status and
the alert LED show "config error" until the child runs again.
Guarantees: restarts back off from 1 s to 60 s, so a child that cannot start costs a line a
minute, not a loop; a stop the master asked for (a reload) restarts at once; the report
pipe carries at most MAX_REASON_BYTES and never a secret (config errors never hold one); a
child leaves the objects the master froze (gc.freeze()) frozen, so its collector never
writes to the pages it shares with the master.
Must never: let a child return into the master's loop, or block the master on a child.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("mta_lite.master")

# A child that dies is restarted after 1 s, then 2, 4 ... up to a minute; a child that
# stayed up for STABLE_AFTER_S starts again from 1 s.
RESTART_MIN_S, RESTART_MAX_S, STABLE_AFTER_S = 1.0, 60.0, 60.0
EX_CONFIG = 78
# One config error line; a longer one is cut (the log and the status show one line).
MAX_REASON_BYTES = 1000
STATE_RUNNING, STATE_RESTARTING, STATE_CONFIG_ERROR = "running", "restarting", "config_error"
# A child that failed with a config error counts as running again once it has stayed up
# this long: long enough to have loaded its config and keys, short enough for the LED.
CONFIG_OK_AFTER_S = 3.0


@dataclass
class Child:
    name: str
    run: Callable[[], int]          # runs in the forked child, returns its exit status
    pid: int = 0
    started: float = 0.0
    delay_s: float = RESTART_MIN_S
    restart_at: float | None = None
    replace: bool = False           # the master stopped it (reload): start again at once
    report_fd: int = -1             # read end of the pipe the child names its fatal error on
    state: str = STATE_RESTARTING
    reason: str = ""
    since: float = field(default_factory=time.time)
    restarts: int = 0

    def died(self, status: int) -> None:
        """Log the exit with its reason and schedule the restart."""
        reason = self._read_report()
        if self.replace:
            log.info("%s pid %d stopped for the reload; starting it again", self.name, self.pid)
            self.pid, self.restart_at, self.replace = 0, time.monotonic(), False
            return
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        if code == EX_CONFIG:
            self._set_state(STATE_CONFIG_ERROR, reason or "configuration error (see the lines above)")
            how += f" (config error: {self.reason})"
        else:
            self._set_state(STATE_RESTARTING, how)
        if time.monotonic() - self.started > STABLE_AFTER_S:
            self.delay_s = RESTART_MIN_S
        log.warning("warning: process %s pid %d %s; restarting in %.0fs", self.name, self.pid, how, self.delay_s)
        self.pid, self.restart_at, self.restarts = 0, time.monotonic() + self.delay_s, self.restarts + 1
        self.delay_s = min(self.delay_s * 2, RESTART_MAX_S)

    def settled(self) -> bool:
        """A child in config error that has now stayed up: mark it running; True if so."""
        if self.state == STATE_CONFIG_ERROR and self.pid and time.monotonic() - self.started > CONFIG_OK_AFTER_S:
            self._set_state(STATE_RUNNING, "")
            return True
        return False

    def _set_state(self, state: str, reason: str) -> None:
        if (state, reason) != (self.state, self.reason):
            self.since = time.time()
        self.state, self.reason = state, reason

    def _read_report(self) -> str:
        if self.report_fd < 0:
            return ""
        try:
            data = os.read(self.report_fd, MAX_REASON_BYTES)
        except BlockingIOError:
            data = b""
        finally:
            os.close(self.report_fd)
            self.report_fd = -1
        return data.decode("utf-8", "replace").strip().replace("\n", " ")

    def record(self) -> dict:
        return {"state": self.state, "pid": self.pid, "since": self.since,
                "reason": self.reason, "restarts": self.restarts}


def fork_child(child: Child, mask: set, others: list[Child]) -> None:
    """Start `child`; in the new process, run it and exit with its status."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    pid = os.fork()
    if pid == 0:
        _be_child(child, mask, others, read_fd, write_fd)
    os.close(write_fd)
    child.pid, child.started, child.restart_at, child.report_fd = pid, time.monotonic(), None, read_fd
    if child.state != STATE_CONFIG_ERROR:
        child._set_state(STATE_RUNNING, "")
    log.info("%s started, pid %d", child.name, pid)


def _be_child(child: Child, mask: set, others: list[Child], read_fd: int, write_fd: int) -> None:
    status = 70
    try:
        os.close(read_fd)
        for other in others:
            if other.report_fd >= 0:
                os.close(other.report_fd)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # SIGHUP ignored until the child's own handler is in place: a reload sent
            # during start-up must not kill it.
            signal.signal(sig, signal.SIG_IGN if sig == signal.SIGHUP else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # The master's objects stay in the collector's permanent generation (gc.freeze()):
        # modules, classes and functions that live as long as the process, and the master's
        # own few objects (a cycle among those is never freed here; it costs less). Thawed,
        # the child's first full collection would write to the header of every one of them
        # and so copy nearly all the pages it shares with the master (10 MiB more for the
        # relay after 10,000 messages, docs/benchmark.md "Memory").
        set_process_name(f"mta-{child.name}")
        REPORT.fd = write_fd
        status = child.run()
    except BaseException:       # the child must never return into the master's loop
        log.exception("%s: fatal error", child.name)
    finally:
        logging.shutdown()
        os._exit(status)


class _Report:
    """The child's end of its report pipe (one per process, set right after the fork)."""

    fd = -1

    def config_error(self, reason: str) -> int:
        """Tell the master why this child cannot run; returns the exit status to use."""
        log.error("fatal: %s", reason)
        if self.fd >= 0:
            try:
                os.write(self.fd, reason.encode("utf-8", "replace")[:MAX_REASON_BYTES])
            except OSError:
                pass        # the master is gone; the log line above still says it
        return EX_CONFIG


REPORT = _Report()


PR_SET_PDEATHSIG = 1


def die_with_master(master_pid: int) -> bool:
    """Have the kernel send SIGTERM to this child when the master dies (kill -9, OOM killer);
    False if the master is already gone. Without it an orphaned smtpd keeps the listening
    port and an orphaned qmgr the queue, so a restarted master could not bind, or would run
    a second queue manager. Called after the user switch, which clears the setting."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass    # not Linux: systemd's control group (or the admin) cleans up instead
    return os.getppid() == master_pid


def set_process_name(name: str) -> None:
    """Name the child in ps/top and /proc/PID/comm (Linux prctl PR_SET_NAME); best effort."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
def processes_record(master_pid: int, children: list[Child]) -> dict:
    return {"pid": master_pid, "written": time.time(),
            "processes": {child.name: child.record() for child in children}}
