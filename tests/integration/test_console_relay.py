"""The console's relay commands end to end: TEST RELAY, LOG, QUEUE, FLUSH and REPORT, and the
laptop client's test, log, queue, flush and report, against a real relay and smarthost.

Peers: socat (a pty pair, tests/support/board.py), the real `mta-lite-board` daemon on ttyA (its
LOG and REPORT read the relay's log file: this machine has no journal), the real relay
(`mta-lite serve`, tests/support/relay.py RelayProcess) and behind it a real Postfix 3.7 smarthost with
STARTTLS and SASL (tests/peers.py PostfixSmarthost, the `smarthost` fixture), on ttyB pyserial
and `mta-lite-provision` as subprocesses. The relay has one account that logs in and one with
the wrong password, and a message waits in its queue (tests/support/boardrelay.py).
S3: every byte read from the port, the client's output and the files it saved, and the board
daemon's log are searched for every password of the config and its base64 forms; the relay's
log, spool and status are scanned after each test (tests/conftest.py). The queued message's
subject and body never appear either. C3: TEST RELAY takes only a relay the config has, and
never echoes the name it was given.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mta_lite_board.report import render_text
from tests.support.board import Board, PtyPair, RawClient
from tests.support.boardrelay import leaks, send_canary, two_accounts, wait_deferred

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# A relay test against Postfix on loopback takes a second or two; a loaded machine, longer.
TEST_RELAY_WAIT_S = 120
REPLY_LINE = re.compile(rb"[ -~]*\r\n")


@pytest.fixture
def rig(tmp_path, smarthost, relay_factory):
    relay = relay_factory(two_accounts(smarthost))
    pty = PtyPair(tmp_path)
    pty.start()
    board = Board(tmp_path, pty.a, "--no-leds", "--log-file", relay.log_path, config=relay.config_path,
                  spool=relay.spool)
    seen: list[bytes] = []
    canaries: list = []
    try:
        board.start()
        yield relay, pty, board, seen, canaries
    finally:
        board.stop()
        pty.stop()
    blob = board.log() + b"".join(seen)
    if leaks(blob):
        pytest.fail("a password (or its base64) left the box: on the port, in the client's output or the log")
    for canary in canaries:
        assert not [n for n in canary.needles() if n in blob], "the queued message's subject or body was shown"


def provision(pty, seen, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mta_lite_tools.provision", "--port", pty.b, *args],
                          capture_output=True, timeout=600, cwd=cwd)
    seen += [done.stdout, done.stderr]
    return done


def session(pty, seen) -> RawClient:
    client = RawClient(pty.b, seen)
    client.hello()
    return client


def test_console_test_relay_good_password_passes_step_by_step(rig):
    relay, pty, board, seen, _ = rig
    client = session(pty, seen)
    try:
        replies = [line.decode() for line in client.command(b"TEST RELAY isp", timeout=TEST_RELAY_WAIT_S)]
        again = client.command(b"test relay isp")
    finally:
        client.close()
    assert all(REPLY_LINE.fullmatch(line.encode()) for line in replies)
    steps = [line[2:].rstrip("\r\n") for line in replies[:-1]]
    assert steps[0].startswith("DNS: ok") and steps[1].startswith("TCP: ok")
    assert "TLS: ok, certificate verified for 127.0.0.1" in steps[3]
    assert "AUTH: ok, logged in as office@example.test" in steps
    assert steps[-1].startswith("relay isp: ok, 127.0.0.1:")
    assert replies[-1] == "OK relay test of isp passed\r\n"
    assert again[-1].startswith(b"ERR wait ") and b"before testing isp again" in again[-1]


def test_console_test_relay_wrong_password_fails_at_auth(rig):
    relay, pty, board, seen, _ = rig
    done = provision(pty, seen, "test", "wrongpw")
    out = done.stdout.decode()
    assert done.returncode == 1, out + done.stderr.decode()
    [auth] = [line for line in out.splitlines() if line.startswith("AUTH: ")]
    assert auth.startswith("AUTH: login refused for office@example.test: ") and "authentication failed" in auth
    assert auth.endswith("-- check username and password")
    assert out.splitlines()[-2:] == ["relay wrongpw: FAILED at AUTH", "ERR relay test of wrongpw failed"]


def test_console_test_relay_unknown_name_lists_the_relays_without_echo(rig):
    relay, pty, board, seen, _ = rig
    client = session(pty, seen)
    try:
        unknown = client.command(b"TEST RELAY zebra-nope")
        bad = client.command(b"TEST RELAY a/b")
    finally:
        client.close()
    assert unknown == [b"ERR no relay of that name; the config has: isp, wrongpw\r\n"]
    assert bad == [b"ERR usage: TEST RELAY <name> (CONFIG SHOW lists the [relays.NAME])\r\n"]


def test_console_queue_log_flush_with_a_deferred_message(rig):
    relay, pty, board, seen, canaries = rig
    canaries.append(send_canary(relay))
    [item] = wait_deferred(relay, 1)
    queue = provision(pty, seen, "queue")
    out = queue.stdout.decode().splitlines()
    assert queue.returncode == 0, queue.stderr
    assert out[0] == "1 message in the queue: deferred 1"
    assert out[2].startswith(f"{item['id']}  deferred  ") and "from <scanner@lan.test>  1 recipient(s)" in out[2]
    assert out[3].startswith("  why: deferred: ") and out[-1] == "OK"
    log = provision(pty, seen, "log", "50")
    lines = log.stdout.decode().splitlines()
    assert log.returncode == 0 and lines[-1].startswith("OK ") and lines[-1].endswith(f"lines from file {relay.log_path}")
    assert any(f"{item['id']}: to=<boss@remote.example>" in line and "status=deferred" in line for line in lines)
    assert len(lines) <= 51
    flushed = provision(pty, seen, "flush")
    assert flushed.stdout.decode() == "OK flush: 1 message (deferred mail is tried again now)\n"


def test_console_log_limits_and_usage(rig):
    relay, pty, board, seen, _ = rig
    client = session(pty, seen)
    try:
        assert client.command(b"LOG 0") == [b"ERR N must be 1 to 200 (REPORT has the last 500)\r\n"]
        assert client.command(b"LOG 99999") == [b"ERR usage: LOG [N]\r\n"]
        replies = client.command(b"LOG")
    finally:
        client.close()
    assert len(replies) <= 21 and replies[-1].startswith(b"OK ")


def test_provision_report_saves_text_and_json_of_one_report(rig, tmp_path):
    relay, pty, board, seen, canaries = rig
    canaries.append(send_canary(relay))
    wait_deferred(relay, 1)
    out = tmp_path / "saved"
    out.mkdir()
    done = provision(pty, seen, "report", "--dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    text, doc = (out / "mta-lite-report.txt").read_bytes(), (out / "mta-lite-report.json").read_bytes()
    seen += [text, doc]
    assert done.stdout.decode().startswith("OK report: ") and "saved " in done.stdout.decode()
    data = json.loads(doc)
    assert render_text(data).encode() == text, "the text and the JSON are the same report"
    tests = {test["name"]: test for test in data["relay_tests"]["relays"]}
    assert tests["isp"]["ok"] and not tests["wrongpw"]["ok"]
    assert data["queue"]["messages"] == 1 and data["queue"]["oldest"][0]["why"]
    assert 'password = "********"' in data["config"]["lines"]
    assert data["log"]["source"] == f"file {relay.log_path}" and data["log"]["lines"]
    again = provision(pty, seen, "report", "--dir", str(out))
    assert again.returncode == 1 and again.stdout.decode().startswith("ERR wait ")
