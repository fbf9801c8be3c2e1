"""ntp — chrony as a real NTP server on loopback for the clock tests (TEST-PEERS.md "Time").

ChronyServer writes a config (`local stratum 8`, `allow 127.0.0.1`, `bindaddress 127.0.0.1`,
a free port, `cmdport 0`), starts `chronyd -f CONF -x -d` (-x: it never touches this
machine's clock) and returns once an NTP query answers. skew_s runs it under
`FAKETIME_DONT_RESET=1 faketime -f '+Ns'`: a server whose time is N seconds ahead.

Guarantees: it listens on 127.0.0.1 only; stop() ends chronyd by the PID in its pidfile (faketime
forks: the child is the server) and then the faketime parent, and waits until both are gone.
Never: a system service, a bare sleep (polls with a deadline), or a change to the system clock.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import ntplib

from tests.support.peers import free_port, pid_alive
from tests.support.waiting import wait_until

CHRONYD = "/usr/sbin/chronyd"


def chrony_available() -> bool:
    return os.path.exists(CHRONYD) and shutil.which("faketime") is not None


class ChronyServer:
    def __init__(self, workdir: os.PathLike | str, skew_s: float = 0.0) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)           # chronyd drops to its own user after binding
        self.skew_s = skew_s
        self.port = free_port()
        self.pidfile = self.dir / "chronyd.pid"
        self.log_path = self.dir / "chronyd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ChronyServer":
        conf = self.dir / "chrony.conf"
        conf.write_text(f"local stratum 8\nallow 127.0.0.1\nport {self.port}\nbindaddress 127.0.0.1\n"
                        f"cmdport 0\npidfile {self.pidfile}\n")
        argv = [CHRONYD, "-f", str(conf), "-x", "-d"]
        env = dict(os.environ)
        if self.skew_s:
            argv = ["faketime", "-f", f"{self.skew_s:+.0f}s", *argv]
            env["FAKETIME_DONT_RESET"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True)
        wait_until(self._answers, 15, f"chronyd on 127.0.0.1:{self.port}")
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"chronyd exited with {self.proc.returncode}: {self.log_path.read_text()}")
        try:
            ntplib.NTPClient().request("127.0.0.1", version=3, port=self.port, timeout=0.5)
        except (ntplib.NTPException, OSError):
            return False
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = [self.proc.pid]
        try:
            pids.insert(0, int(self.pidfile.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        wait_until(lambda: not any(pid_alive(p) for p in pids[:-1]), 10, "chronyd to exit")
        self.proc = None

    def __enter__(self) -> "ChronyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
