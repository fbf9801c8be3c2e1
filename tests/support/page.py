"""page — the status page's test peers: its real process, a busy status to show, headless Chromium.

busy_spool(spool, board_run, now) writes what a busy box's files hold: a running relay (this
test process's pid) with deferred mail, an account whose login was refused, one throttled,
a day of history, recent deliveries with a `<script>` sender and a smarthost reply holding
HTML, postscreen under stress, and the board's clock report. PageProcess runs
`mta-lite-page serve` as a child (optionally started as root with --user) and stops it by
its pid. chromium() runs Debian's chromium headless (--dump-dom, --screenshot).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from mta_lite import history
from mta_lite.queue.spool import new_queue_id
from tests.support.peers import free_port
from tests.support.waiting import wait_until

HOSTILE_SENDER = "<script>alert(1)</script>@lan.test"
HOSTILE_REPLY = '550 5.7.1 <b>blocked</b> <img src=x onerror=alert(2)> see <a href="http://evil.test">here</a>'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def busy_spool(spool: str, board_run: str, now: float) -> None:
    """A busy box's status, history and clock report (see the module docstring)."""
    for name in ("public", "deferred", "incoming", "active", "hold", "corrupt"):
        os.makedirs(os.path.join(spool, name), exist_ok=True)
    oldest = now - 2 * 3600 - 5 * 60
    for i, arrival in enumerate((oldest, now - 600, now - 60)):
        open(os.path.join(spool, "deferred", new_queue_id(now=arrival)), "w").close()
    status = _status(now, oldest)
    with open(os.path.join(spool, "public", "status.json"), "w") as handle:
        json.dump(status, handle)
    book = history.Book()
    for hour in range(30 * 24, -1, -1):
        t = now - hour * 3600
        history.add(book, "relayed", 3 + (hour * 7) % 11, t)
        history.add(book, "deferred", (hour % 5 == 0) * 2, t)
        history.add(book, "bounced", int(hour % 13 == 0), t)
        history.add(book, "rejected", (hour * 3) % 4, t)
    with open(history.history_path(spool), "wb") as handle:
        handle.write(history.to_json(book))
    os.makedirs(board_run, exist_ok=True)
    with open(os.path.join(board_run, "clock.json"), "w") as handle:
        json.dump({"checked": now - 40, "server": "pool.ntp.org", "offset_s": 0.0123, "error": "",
                   "alert": False, "alert_after_s": 10.0}, handle)


def _status(now: float, oldest: float) -> dict:
    account = {"sent": 120, "deferred": 3, "bounced": 1, "last_error": "", "paused_until": None,
               "throttled_until": None, "unreachable_since": None, "auth_failed_since": None,
               "sent_last_hour": 12, "sent_last_day": 96, "max_per_hour": 100, "max_per_day": 500}
    relays = {
        "isp": {**account, "state": "ok"},
        "office365": {**account, "state": "auth_failed", "auth_failed_since": now - 3 * 3600,
                      "paused_until": now + 1800, "sent": 0, "deferred": 3,
                      "last_error": "535 5.7.8 Error: authentication failed"},
        "newsletter": {**account, "state": "throttled", "throttled_until": now + 900, "sent_last_hour": 100},
    }
    recent = [
        {"time": now - 30, "queue_id": "19A2B3C4D5E6F001", "sender": "scanner@lan.test",
         "recipient_domain": "example.com", "status": "sent", "reply": "250 2.0.0 Ok: queued as 4XyZ",
         "relay": "smtp.isp.test[192.0.2.1]:587"},
        {"time": now - 90, "queue_id": "19A2B3C4D5E6F002", "sender": HOSTILE_SENDER,
         "recipient_domain": "example.org", "status": "bounced", "reply": HOSTILE_REPLY,
         "relay": "smtp.isp.test[192.0.2.1]:587"},
        {"time": now - 400, "queue_id": "19A2B3C4D5E6F003", "sender": "printer@lan.test",
         "recipient_domain": "example.net", "status": "deferred",
         "reply": "451 4.7.0 delivery temporarily suspended: the smarthost refused the login of account office365",
         "relay": "none"},
    ]
    smtpd = {"connections": 311, "accepted": 290, "rejects": 14, "refused": 0, "errors": 0, "pid": os.getpid(),
             "postscreen_passed": 40, "postscreen_cache_hits": 250, "postscreen_pregreet": 6,
             "postscreen_dnsbl": 3, "postscreen_dropped": 9, "postscreen_enforced": 0,
             "postscreen_allowlisted": 2, "postscreen_denylisted": 1, "postscreen_stress": 4}
    return {"pid": os.getpid(), "started": now - 3 * 86400, "written": now, "running": True,
            "queue": {"incoming": 0, "active": 0, "deferred": 3, "hold": 0, "corrupt": 0},
            "relays": relays, "qmgr": {}, "smtpd": smtpd, "config": "3f9a0c1d2e4b",
            "recent": recent, "disk": {"free_bytes": 12_400_000_000, "total_bytes": 15_500_000_000},
            "oldest": oldest, "clock": {"state": "ok"}}


class PageProcess:
    """`mta-lite-page serve` on 127.0.0.1:free port; stop() ends it by its pid."""

    def __init__(self, spool: str, board_run: str | None, *, user: str | None = None,
                 python: str = sys.executable, env: dict | None = None, log_path: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--listen", f"127.0.0.1:{self.port}", "--spool", spool]
        args += ["--board-run", board_run] if board_run else []
        args += ["--user", user] if user else []
        self.log_path = log_path or os.path.join(os.path.dirname(spool.rstrip("/")), "page.log")
        self.command = [python, "-m", "mta_lite_board.page.cli", *args]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PageProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=log, env=self.env)
        wait_until(lambda: self.proc.poll() is not None or _answers(self.port), 30, what="the status page")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mta-lite-page exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "PageProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def get(url: str, path: str, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """One plain GET with the standard library; (status, headers, body)."""
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def chromium(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Debian's chromium, headless, sandbox off (we are root in a container), no network use
    but the page: the flags turn off its background requests."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", "--user-data-dir=" + _profile()]
    started = time.monotonic()
    result = subprocess.run([CHROMIUM, *flags, *args], capture_output=True, timeout=timeout)
    result.elapsed = time.monotonic() - started
    return result


def _profile() -> str:
    import tempfile
    return tempfile.mkdtemp(prefix="mta-lite-chromium-")
