"""command — run one helper program with a deadline, bounded output and a way to stop it.

    done = run_command(["mdir", "-i", dev, "::/"], timeout_s=30, limit_bytes=65537)
    done = run_command(argv, timeout_s=120, limit_bytes=1 << 20, on_line=print, children=kids)
    kids.cancel()           # from another thread: kill what is running, refuse new runs

Every helper the board runs goes through here: mtools on a stick (board/mtools.py) and the
relay's own command line (board/relaycli.py). The child runs without a shell, in a session of
its own, with the environment given; its standard input is fed within the deadline (a child
that never reads cannot block us), its standard output is read up to `limit_bytes` and, with
`on_line`, handed over line by line as it arrives.

Guarantees: no child outlives its deadline (SIGKILL to its whole process group: mtools
ignores SIGTERM while blocked in open(), and a child's own children may hold the pipes);
no more than `limit_bytes` of standard output and `max_stderr` bytes of standard error are
ever held; a cancelled Children kills what it runs at once and starts nothing more.
Must never: run a shell, read without a bound, or wait without a deadline.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from mta_lite.errors import MtaLiteError

# Only the first lines of a helper's complaint are ever shown; the rest is drained and dropped.
MAX_STDERR_BYTES = 4096
READ_CHUNK_BYTES = 16 * 1024
# A pipe takes 64 KiB on Linux; smaller writes keep each select() round short.
WRITE_CHUNK_BYTES = 16 * 1024
# After SIGKILL a process stuck in the kernel (a USB device that stopped answering) may not
# die at once; we stop waiting for it after this long and leave it to systemd's cgroup kill.
KILL_WAIT_S = 5.0


class CommandError(MtaLiteError, OSError):
    """The program could not be started at all (missing, not executable), or the runner was
    cancelled before it started."""


@dataclass(frozen=True)
class Finished:
    returncode: int | None      # None: still running at the deadline, killed (timed_out)
    stdout: bytes               # at most limit_bytes
    stderr: bytes               # at most max_stderr
    overflow: bool              # stdout reached limit_bytes; the child was killed there
    cancelled: bool = False     # Children.cancel() killed it

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


class Children:
    """The children one user of the runner has running, so that another thread can stop them
    (a console whose port went away, a daemon that stops)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            running = list(self._running)
        for proc in running:
            _killpg(proc)

    def reset(self) -> None:
        """Allow new runs again (a new console session)."""
        with self._lock:
            self.cancelled = False

    def _add(self, proc: subprocess.Popen) -> bool:
        with self._lock:
            if self.cancelled:
                return False
            self._running.add(proc)
            return True

    def _remove(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(proc)


def run_command(argv: Sequence[str], *, timeout_s: float, limit_bytes: int, stdin: bytes = b"",
                env: Mapping[str, str] | None = None, on_line: Callable[[str], None] | None = None,
                children: Children | None = None, max_stderr: int = MAX_STDERR_BYTES) -> Finished:
    """Run `argv` (see the module docstring); CommandError if it cannot be started."""
    deadline = time.monotonic() + timeout_s
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(env) if env is not None else None,
                                start_new_session=True)
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if children is not None and not children._add(proc):
        _kill(proc)
        _close(proc)
        raise CommandError(f"{argv[0]} not run: stopping")
    try:
        lines = _Lines(on_line)
        out, err, ended = _exchange(proc, stdin, max(1, limit_bytes), max_stderr, deadline, lines)
        if ended == "eof":
            lines.flush()
        else:
            _kill(proc)
        returncode = _wait(proc, deadline) if ended != "deadline" else None
    finally:
        _kill(proc)
        _close(proc)
        if children is not None:
            children._remove(proc)
    cancelled = children is not None and children.cancelled
    return Finished(returncode, out, err, ended == "overflow", cancelled)


class _Lines:
    """Cuts standard output into lines for on_line, as it arrives."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line, self.partial = on_line, b""

    def add(self, chunk: bytes) -> None:
        if self.on_line is None:
            return
        self.partial += chunk
        *complete, self.partial = self.partial.split(b"\n")
        for line in complete:
            self.on_line(line.rstrip(b"\r").decode("utf-8", "replace"))

    def flush(self) -> None:
        if self.on_line is not None and self.partial:
            self.on_line(self.partial.rstrip(b"\r").decode("utf-8", "replace"))
        self.partial = b""


def _exchange(proc: subprocess.Popen, stdin: bytes, limit_bytes: int, max_stderr: int, deadline: float,
              lines: _Lines) -> tuple[bytes, bytes, str]:
    """Feed stdin, read stdout up to limit_bytes and stderr up to max_stderr, until both end
    ("eof"), the limit is reached ("overflow") or the deadline passes ("deadline")."""
    out, err = bytearray(), bytearray()
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "out")
        selector.register(proc.stderr, selectors.EVENT_READ, "err")
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE, "in")
        else:
            proc.stdin.close()
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(out), bytes(err), "deadline"
            for key, _ in selector.select(remaining):
                if key.data == "in":
                    pending = _feed(proc, selector, pending)
                    continue
                want = limit_bytes - len(out) if key.data == "out" else READ_CHUNK_BYTES
                chunk = os.read(key.fd, min(READ_CHUNK_BYTES, want))
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data == "out":
                    out += chunk
                    lines.add(chunk)
                    if len(out) >= limit_bytes:
                        return bytes(out), bytes(err), "overflow"
                else:       # keep draining stderr so the child never blocks on it
                    err += chunk[:max_stderr - len(err)]
    return bytes(out), bytes(err), "eof"


def _feed(proc: subprocess.Popen, selector: selectors.BaseSelector, pending: memoryview) -> memoryview:
    try:
        written = os.write(proc.stdin.fileno(), pending[:WRITE_CHUNK_BYTES])
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        written = len(pending)      # the child is gone or stopped reading; its exit status says why
    pending = pending[written:]
    if not pending:
        selector.unregister(proc.stdin)
        proc.stdin.close()
    return pending


def _wait(proc: subprocess.Popen, deadline: float) -> int | None:
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _killpg(proc: subprocess.Popen) -> None:
    """SIGKILL to the child's process group, only while the child is unreaped (alive or a
    zombie): its pid, and so its process group id, cannot have been reused by then."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill(proc: subprocess.Popen) -> None:
    _killpg(proc)
    if proc.returncode is None:
        try:
            proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            pass


def _close(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass            # stdin: a last buffered write to a child that is gone
