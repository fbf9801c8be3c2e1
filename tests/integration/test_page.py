"""The status page as its own process, seen by real clients: Debian's headless Chromium, an
HTTP client, raw sockets (slow and flooding clients), and the real relay beside it.

Peers: `mta-lite-page serve` (tests/support/page.py PageProcess), chromium --headless
(--screenshot, --dump-dom), the real daemon (tests/support/relay.py RelayProcess) and
Postfix's smtp-sink as its smarthost. MTA_LITE_UPDATE_SCREENSHOT=1 also copies the busy
page's screenshot to docs/status-page.png (the README shows it).
"""

import json
import os
import pathlib
import pwd
import shutil
import smtplib
import socket
import subprocess
import time

import jsonschema
import pytest

from mta_lite_board.page import server as page_server
from tests.support.page import CHROMIUM, HOSTILE_REPLY, HOSTILE_SENDER, PageProcess, busy_spool, chromium, get
from tests.support.relay import relay_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium missing (tools/install-test-deps.sh)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def busy_page(tmp_path):
    busy_spool(str(tmp_path / "spool"), str(tmp_path / "run"), time.time())
    with PageProcess(str(tmp_path / "spool"), str(tmp_path / "run")) as page:
        yield page


@needs_chromium
def test_busy_status_in_a_real_browser_reads_right(busy_page, tmp_path):
    shot = tmp_path / "status-page.png"
    result = chromium("--window-size=1000,1900", f"--screenshot={shot}", busy_page.url + "/")
    assert result.returncode == 0, result.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 50_000      # a drawn page, not a blank one
    if os.environ.get("MTA_LITE_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / "docs" / "status-page.png")
    dom = chromium("--dump-dom", busy_page.url + "/").stdout.decode()
    text = " ".join(dom.split())
    for words in ("mta-lite relay: <span class=\"ok\">running</span>", "3 message(s) waiting; the oldest arrived 2 h 5 min ago",
                  "a smarthost refused an account's login: fix its username or password", "login refused since",
                  "throttled until", "12 of 100", "4 connection(s) arrived while the listener was under stress",
                  "12.4 GB of 15.5 GB", "+0.012 s against pool.ntp.org", "3f9a0c1d2e4b"):
        assert words in text, words
    assert dom.count("<svg") >= 2 and dom.count("<rect") > 24


@needs_chromium
def test_hostile_sender_and_smarthost_reply_are_shown_as_text(busy_page):
    dom = chromium("--dump-dom", busy_page.url + "/").stdout.decode()
    # The browser built no element from them: its DOM holds them as text, escaped again.
    assert "<script" not in dom and "<img" not in dom and "<b>blocked" not in dom and "<a " not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@lan.test" in dom
    assert "&lt;b&gt;blocked&lt;/b&gt; &lt;img src=x onerror=alert(2)&gt;" in dom
    status, headers, body = get(busy_page.url, "/status.json")
    data = json.loads(body)
    assert {r["sender"] for r in data["recent"]} >= {HOSTILE_SENDER} and HOSTILE_REPLY in {r["reply"] for r in data["recent"]}


def test_status_json_matches_the_schema_with_its_headers(busy_page):
    status, headers, body = get(busy_page.url, "/status.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff" and "default-src 'none'" in headers["content-security-policy"]
    data = json.loads(body)
    jsonschema.validate(data, SCHEMA)
    assert data["mail"]["waiting"] == 3 and data["accounts"][1]["state"] == "auth_failed"


def raw(port: int, request: bytes, timeout: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"404"),
    (b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", b"404"),
    (b"GET /status.json HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", b"400"),      # TLS to a plain port
    (b"HEAD / HTTP/1.1\r\n\r\n", b"200"),
])
def test_anything_but_the_routes_is_refused(busy_page, request_bytes, status):
    answer = raw(busy_page.port, request_bytes)
    assert answer.split(b" ", 2)[1] == status
    if request_bytes.startswith(b"HEAD"):
        assert answer.endswith(b"\r\n\r\n")         # the head only


@pytest.fixture
def relay_with_page(tmp_path, sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port, board={"http": "127.0.0.1:0"}))
    page = PageProcess(relay.spool, str(tmp_path / "run")).start()
    yield relay, page, sink
    page.stop()


def send(port: int, sender: str = "scanner@lan.test", rcpts=("bob@example.com",)) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail(sender, list(rcpts), "Subject: page test\r\n\r\nhello\r\n")


def test_a_slow_client_is_dropped_and_others_are_served_meanwhile(relay_with_page):
    relay, page, sink = relay_with_page
    slow = socket.create_connection(("127.0.0.1", page.port))
    slow.sendall(b"GET / HT")                           # and nothing more
    assert get(page.url, "/status.json")[0] == 200
    send(relay.port)                                    # the relay takes mail meanwhile
    slow.settimeout(page_server.REQUEST_TIMEOUT_S * 6)
    answer = slow.recv(4096)                            # cut off after REQUEST_TIMEOUT_S
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    slow.close()
    sink.wait_count(1, timeout=60)


