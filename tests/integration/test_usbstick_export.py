"""Diagnostics to a stick: a stick with a file named EXPORT gets mta-lite-report.txt and
mta-lite-report.json (board/usbstick.py, board/report.py). S3: nothing in them, nor anywhere on
the stick, holds a password, its base64, or a queued message's subject or body.

Peers: dosfstools and mtools make and read the stick (tests/support/stick.py); the real relay
(`mta-lite serve`, tests/support/relay.py RelayProcess) with a Postfix 3.7 smarthost behind it
(STARTTLS + SASL, the `smarthost` fixture): one account logs in, one has the wrong password,
and a message waits in the queue (tests/support/boardrelay.py). The report reads the relay's log file
(this machine has no journal) and asks the relay through its command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from mta_lite_board.report import render_text
from mta_lite_board.usbstick import Outcome, default_diagnostics, provision_from_stick
from tests.support.boardrelay import leaks, send_canary, two_accounts, wait_deferred
from tests.support.peers import free_port
from tests.support.relay import PASSWORD
from tests.support.stick import installed_config, make_stick, stick_file

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EXPORTED = "OK diagnostics written to mta-lite-report.txt and mta-lite-report.json (no password in them)"


def report_files(image) -> tuple[bytes, dict]:
    text, doc = stick_file(image, "mta-lite-report.txt"), stick_file(image, "mta-lite-report.json")
    assert text is not None and doc is not None, "no report on the stick"
    data = json.loads(doc)
    assert render_text(data).encode() == text, "the text and the JSON are the same report"
    return text, data


def test_export_report_of_a_relay_with_mail_stuck_holds_no_secret_and_no_message(tmp_path, smarthost, relay_factory):
    relay = relay_factory(two_accounts(smarthost))
    canary = send_canary(relay)
    [item] = wait_deferred(relay, 1)
    image = make_stick(tmp_path / "stick.img", {"EXPORT": b""})
    diagnostics = default_diagnostics(relay.config_path, log_file=relay.log_path)
    result = provision_from_stick(image, relay.config_path, diagnostics=diagnostics)
    assert result.outcome is Outcome.EXPORTED and result.exit_code == 0
    assert stick_file(image, "RESULT.TXT").decode().split("\r\n")[0] == EXPORTED
    text, data = report_files(image)
    blob = Path(image).read_bytes()
    assert leaks(blob) == [], "a password (or its base64) is on the stick"
    assert not [needle for needle in canary.needles() if needle in blob], "the message's subject or body is"
    assert data["version"]["mta-lite"] and data["clock"]["utc"].endswith(" UTC")
    assert data["status"]["lines"][0].startswith("mta-lite: running (pid ")
    assert data["queue"]["messages"] == 1 and data["queue"]["oldest"][0]["id"] == item["id"]
    assert data["queue"]["oldest"][0]["why"].startswith(f"{item['id']}: deferred: ")
    tests = {test["name"]: test for test in data["relay_tests"]["relays"]}
    assert tests["isp"]["ok"] and "AUTH: ok, logged in as office@example.test" in tests["isp"]["lines"]
    assert not tests["wrongpw"]["ok"] and tests["wrongpw"]["lines"][-1] == "relay wrongpw: FAILED at AUTH"
    assert data["config"]["lines"].count('password = "********"') == 3
    assert data["log"]["source"] == f"file {relay.log_path}"
    assert any(f"{item['id']}: to=<boss@remote.example>" in line for line in data["log"]["lines"])
    assert data["disk"]["spool"]["free_bytes"] > 0
    for title in (b"== Queue ==", b"== Relay tests ==", b"== Log ==", b"-- relay test wrongpw: FAILED --"):
        assert title in text


def box_config(tmp_path) -> dict:
    """A box whose smarthost is a closed port on loopback: its relay test fails at TCP at once."""
    return {"hostname": "relay.lan.test", "admin_address": "admin@lan.test", "spool_dir": str(tmp_path / "spool"),
            "relays": {"isp": {"host": "127.0.0.1", "port": free_port(), "username": "office@isp.example",
                               "password": PASSWORD}}}


def test_export_beside_a_config_installs_scrubs_then_reports(tmp_path):
    config = Path(installed_config(tmp_path, tomli_w.dumps(box_config(tmp_path)).encode()))
    log = tmp_path / "maillog"
    log.write_text(f"Jan 01 00:00:00 mta-lite/qmgr[1]: old line that said {PASSWORD}\n")
    new = box_config(tmp_path)
    new["hostname"] = "new.lan.test"
    image = make_stick(tmp_path / "stick.img", {"mta-lite.toml": tomli_w.dumps(new).encode(), "export": b""})
    result = provision_from_stick(image, str(config), diagnostics=default_diagnostics(str(config), str(log)))
    assert result.outcome is Outcome.APPLIED and result.exit_code == 0
    lines = stick_file(image, "RESULT.TXT").decode().split("\r\n")
    assert lines[0].startswith("OK generation 2 installed") and lines[2] == EXPORTED
    assert lines[1].startswith("the passwords in mta-lite.toml were replaced by ********")
    text, data = report_files(image)
    assert 'hostname = "new.lan.test"' in data["config"]["lines"], "the report shows the config just installed"
    assert data["status"]["lines"][0] == "mta-lite: not running"
    [test] = data["relay_tests"]["relays"]
    assert not test["ok"] and test["lines"][-1] == "relay isp: FAILED at TCP"
    assert data["log"]["lines"] == ["Jan 01 00:00:00 mta-lite/qmgr[1]: old line that said ********"]
    assert leaks(Path(image).read_bytes()) == []


def test_export_read_only_stick_exit_73_nothing_written(tmp_path):
    config = Path(installed_config(tmp_path, tomli_w.dumps(box_config(tmp_path)).encode()))
    image = make_stick(tmp_path / "stick.img", {"EXPORT": b""})
    if subprocess.run(["chattr", "+i", image], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        result = provision_from_stick(image, str(config), diagnostics=default_diagnostics(str(config), "/nonexistent"))
    finally:
        subprocess.run(["chattr", "-i", image], check=True)
    assert result.outcome is Outcome.EXPORT_FAILED and result.exit_code == 73 and not result.result_written
    assert result.message.startswith("ERROR diagnostics not written to the stick: mcopy exited with status 1")
    assert stick_file(image, "mta-lite-report.txt") is None


def test_export_command_line_with_log_file_exit_0(tmp_path):
    config = Path(installed_config(tmp_path, tomli_w.dumps(box_config(tmp_path)).encode()))
    log = tmp_path / "maillog"
    log.write_text("Jan 01 00:00:00 mta-lite/smtpd[1]: connect from [127.0.0.1]\n")
    image = make_stick(tmp_path / "stick.img", {"EXPORT": b""})
    done = subprocess.run([sys.executable, "-m", "mta_lite_board.usbstick", image, "--config", str(config),
                           "--log-file", str(log)], cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert EXPORTED.encode() in done.stderr and len(done.stderr.splitlines()) == 1
    _text, data = report_files(image)
    assert data["log"]["lines"] == ["Jan 01 00:00:00 mta-lite/smtpd[1]: connect from [127.0.0.1]"]
    assert leaks(Path(image).read_bytes()) == []
