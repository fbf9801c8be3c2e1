"""The diagnostics report (board/report.py) and the log sources it reads (board/logsource.py).

Peer: none for the report: a stand-in for the relay's command line that answers as `mta-lite`
does, and says the password where a careless relay might (status, queue, relay test, log), so
that the masking is what is tested. The log sources read real files in tmp_path; the journal
is a stand-in `journalctl` script (this machine has no journal).
"""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from mta_lite_board.logsource import FileLog, FirstOf, JournalLog, LogTail, LogUnavailableError, default_source
from mta_lite_board.redact import Redactor
from mta_lite_board.relaycli import RelayCliError, RelayTest
from mta_lite_board.report import MAX_REPORT_BYTES, Diagnostics, queue_lines, queue_summary
from tests.support.relay import PASSWORD, secret_needles

NEEDLES = secret_needles({PASSWORD})
B64 = base64.b64encode(b"\0office@isp.example\0" + PASSWORD.encode()).decode()


class FakeRelay:
    """Answers as `mta-lite` would, but careless with the password."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.fail = fail
        self.tested: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        if what in self.fail:
            raise RelayCliError(f"mta-lite {what}: no answer within 60 s")

    def status_text(self) -> str:
        self._maybe_fail("status")
        return f"mta-lite: running\nrelay isp: auth_failed (said {PASSWORD})\nqueue: deferred 2"

    def config_show(self) -> str:
        self._maybe_fail("config")
        return ('hostname = "relay.lan.test"\nspool_dir = "/nonexistent-spool"\n\n[relays.isp]\n'
                'host = "smtp.isp.example"\npassword = "********"\n\n[relays.backup]\nhost = "b.example"\n')

    def queue(self) -> list[dict]:
        self._maybe_fail("queue")
        return [{"id": "B2", "state": "deferred", "arrival": 200.0, "size": 900, "attempts": 3,
                 "sender": "scanner@lan.test", "recipients": ["a@x", "b@x"], "last_error": B64},
                {"id": "A1", "state": "deferred", "arrival": 100.0, "size": 500, "attempts": 1,
                 "sender": "", "recipients": ["c@x"], "last_error": ""}]

    def why(self, ids: list[str]) -> list[str]:
        return [f"{queue_id}: deferred: retry backoff; last reply: 535 {B64}" for queue_id in ids]

    def relay_test(self, name: str, on_line=lambda line: None, timeout_s=None) -> RelayTest:
        self.tested.append(name)
        lines = ["DNS: ok", f"AUTH: login refused for office@isp.example: {PASSWORD} — check username and password",
                 f"relay {name}: FAILED at AUTH"]
        return RelayTest(name, False, lines)


class FakeLog:
    def __init__(self, lines: list[str] | None = None) -> None:
        self.lines = lines

    def tail(self, count: int) -> LogTail:
        if self.lines is None:
            raise LogUnavailableError("journal (mta-lite*): no entries; file /x: No such file or directory")
        return LogTail("file relay.log", self.lines[-count:])


def diagnostics(tmp_path, relay=None, log=None) -> Diagnostics:
    config = tmp_path / "mta-lite.toml"
    config.write_text("hostname = 'x'\n")
    return Diagnostics(str(config), relay or FakeRelay(), log or FakeLog([f"line {i} pw={PASSWORD}" for i in range(600)]),
                       now=lambda: 1_800_000_000, redactor=lambda: Redactor({PASSWORD}),
                       timedatectl=str(tmp_path / "no-timedatectl"))


def assert_clean(text: str) -> None:
    assert not [n for n in NEEDLES if n.decode() in text], "a secret form is in the report"


def test_report_every_section_masked_ascii_and_json_parses(tmp_path):
    report = diagnostics(tmp_path).build()
    assert_clean(report.text)
    assert_clean(report.json)
    assert report.text.isascii() and all(line.isprintable() for line in report.text.split("\r\n"))
    data = json.loads(report.json)
    assert data == report.data
    assert [test["name"] for test in data["relay_tests"]["relays"]] == ["isp", "backup"]
    assert data["relay_tests"]["relays"][0]["lines"][1].endswith("******** -- check username and password")
    assert len(data["log"]["lines"]) == 500 and data["log"]["lines"][-1] == "line 599 pw=********"
    assert data["clock"]["utc"] == "2027-01-15 08:00:00 UTC" and data["clock"]["synchronized"] == "unknown"
    assert data["disk"]["spool"]["error"] and data["disk"]["config"]["free_bytes"] > 0
    for title in ("== Version ==", "== Clock ==", "== Disk ==", "== Status ==", "== Queue ==", "== Relay tests ==",
                  "== Config (secrets masked) ==", "== Log =="):
        assert title in report.text


def test_report_queue_oldest_first_with_why_no_recipient_list(tmp_path):
    summary = queue_summary(FakeRelay(), Redactor({PASSWORD}), oldest=10)
    assert summary["messages"] == 2 and summary["counts"] == {"deferred": 2}
    assert [item["id"] for item in summary["oldest"]] == ["A1", "B2"]
    assert summary["oldest"][1]["recipients"] == 2 and "a@x" not in json.dumps(summary)
    lines = queue_lines(summary)
    assert lines[0] == "2 messages in the queue: deferred 2"
    assert lines[3] == "  why: deferred: retry backoff; last reply: 535 ********"
    assert "from <MAILER-DAEMON>" in lines[2]


def test_report_failing_sections_say_why_and_the_rest_is_there(tmp_path):
    report = diagnostics(tmp_path, FakeRelay(fail={"status", "queue", "config"}), FakeLog(None)).build()
    data = report.data
    assert data["status"] == {"error": "mta-lite status: no answer within 60 s"}
    assert data["queue"]["error"] and data["config"]["error"]
    assert data["relay_tests"] == {"error": "no relay names: the config did not load"}
    assert data["log"]["error"].startswith("journal (mta-lite*): no entries")
    assert "not available: mta-lite status: no answer within 60 s" in report.text
    assert data["version"]["mta-lite"] and data["clock"]["utc"]


def test_report_too_big_leaves_out_the_oldest_log_lines(tmp_path):
    # JSON doubles a backslash: 500 lines at the line limit are more than fits.
    long_lines = [f"{i:04d} " + "\\" * 990 for i in range(500)]
    report = diagnostics(tmp_path, log=FakeLog(long_lines)).build()
    assert len(report.text) <= MAX_REPORT_BYTES and len(report.json) <= MAX_REPORT_BYTES
    log = report.data["log"]
    assert log["left_out"] > 0 and log["left_out"] + len(log["lines"]) == 500
    assert log["lines"][-1].startswith("0499 ")
    assert f"({log['left_out']} older lines left out to fit)" in report.text


# ------------------------------------------------------------------ log sources

def test_file_log_tail_last_lines_of_a_long_file(tmp_path):
    path = tmp_path / "maillog"
    path.write_bytes(b"".join(b"line %d %s\n" % (i, b"y" * (i % 300)) for i in range(20000)) + b"no newline at end")
    tail = FileLog(str(path)).tail(500)
    assert tail.source == f"file {path}" and len(tail.lines) == 500
    assert tail.lines[-1] == "no newline at end" and tail.lines[0].startswith("line 19501 ")


def test_file_log_short_file_and_missing_file(tmp_path):
    path = tmp_path / "maillog"
    path.write_text("a\n\nb\n")
    assert FileLog(str(path)).tail(500).lines == ["a", "b"]
    with pytest.raises(LogUnavailableError) as caught:
        FileLog(str(tmp_path / "none")).tail(5)
    assert "No such file" in str(caught.value)


def fake_journalctl(tmp_path, body: str) -> str:
    script = tmp_path / "journalctl"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_journal_lines_without_markers_and_with_fixed_arguments(tmp_path):
    journal = fake_journalctl(tmp_path, 'echo "-- Boot 1a2b --"; echo "Jan 01 mta-lite/qmgr[1]: $*"\n')
    tail = JournalLog(journalctl=journal).tail(7)
    assert tail.source == "journal (mta-lite*)"
    assert tail.lines == ["Jan 01 mta-lite/qmgr[1]: --no-pager --quiet -o short -n 7 --unit=mta-lite*"]


def test_journal_without_entries_falls_back_to_the_file(tmp_path):
    journal = fake_journalctl(tmp_path, 'echo "-- No entries --"; echo "No journal files were found." >&2\n')
    path = tmp_path / "maillog"
    path.write_text("from the file\n")
    tail = FirstOf(JournalLog(journalctl=journal), FileLog(str(path))).tail(10)
    assert tail == LogTail(f"file {path}", ["from the file"])
    with pytest.raises(LogUnavailableError) as caught:
        FirstOf(JournalLog(journalctl=journal), FileLog(str(tmp_path / "none"))).tail(10)
    assert "No journal files were found." in str(caught.value) and "No such file" in str(caught.value)


def test_default_source_with_a_log_file_reads_only_it(tmp_path):
    assert isinstance(default_source(str(tmp_path / "x.log")), FileLog)
    assert os.path.basename(default_source().sources[1].path) == "maillog"
