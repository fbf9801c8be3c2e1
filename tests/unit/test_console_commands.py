"""The console's commands that ask the relay (board/console_protocol.py): QUEUE, LOG, TEST RELAY,
FLUSH, REPORT, and HELP as a person at `screen /dev/ttyUSB0 115200` reads it.

Peer: none. Stand-in actions answer as board/console.py's FileActions does (lines already
masked); a fake clock drives the rate limits. What the real actions do against a real relay
and smarthost is in tests/integration/test_console_relay.py.
"""

from __future__ import annotations

import re

import pytest

from mta_lite_board.console_protocol import (COMMANDS, HELP, LOG_DEFAULT_LINES, MAX_LOG_LINES, RELAY_TEST_INTERVAL_S,
                                             REPORT_INTERVAL_S, ConsoleProtocol)
from mta_lite_board.logsource import LogTail, LogUnavailableError
from mta_lite_board.relaycli import RelayCliError, RelayTest
from mta_lite_board.report import Report

REPLY_LINE = re.compile(rb"[ -~]*\r\n")


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Actions:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.reports = 0
        self.fail: Exception | None = None

    def relay_names(self) -> list[str]:
        return ["isp", "backup"]

    def relay_test(self, name, on_line) -> RelayTest:
        self.calls.append(("test", name))
        lines = ["DNS: ok, smtp.isp.example is 192.0.2.1", "AUTH: ok, logged in as office@isp.example",
                 f"relay {name}: ok"]
        for line in lines:
            on_line(line)
        return RelayTest(name, name == "isp", lines)

    def oauth_names(self) -> list[str]:
        return ["m365"]

    def oauth_login(self, name, on_line) -> RelayTest:
        self.calls.append(("login", name))
        lines = ["To let mta-lite send mail through m365, open https://microsoft.com/devicelogin",
                 "and enter the code BCDF-GHJK", "oauth m365: approved; tokens stored in secrets/oauth-m365.json"]
        for line in lines:
            on_line(line)
        return RelayTest(name, True, lines)

    def log(self, count) -> LogTail:
        if self.fail:
            raise self.fail
        self.calls.append(("log", count))
        return LogTail("journal (mta-lite*)", [f"line {i}" for i in range(count)])

    def queue(self) -> list[str]:
        if self.fail:
            raise self.fail
        return ["1 message in the queue: deferred 1", "the oldest 1:", "ABC  deferred ...", "  why: paused"]

    def flush(self) -> str:
        return "flush: 1 message"

    def report(self) -> Report:
        self.reports += 1
        return Report({}, f"report {self.reports}\r\n\r\nlast line\r\n", '{\n "n": %d\n}\n' % self.reports)


@pytest.fixture
def console():
    clock, actions = Clock(), Actions()
    proto = ConsoleProtocol(actions, clock)

    def send(line: str) -> list[str]:
        replies = proto.feed(line.encode() + b"\r\n")
        assert all(REPLY_LINE.fullmatch(reply) for reply in replies)
        return [reply[:-2].decode() for reply in replies]
    return proto, actions, clock, send


def test_test_relay_each_step_a_data_line_then_ok_or_err(console):
    proto, actions, clock, send = console
    assert send("TEST RELAY isp") == ["| DNS: ok, smtp.isp.example is 192.0.2.1",
                                      "| AUTH: ok, logged in as office@isp.example", "| relay isp: ok",
                                      "OK relay test of isp passed"]
    assert send("test relay backup")[-1] == "ERR relay test of backup failed"



def streaming(proto) -> list[list[bytes]]:
    """The batches of lines the protocol streams out, in order, as the console sends them."""
    batches: list[list[bytes]] = []
    proto.stream = batches.append
    return batches

def test_test_relay_steps_stream_out_before_the_last_line(console):
    proto, actions, clock, send = console
    streamed = streaming(proto)
    assert proto.feed(b"HELP\r\nTEST RELAY isp\r\n") == []
    flat = [line for batch in streamed for line in batch]
    assert flat[len(HELP):] == [b"OK\r\n", b"| DNS: ok, smtp.isp.example is 192.0.2.1\r\n",
                                b"| AUTH: ok, logged in as office@isp.example\r\n", b"| relay isp: ok\r\n",
                                b"OK relay test of isp passed\r\n"]
    assert len(streamed) >= 4, "each step went out on its own"


def test_test_relay_at_most_once_per_interval_per_relay(console):
    proto, actions, clock, send = console
    send("TEST RELAY isp")
    assert send("TEST RELAY isp") == [f"ERR wait {RELAY_TEST_INTERVAL_S:.0f} s before testing isp again (a smarthost "
                                      "may lock an account that logs in too often)"]
    assert send("TEST RELAY backup")[-1].startswith("ERR relay test of backup")
    clock.now += RELAY_TEST_INTERVAL_S
    assert send("TEST RELAY isp")[-1] == "OK relay test of isp passed"
    assert actions.calls == [("test", "isp"), ("test", "backup"), ("test", "isp")]


