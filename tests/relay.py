"""relay — run the real `mta-lite serve` daemon as a child process for integration tests.

RelayProcess writes a TOML config into a work directory, starts the daemon with the same
Python as the tests, waits until the listener answers 220, and stops it with SIGTERM (or
SIGKILL for crash tests). Its stderr log is kept in the work directory for assertions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import tomli_w

PASSWORD = "Tr0ub4dor-zebra-7c1"     # distinctive: tests grep logs and files for it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


class RelayProcess:
    """The daemon under test. `config` is the TOML data; spool and listen are filled in."""

    def __init__(self, workdir: str, config: dict, python: str = sys.executable, env: dict | None = None) -> None:
        self.workdir = workdir
        self.python, self.env = python, env
        self.port = free_port()
        config = dict(config)
        config.setdefault("hostname", "relay.lan.test")
        config.setdefault("spool_dir", os.path.join(workdir, "spool"))
        config.setdefault("mynetworks", ["127.0.0.0/8"])
        config.setdefault("admin_address", "admin@lan.test")
        config.setdefault("listen", [{"address": f"127.0.0.1:{self.port}"}])
        # Tests run as root in work directories only root can enter: no user change here;
        # the privilege separation tests set the users and prepare their own directories.
        config.setdefault("master", {"smtpd_user": "", "qmgr_user": ""})
        self.config = config
        self.spool = config["spool_dir"]
        self.config_path = os.path.join(workdir, "mta-lite.toml")
        with open(self.config_path, "wb") as handle:
            tomli_w.dump(config, handle)
        self.log_path = os.path.join(workdir, "mta-lite.log")
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", self.config_path, *args],
                              input=stdin, capture_output=True, timeout=timeout)

    def start(self, timeout: float = 30.0) -> "RelayProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.python, "-m", "mta_lite.cli", "-c", self.config_path, "serve"],
                                     stdout=log, stderr=log, env=self.env)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or _banner(self.port), timeout, what="relay banner")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mta-lite exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def queue(self) -> list[dict]:
        result = self.cli("queue", "list", "--json")
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode())
        return json.loads(result.stdout)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
