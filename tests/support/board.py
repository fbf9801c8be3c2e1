"""boardpeer — the board daemon and its serial console as the tests meet them.

    pty = PtyPair(directory); pty.start()          socat joining two ptys: ttyA the box's, ttyB the laptop's
    board = Board(directory, pty.a, "--log-file", path); board.start()
    client = RawClient(pty.b, seen); client.hello(); client.command(b"STATUS")

Peers: socat (`socat -d -d pty,raw,echo=0,link=DIR/ttyA pty,raw,echo=0,link=DIR/ttyB`, started
by start() and terminated by stop()), the real `mta-lite-board` daemon as a subprocess on
ttyA (SIGTERM in stop(), SIGKILL if it does not go), and pyserial on ttyB. Everything read
from the port is kept in `seen`, for the secret scan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import serial

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class PtyPair:
    """socat joining two ptys; ttyA for the box, ttyB for the laptop."""

    def __init__(self, directory: Path) -> None:
        self.a, self.b = str(directory / "ttyA"), str(directory / "ttyB")
        self.log_path = directory / "socat.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["socat", "-d", "-d", f"pty,raw,echo=0,link={self.a}",
                                          f"pty,raw,echo=0,link={self.b}"], stdout=log, stderr=log)
        wait_until(lambda: os.path.exists(self.a) and os.path.exists(self.b), 10, what="socat's pty links")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class Board:
    """The real mta-lite-board daemon with its console on a pty."""

    def __init__(self, directory: Path, device: str, *extra: str, config: str | None = None,
                 spool: str | None = None) -> None:
        self.spool = spool or str(directory / "spool")
        self.config = config or str(directory / "mta-lite.toml")
        self.log_path = directory / "mta_lite_board.log"
        self.device = device
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "mta_lite_board.daemon", "--serial", self.device,
                                          "--config", self.config, "--spool", self.spool, "--no-clock", *self.extra],
                                         stdout=log, stderr=log, cwd=ROOT, start_new_session=True)
        wait_until(lambda: b"console: on " in self.log(), 10, what="the board daemon's console")

    def log(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class RawClient:
    """The laptop side with plain pyserial; keeps every byte it read for the secret scan."""

    def __init__(self, device: str, seen: list[bytes]) -> None:
        # write_timeout: a box that floods the line while we write would block socat and us.
        self.port = serial.serial_for_url(device, baudrate=115200, timeout=0.05, write_timeout=10)
        self.seen = seen
        self.buffer = b""

    def close(self) -> None:
        self.port.close()

    def read_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buffer:
            if time.monotonic() > deadline:
                return None
            chunk = self.port.read(4096)
            self.seen.append(chunk)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def hello(self, timeout: float = 10) -> list[bytes]:
        """HELLO until the box greets; every line read before the greeting."""
        deadline, before = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            self.port.write(b"\r\nHELLO\r\n")
            try_until = time.monotonic() + 0.5
            while (line := self.read_line(try_until)) is not None:
                if line.startswith(b"OK mta-lite console "):
                    return before
                before.append(line)
        raise TimeoutError("no greeting")

    def command(self, line: bytes, timeout: float = 10) -> list[bytes]:
        self.port.write(line + b"\r\n")
        replies, deadline = [], time.monotonic() + timeout
        while (reply := self.read_line(deadline)) is not None:
            if reply.startswith(b"OK mta-lite console "):
                continue                # a late answer to a repeated HELLO
            replies.append(reply)
            if reply.startswith((b"OK", b"ERR")):
                return replies
        raise TimeoutError(f"no reply to {line[:20]!r}")