@pytest.mark.parametrize("line, reply", [
    ("TEST RELAY", "ERR usage: TEST RELAY <name> (CONFIG SHOW lists the [relays.NAME])"),
    ("TEST RELAY a b", "ERR usage: TEST RELAY <name> (CONFIG SHOW lists the [relays.NAME])"),
    ("TEST RELAY ../etc/passwd", "ERR usage: TEST RELAY <name> (CONFIG SHOW lists the [relays.NAME])"),
    ("TEST RELAY zebra", "ERR no relay of that name; the config has: isp, backup"),
    ("TEST zebra", "ERR unknown command; try HELP"),
])
def test_test_relay_wrong_names_never_run_never_echoed(console, line, reply):
    proto, actions, clock, send = console
    assert send(line) == [reply]
    assert actions.calls == []


def test_log_default_and_range(console):
    proto, actions, clock, send = console
    replies = send("LOG")
    assert len(replies) == LOG_DEFAULT_LINES + 1 and replies[-1] == f"OK {LOG_DEFAULT_LINES} lines from journal (mta-lite*)"
    assert send(f"log {MAX_LOG_LINES}")[-1].startswith(f"OK {MAX_LOG_LINES} lines")
    for line in (f"LOG {MAX_LOG_LINES + 1}", "LOG 0"):
        assert send(line) == [f"ERR N must be 1 to {MAX_LOG_LINES} (REPORT has the last 500)"]
    for line in ("LOG -1", "LOG x", "LOG 1 2", "LOG 12345"):
        assert send(line) == ["ERR usage: LOG [N]"]
    assert actions.calls == [("log", LOG_DEFAULT_LINES), ("log", MAX_LOG_LINES)]


def test_relay_or_log_failure_is_one_err_line(console):
    proto, actions, clock, send = console
    actions.fail = LogUnavailableError("journal (mta-lite*): no entries; file /var/log/mta-lite/maillog: gone")
    assert send("LOG 3") == ["ERR LOG: journal (mta-lite*): no entries; file /var/log/mta-lite/maillog: gone"]
    actions.fail = RelayCliError("mta-lite queue list: no answer within 60 s")
    assert send("QUEUE") == ["ERR QUEUE: mta-lite queue list: no answer within 60 s"]
    assert send("HELLO") == ["OK mta-lite console 1"]


def test_queue_and_flush(console):
    proto, actions, clock, send = console
    assert send("QUEUE") == ["| 1 message in the queue: deferred 1", "| the oldest 1:", "| ABC  deferred ...",
                             "|   why: paused", "OK"]
    assert send("FLUSH") == ["OK flush: 1 message (deferred mail is tried again now)"]
    assert send("QUEUE now") == ["ERR usage: QUEUE"] and send("FLUSH all") == ["ERR usage: FLUSH"]


def test_report_text_then_json_of_the_same_report_made_once(console):
    proto, actions, clock, send = console
    assert send("REPORT") == ["| report 1", "| ", "| last line", "OK report: 3 lines"]
    assert send("REPORT JSON") == ["| {", '|  "n": 1', "| }", "OK report: 3 lines"]
    assert send("REPORT")[0] == f"ERR wait {REPORT_INTERVAL_S:.0f} s: a report was made just now (REPORT JSON sends it again)"
    clock.now += REPORT_INTERVAL_S
    assert send("report")[0] == "| report 2" and actions.reports == 2
    assert send("REPORT XML") == ["ERR usage: REPORT [JSON]"]


def test_report_json_first_makes_the_report(console):
    proto, actions, clock, send = console
    assert send("REPORT JSON")[1] == '|  "n": 1'


def test_help_is_for_a_person_at_a_terminal(console):
    proto, actions, clock, send = console
    replies = send("HELP")
    assert replies[0] == "| Type a command and press Enter; every answer ends with a line OK ... or ERR ..."
    assert all(len(line) <= 110 for line in replies), "fits a terminal"
    starts = {line[2:].split("  ")[0].split(" <")[0].split(" [")[0] for line in replies[1:-1]}
    assert set(COMMANDS) <= starts, set(COMMANDS) - starts


def test_oauth_login_streams_the_code_then_the_result(console):
    proto, actions, clock, send = console
    streamed = streaming(proto)
    assert proto.feed(b"oauth login m365\r\n") == []
    flat = [line for batch in streamed for line in batch]
    assert flat[1] == b"| and enter the code BCDF-GHJK\r\n" and flat[-1] == b"OK oauth login of m365 done\r\n"
    assert len(streamed) >= 3, "the code went out before the result"


@pytest.mark.parametrize("line, reply", [
    ("OAUTH LOGIN", "ERR usage: OAUTH LOGIN <name> (CONFIG SHOW lists the [oauth.NAME])"),
    ("OAUTH LOGIN gmail", "ERR no [oauth] of that name; the config has: m365"),
    ("OAUTH LOGIN m365 extra", "ERR usage: OAUTH LOGIN <name> (CONFIG SHOW lists the [oauth.NAME])"),
])
def test_oauth_login_takes_only_a_configured_provider_and_never_echoes(console, line, reply):
    proto, actions, clock, send = console
    assert send(line) == [reply] and actions.calls == []


def test_oauth_login_at_most_once_per_interval(console):
    proto, actions, clock, send = console
    send("OAUTH LOGIN m365")
    assert send("OAUTH LOGIN m365")[0].startswith("ERR wait ")
    clock.now += RELAY_TEST_INTERVAL_S
    assert send("OAUTH LOGIN m365")[-1] == "OK oauth login of m365 done"
