"""recorder — a smarthost that records when each message arrived: aiosmtpd in its own process.

DeliveryRecorder runs `python -m aiosmtpd -n -l 127.0.0.1:PORT -c tests.support.recorder.TimeRecorder
FILE`; TimeRecorder appends one JSON line per message to FILE, written when the end of DATA
has been received (before the 250 goes back): {"t": time.time(), "from": ..., "to": [...],
"subject": ...}. Microsecond timestamps from the same clock as the tests, unlike dump-file
modification times (kernel ticks). No TLS, no AUTH.
Guarantees: listens on 127.0.0.1 only; start() returns once the recorder answers 220;
stop() ends the process by PID and reaps it.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.peers import free_port, smtp_probe
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


class TimeRecorder:
    """aiosmtpd handler (loaded by aiosmtpd's command line)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_cli(cls, parser, *args):
        return cls(args[0])

    async def handle_DATA(self, server, session, envelope):
        now = time.time()
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(envelope.content)
        record = {"t": now, "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                  "subject": str(headers.get("Subject", ""))}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return "250 2.0.0 Ok: recorded"


class DeliveryRecorder:
    def __init__(self, workdir: os.PathLike | str) -> None:
        self.workdir = Path(workdir)
        self.file = self.workdir / "deliveries.jsonl"
        self.port = 0
        self._proc: subprocess.Popen | None = None

    def start(self) -> "DeliveryRecorder":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(self.workdir / "recorder.log", "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}",
                 "-c", "tests.support.recorder.TimeRecorder", str(self.file)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        wait_until(lambda: self._proc.poll() is not None or smtp_probe(self.port), 20,
                   f"the recorder on port {self.port}")
        if self._proc.poll() is not None:
            raise RuntimeError((self.workdir / "recorder.log").read_text(errors="replace"))
        return self

    def records(self) -> list[dict]:
        try:
            lines = self.file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def times(self) -> list[float]:
        return [r["t"] for r in self.records()]

    def wait_for(self, n: int, timeout: float = 60.0) -> list[dict]:
        return wait_until(lambda: len(r := self.records()) >= n and r, timeout,
                          f"{n} messages at the recorder on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def __enter__(self) -> "DeliveryRecorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