def test_a_flood_of_connections_stops_neither_the_page_nor_the_relay(relay_with_page):
    relay, page, sink = relay_with_page
    flood = []
    try:
        for _ in range(page_server.MAX_CONNECTIONS * 8):        # idle connections, never a request
            flood.append(socket.create_connection(("127.0.0.1", page.port)))
        status, _, body = get(page.url, "/status.json")
        assert status == 200 and json.loads(body)["relay"]["running"] is True
        send(relay.port)
        sink.wait_count(1, timeout=60)
    finally:
        for sock in flood:
            sock.close()
    assert get(page.url, "/")[0] == 200


def test_relay_history_shows_a_delivered_and_a_bounced_message_across_a_restart(tmp_path, sink_factory, relay_factory):
    good, refusing = sink_factory(), sink_factory("-f", "RCPT", "-B", "550 5.1.1 No such user")
    config = relay_config(good.port)
    config["relays"]["strict"] = {"host": "127.0.0.1", "port": refusing.port, "tls": "none", "timeout": "10s"}
    config["senders"] = [{"address": "printer@lan.test", "relay": "strict"}]
    relay = relay_factory(config)
    send(relay.port, "scanner@lan.test")
    send(relay.port, "printer@lan.test")
    wait_until(lambda: relay.queue() == [] and "status=bounced" in relay.log() and relay.log().count("status=sent") >= 2,
               90, what="one delivered, one bounced (and its DSN delivered)")
    relay.stop()                                        # the history is saved at stop, at the latest
    with PageProcess(relay.spool, None) as page:
        data = json.loads(get(page.url, "/status.json")[2])
        dom = chromium("--dump-dom", page.url + "/").stdout.decode() if CHROMIUM else ""
    jsonschema.validate(data, SCHEMA)
    today = data["history"]["days"][-1]
    assert today["relayed"] >= 2 and today["bounced"] == 1       # the message and its DSN; the bounce
    statuses = {(r["sender"], r["recipient_domain"], r["status"]) for r in data["recent"]}
    assert ("printer@lan.test", "example.com", "bounced") in statuses
    assert ("scanner@lan.test", "example.com", "sent") in statuses
    bounced = next(r for r in data["recent"] if r["status"] == "bounced")
    assert bounced["reply"].startswith("550 5.1.1") and "bob" not in json.dumps(data["recent"])
    if dom:
        assert "1 bounced" in dom                       # the bar's title in the plot


def _proc_ids(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as handle:
        return {k: v.split() for k, v in (line.split(":", 1) for line in handle) if k in ("Uid", "Gid", "Groups")}


def _as_page_user(cwd: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=mta-page", "--regid=mta-page", "--clear-groups",
                           "/usr/bin/python3", "-c", code], cwd=cwd, capture_output=True, text=True)


@pytest.mark.deployed
def test_page_started_as_root_runs_as_its_user_and_cannot_read_config_or_queue(deployed, tmp_path, sink_factory,
                                                                               relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port, with_secret=True))
    send(relay.port)
    sink.wait_count(1, timeout=60)
    wait_until(lambda: os.path.exists(os.path.join(relay.spool, "public", "history.json")), 30, what="history.json")
    user = "mta-page" if deployed else None
    if deployed:
        pwd.getpwnam(user)
    with PageProcess(relay.spool, None, user=user) as page:
        data = json.loads(get(page.url, "/status.json")[2])
        ids = _proc_ids(page.proc.pid)
    assert data["relay"]["running"] is True and data["history"]["days"][-1]["relayed"] >= 1
    assert "Traceback" not in page.log()
    if not deployed:
        return
    entry = pwd.getpwnam(user)
    assert ids["Uid"] == [str(entry.pw_uid)] * 4 and ids["Gid"] == [str(entry.pw_gid)] * 4
    assert ids.get("Groups", []) == []                  # not mta-lite, mta-smtpd or mta-config
    # What the page's user can reach from the spool it entered as root: the public files only.
    reads = _as_page_user(relay.spool, "open('public/status.json').read(); open('public/history.json').read()")
    assert reads.returncode == 0, reads.stderr
    for denied in ("import os; os.listdir('deferred')", "import os; os.listdir('state')",
                   "import os; os.listdir('public')", f"open({relay.config_path!r}).read()"):
        result = _as_page_user(relay.spool, denied)
        assert result.returncode != 0 and "PermissionError" in result.stderr, denied


def test_a_garbage_history_file_never_stops_the_relay(tmp_path, sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port), start=False)
    os.makedirs(os.path.join(relay.spool, "public"))
    path = os.path.join(relay.spool, "public", "history.json")
    with open(path, "wb") as handle:
        handle.write(b'{"version": 1, "hours": {"12')          # torn mid-write (a power cut)
    relay.start()
    send(relay.port)
    sink.wait_count(1, timeout=60)
    relay.stop()
    assert "history starts afresh" in relay.log()
    with open(path, "rb") as handle:
        days = json.loads(handle.read())["days"]
    assert sum(counts["relayed"] for counts in days.values()) == 1     # replaced by a good one
