"""The serial console's protocol (board.console_protocol) with real config files.

Peer: none. A fake clock and a temporary directory holding a real config file; the actions
are board.console.FileActions, so uploads and rollbacks go through mta_lite.config.generations and are
checked on disk. C1 (nothing changes unless the upload validates), C2 (rollback), C3 (every
byte untrusted: capped, never echoed, never a crash) and S3 (no password in any reply).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re

import pytest
import tomli_w

from mta_lite_board.console import FileActions
from mta_lite_board.console_protocol import (GREETING, HELP, MAX_LINE_BYTES, NOISE_ERR_INTERVAL_S, UPLOAD_IDLE_S,
                                    ConsoleProtocol, ascii_line)
from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from mta_lite.errors import ConfigError
from mta_lite.status import StatusSnapshot, format_status, read_status, write_status
from tests.support.relay import PASSWORD, secret_needles

NEEDLES = secret_needles({PASSWORD})
REPLY_LINE = re.compile(rb"[ -~]*\r\n")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config_data(spool: str, port=587) -> dict:
    return {
        "hostname": "relay.lan.test", "spool_dir": spool, "admin_address": "admin@lan.test",
        "listen": [{"address": "127.0.0.1:2525"}],
        "relays": {"isp": {"host": "smtp.isp.example", "port": port, "tls": "starttls",
                           "username": "office@isp.example", "password": PASSWORD}},
        "master": {"smtpd_user": "", "qmgr_user": ""},
    }


def config_bytes(spool: str, port=587) -> bytes:
    return tomli_w.dumps(config_data(spool, port)).encode()


class Box:
    """A config directory, a protocol on it, and everything it said and logged."""

    def __init__(self, directory, spool: str | None = None) -> None:
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.spool = spool or os.path.join(self.dir, "spool")
        self.path = os.path.join(self.dir, "mta-lite.toml")
        with open(self.path, "wb") as handle:
            handle.write(config_bytes(self.spool))
        self.clock = FakeClock()
        self.log: list[str] = []
        self.proto = ConsoleProtocol(FileActions(self.path, self.spool), self.clock, self.log.append)
        self.raw: list[bytes] = []

    def send(self, data: bytes | str) -> list[str]:
        if isinstance(data, str):
            data = data.encode() + b"\r\n"
        return self._lines(self.proto.feed(data))

    def tick(self) -> list[str]:
        return self._lines(self.proto.tick())

    def _lines(self, lines: list[bytes]) -> list[str]:
        self.raw += lines
        for line in lines:
            assert REPLY_LINE.fullmatch(line), line
        return [line[:-2].decode("ascii") for line in lines]

    def upload(self, data: bytes, sha: str | None = None, size: int | None = None) -> list[str]:
        replies = self.send(f"CONFIG BEGIN {len(data) if size is None else size}")
        for start in range(0, len(data), 576):
            replies += self.send("DATA " + base64.b64encode(data[start:start + 576]).decode())
        return replies + self.send("CONFIG COMMIT " + (sha or hashlib.sha256(data).hexdigest()))

    def state(self) -> dict[str, bytes]:
        """Every file under the config directory except the spool, with its bytes."""
        found = {}
        for root, dirs, files in os.walk(self.dir):
            dirs[:] = [d for d in dirs if os.path.join(root, d) != self.spool]
            for name in files:
                with open(os.path.join(root, name), "rb") as handle:
                    found[os.path.relpath(os.path.join(root, name), self.dir)] = handle.read()
        return found


@pytest.fixture
def box(tmp_path):
    return Box(tmp_path)


def assert_no_secret(box: Box) -> None:
    text = b"".join(box.raw) + "\n".join(box.log).encode()
    assert not [n for n in NEEDLES if n in text]


# ------------------------------------------------------------------------------ basics

def test_console_greeting_and_hello_reply_ok_with_the_version(box):
    assert box.proto.greeting() == [b"OK mta-lite console 1\r\n"]
    assert box.send("HELLO") == [GREETING] == ["OK mta-lite console 1"]
    assert box.send("hello") == [GREETING]


def test_console_help_lists_every_command_then_ok(box):
    replies = box.send("HELP")
    assert replies == [f"| {line}" for line in HELP] + ["OK"]
    for verb in ("HELLO", "STATUS", "CONFIG SHOW", "CONFIG GENERATIONS", "CONFIG BEGIN", "DATA", "CONFIG COMMIT",
                 "CONFIG ABORT", "CONFIG ROLLBACK"):
        assert any(line.startswith(f"| {verb} ") for line in replies), verb


def test_console_unknown_command_replies_err_without_echo(box):
    replies = box.send("FROBNICATE zebra-word")
    assert replies == ["ERR unknown command; try HELP"]
    assert box.send("CONFIG") == []                     # noise within the second: rate limited
    box.clock.now += NOISE_ERR_INTERVAL_S
    assert box.send("CONFIG SMASH zebra-word") == ["ERR unknown command; try HELP"]
    assert not [r for r in box.raw if b"zebra" in r or b"FROB" in r or b"SMASH" in r]


def test_console_empty_lines_are_ignored(box):
    assert box.send(b"\r\n\n\r   \r\n\r\r\n") == []
    assert box.send("HELLO") == [GREETING]


@pytest.mark.parametrize("ending", [b"\r\n", b"\n", b"\r"])
def test_console_cr_lf_or_crlf_end_a_line_once(box, ending):
    assert box.send(b"HELLO" + ending + b"HELLO" + ending) == [GREETING, GREETING]


def test_console_crlf_split_between_chunks_ends_one_line(box):
    assert box.send(b"HELLO\r") == [GREETING]
    assert box.send(b"\nHELLO\n") == [GREETING]


def test_console_long_line_is_discarded_to_its_end_then_commands_work(box):
    replies = box.send(b"A" * (MAX_LINE_BYTES + 10) + b" HELP\r\n")
    assert replies == [f"ERR line too long (limit {MAX_LINE_BYTES} bytes)"]
    assert box.send("HELLO") == [GREETING]


def test_console_long_line_in_small_pieces_is_discarded_to_its_end(box):
    replies = []
    for _ in range(MAX_LINE_BYTES // 100 + 2):
        replies += box.send(b"HELLO" * 20)
    replies += box.send(b"\r\nHELLO\r\n")
    assert replies == [f"ERR line too long (limit {MAX_LINE_BYTES} bytes)", GREETING]


def test_console_line_at_the_cap_is_a_line(box):
    line = b"HELLO" + b" " * (MAX_LINE_BYTES - 5)
    assert box.send(line + b"\r\n") == [GREETING]


@pytest.mark.parametrize("byte", [b"\x00", b"\x1b", b"\t", b"\x7f", b"\x80", b"\xff", b"\x08"])
def test_console_control_or_non_ascii_byte_replies_err(box, byte):
    assert box.send(b"HEL" + byte + b"LO\r\n") == ["ERR control or non-ASCII byte in line"]
    assert box.send("HELLO") == [GREETING]


def test_console_noise_errs_are_rate_limited_and_any_reply_resets_the_limit(box):
    noise = b"\xff\xfe\r\n" * 5
    assert box.send(noise) == ["ERR control or non-ASCII byte in line"]
    box.clock.now += NOISE_ERR_INTERVAL_S / 2
    assert box.send(noise) == []
    box.clock.now += NOISE_ERR_INTERVAL_S / 2
    assert box.send(noise) == ["ERR control or non-ASCII byte in line"]
    assert box.send(b"HELLO\r\n" + noise) == [GREETING, "ERR control or non-ASCII byte in line"]


def test_console_any_chunking_gives_the_same_replies(tmp_path):
    rng = random.Random(7)
    new = config_bytes(str(tmp_path / "spool"), port=465)
    session = (b"HELLO\r\nHELP\nSTATUS\r\n\xff\x00junk\r\nCONFIG SHOW\r\n" + b"Z" * 1500 + b"\n"
               + b"CONFIG BEGIN %d\r\n" % len(new)
               + b"".join(b"DATA " + base64.b64encode(new[i:i + 300]) + b"\r\n" for i in range(0, len(new), 300))
               + b"CONFIG COMMIT " + hashlib.sha256(new).hexdigest().encode() + b"\r"
               + b"\nCONFIG ROLLBACK\nconfig rollback 2\r\nHELLO")
    runs = []
    for cut in ("whole", "bytes", "random"):
        box = Box(tmp_path / cut, spool=str(tmp_path / "spool"))
        if cut == "whole":
            chunks = [session]
        elif cut == "bytes":
            chunks = [session[i:i + 1] for i in range(len(session))]
        else:
            points = sorted(rng.sample(range(1, len(session)), 40))
            chunks = [session[a:b] for a, b in zip([0] + points, points + [len(session)])]
        runs.append([line for chunk in chunks for line in box.proto.feed(chunk)])
    assert runs[0] == runs[1] == runs[2]
    assert b"OK generation 2 installed" in b"".join(runs[0])
    assert runs[0][-1].startswith(b"OK generation 4 installed (config ")     # the last HELLO has no end yet


# ------------------------------------------------------------------------------ status and config

def test_console_status_is_format_status_prefixed_then_ok(box):
    os.makedirs(os.path.join(box.spool, "public"))
    os.makedirs(os.path.join(box.spool, "deferred"))
    open(os.path.join(box.spool, "deferred", "ABC123"), "w").close()
    write_status(box.spool, StatusSnapshot(pid=os.getpid(), started=1.0, config="0123456789ab",
                                           relays={"isp": {"state": "ok", "sent": 3}}))
    replies = box.send("STATUS")
    expected = format_status(read_status(box.spool)).splitlines()
    assert replies == [f"| {line}" for line in expected] + ["OK"]
    assert "| config: 0123456789ab" in replies and any("deferred 1" in r for r in replies)


def test_console_config_show_masks_the_password(box):
    replies = box.send("CONFIG SHOW")
    assert replies[-1] == "OK" and all(r.startswith("| ") for r in replies[:-1])
    assert '| host = "smtp.isp.example"' in replies
    assert '| password = "********"' in replies
    assert_no_secret(box)


def test_console_config_show_of_a_broken_config_replies_one_err_line(box):
    with open(box.path, "wb") as handle:
        handle.write(b"surprise = 1\n" + config_bytes(box.spool))
    assert box.send("CONFIG SHOW") == [f"ERR {box.path}: surprise: unknown key (check the spelling)"]


def test_console_generations_lists_kept_generations_then_ok(box):
    assert box.send("CONFIG GENERATIONS") == ["| no generations kept yet", "OK"]
    box.upload(config_bytes(box.spool, port=465))
    replies = box.send("CONFIG GENERATIONS")
    kept = configgen.generations(box.path)
    assert [g.number for g in kept] == [2, 1]
    assert len(replies) == 3 and replies[-1] == "OK"
    assert replies[0].startswith("| 2  ") and replies[0].endswith(f"config {kept[0].digest}  (installed)")
    assert replies[1].startswith("| 1  ") and not replies[1].endswith("(installed)")


# ------------------------------------------------------------------------------ uploads

def test_console_upload_valid_config_installs_a_new_generation(box):
    new = config_bytes(box.spool, port=465)
    replies = box.upload(new)
    kept = configgen.generations(box.path)
    assert replies[0] == f"OK send {len(new)} bytes as base64 lines"
    assert replies[1] == f"OK {len(new)} of {len(new)} bytes"
    assert replies[-1] == f"OK generation 2 installed (config {kept[0].digest})"
    assert kept[0].number == 2 and kept[0].current
    with open(kept[0].path, "rb") as handle:
        assert handle.read() == new
    assert load_config(box.path).relays["isp"].port == 465
    assert box.upload(new)[-1] == "OK generation 2 already installed"
    assert_no_secret(box)


def test_console_upload_in_many_data_lines_installs(box):
    new = config_bytes(box.spool, port=2587) + b"# " + b"x" * 3000 + b"\n"
    replies = box.upload(new)
    assert len(replies) == 2 + -(-len(new) // 576)
    assert replies[-1].startswith("OK generation 2 installed")
    assert load_config(box.path).relays["isp"].port == 2587


def test_console_upload_with_wrong_sha_changes_nothing(box):
    before = box.state()
    new = config_bytes(box.spool, port=465)
    replies = box.upload(new, sha=hashlib.sha256(new + b"x").hexdigest())
    assert replies[-1] == "ERR upload corrupted: SHA-256 does not match; nothing changed"
    assert box.state() == before and configgen.generations(box.path) == []


def test_console_upload_shorter_than_declared_changes_nothing(box):
    before = box.state()
    new = config_bytes(box.spool, port=465)
    replies = box.upload(new, size=len(new) + 1)
    assert replies[-1] == f"ERR upload corrupted: received {len(new)} of {len(new) + 1} bytes; nothing changed"
    assert box.state() == before


def test_console_upload_bigger_than_declared_is_dropped(box):
    before = box.state()
    new = config_bytes(box.spool, port=465)
    replies = box.upload(new, size=len(new) - 1)
    assert replies[1] == f"ERR upload dropped: more than the {len(new) - 1} bytes declared"
    assert replies[-1] == "ERR no upload in progress"
    assert box.state() == before


def test_console_upload_of_an_invalid_config_names_source_key_and_value(box):
    before = box.state()
    bad = config_bytes(box.spool).replace(b"port = 587", b'port = "five-eight-seven"')
    replies = box.upload(bad)
    assert replies[-1] == "ERR console upload: relays.isp.port: expected int, got 'five-eight-seven'"
    assert box.state() == before
    assert_no_secret(box)


def test_console_upload_with_a_password_of_the_wrong_type_never_shows_it(box):
    bad = config_bytes(box.spool).replace(f'password = "{PASSWORD}"'.encode(),
                                          f'password = ["{PASSWORD}"]'.encode())
    assert box.upload(bad)[-1] == "ERR console upload: relays.isp.password: expected str, got ********"
    assert_no_secret(box)


@pytest.mark.parametrize("line, reply", [
    ("CONFIG BEGIN 0", "ERR size must be 1 to 65536 bytes"),
    (f"CONFIG BEGIN {configgen.MAX_CONFIG_BYTES + 1}", "ERR size must be 1 to 65536 bytes"),
    ("CONFIG BEGIN", "ERR usage: CONFIG BEGIN <size>"),
    ("CONFIG BEGIN -5", "ERR usage: CONFIG BEGIN <size>"),
    ("CONFIG BEGIN 9999999999", "ERR usage: CONFIG BEGIN <size>"),
    ("CONFIG BEGIN 10 20", "ERR usage: CONFIG BEGIN <size>"),
    ("DATA QUJD", "ERR no upload in progress"),
    ("CONFIG COMMIT " + "0" * 64, "ERR no upload in progress"),
    ("CONFIG ABORT", "ERR no upload in progress"),
])
def test_console_upload_commands_out_of_place_reply_err(box, line, reply):
    assert box.send(line) == [reply]


@pytest.mark.parametrize("data_line", ["DATA", "DATA !!!!", "DATA QUJ", "DATA QUJD QUJD", "DATA ===="])
def test_console_bad_data_line_drops_the_upload(box, data_line):
    assert box.send("CONFIG BEGIN 10") == ["OK send 10 bytes as base64 lines"]
    assert box.send(data_line) == ["ERR upload dropped: DATA takes one word of base64"]
    assert box.send("DATA QUJD") == ["ERR no upload in progress"]


def test_console_bad_commit_line_drops_the_upload(box):
    box.send("CONFIG BEGIN 3")
    box.send("DATA QUJD")
    assert box.send("CONFIG COMMIT xyz") == ["ERR upload dropped: usage: CONFIG COMMIT <sha256-hex>"]
    assert box.send("CONFIG COMMIT " + hashlib.sha256(b"ABC").hexdigest()) == ["ERR no upload in progress"]


def test_console_abort_drops_the_upload(box):
    before = box.state()
    assert box.send("CONFIG BEGIN 3") == ["OK send 3 bytes as base64 lines"]
    assert box.send("DATA QUJD") == ["OK 3 of 3 bytes"]
    assert box.send("config abort") == ["OK upload dropped"]
    assert box.send("CONFIG COMMIT " + hashlib.sha256(b"ABC").hexdigest()) == ["ERR no upload in progress"]
    assert box.state() == before


@pytest.mark.parametrize("line", ["STATUS", "HELP", "CONFIG SHOW", "CONFIG BEGIN 5", "CONFIG ROLLBACK", "NONSENSE",
                                  "A" * (MAX_LINE_BYTES + 1), "DA\x00TA", "TEST RELAY isp", "LOG 5", "QUEUE", "FLUSH",
                                  "REPORT"])
def test_console_any_other_line_during_an_upload_drops_it(box, line):
    new = config_bytes(box.spool, port=465)
    box.send(f"CONFIG BEGIN {len(new)}")
    box.send("DATA " + base64.b64encode(new[:300]).decode())
    box.clock.now += 5 * NOISE_ERR_INTERVAL_S
    box.send(b"\xff\r\n")                           # a noise ERR just before: never rate limited here
    assert box.send("DATA QUJD") == ["ERR no upload in progress"]
    box.send(f"CONFIG BEGIN {len(new)}")
    replies = box.send(line)
    assert len(replies) == 1 and replies[0].startswith("ERR upload dropped")
    assert box.send("DATA " + base64.b64encode(new[300:]).decode()) == ["ERR no upload in progress"]
    assert configgen.generations(box.path) == []


def test_console_hello_during_an_upload_drops_it_and_greets(box):
    box.send("CONFIG BEGIN 3")
    assert box.send("HELLO") == [GREETING]
    assert box.send("DATA QUJD") == ["ERR no upload in progress"]


def test_console_stalled_upload_is_dropped_after_the_idle_timeout(box):
    box.send("CONFIG BEGIN 6")
    box.clock.now += UPLOAD_IDLE_S - 1
    assert box.tick() == []
    assert box.send("DATA QUJD") == ["OK 3 of 6 bytes"]     # a DATA line restarts the timer
    box.clock.now += UPLOAD_IDLE_S - 1
    assert box.tick() == []
    box.clock.now += 1
    assert box.tick() == [f"ERR upload dropped after {UPLOAD_IDLE_S:.0f}s without data"]
    assert box.tick() == []
    assert box.send("DATA REVG") == ["ERR no upload in progress"]
    assert any("dropped" in line for line in box.log)


def test_console_stalled_upload_is_dropped_at_the_next_line_without_a_tick(box):
    box.send("CONFIG BEGIN 6")
    box.send("DATA QUJD")
    box.clock.now += UPLOAD_IDLE_S
    assert box.send("DATA REVG") == ["ERR no upload in progress"]


# ------------------------------------------------------------------------------ rollback

def test_console_rollback_installs_the_previous_generation(box):
    box.upload(config_bytes(box.spool, port=465))
    replies = box.send("CONFIG ROLLBACK")
    kept = configgen.generations(box.path)
    assert replies == [f"OK generation 3 installed (config {kept[0].digest})"]
    assert load_config(box.path).relays["isp"].port == 587
    assert box.send("CONFIG ROLLBACK 2")[0].startswith("OK generation 4 installed")
    assert load_config(box.path).relays["isp"].port == 465
    assert_no_secret(box)


@pytest.mark.parametrize("line, reply", [
    ("CONFIG ROLLBACK 99", "ERR {path}: no generation 99 (kept: 2, 1)"),
    ("CONFIG ROLLBACK x", "ERR usage: CONFIG ROLLBACK [N]"),
    ("CONFIG ROLLBACK 1 2", "ERR usage: CONFIG ROLLBACK [N]"),
])
def test_console_rollback_to_a_generation_not_kept_replies_err(box, line, reply):
    box.upload(config_bytes(box.spool, port=465))
    before = box.state()
    assert box.send(line) == [reply.format(path=box.path)]
    assert box.state() == before


def test_console_rollback_without_history_replies_err(box):
    assert box.send("CONFIG ROLLBACK") == [f"ERR {box.path}: no earlier generation to roll back to"]


# ------------------------------------------------------------------------------ failures of the box

class FailingActions:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def status(self) -> str:
        raise self.exc

    def config_show(self) -> str:
        return "hostname = \"r\u00e9lay\"\n\x1b[2Jcleared"

    def generations(self):
        raise ConfigError("cfg.toml", "", "unreadable")


@pytest.mark.parametrize("exc, reply", [
    (PermissionError(13, "Permission denied"), "ERR STATUS: Permission denied"),
    (KeyError(PASSWORD), "ERR STATUS: internal error (logged)"),
])
def test_console_failing_action_replies_err_and_the_console_goes_on(exc, reply):
    log: list[str] = []
    proto = ConsoleProtocol(FailingActions(exc), FakeClock(), log.append)
    assert proto.feed(b"STATUS\r\n") == [ascii_line(reply)]
    assert proto.feed(b"CONFIG GENERATIONS\r\n") == [b"ERR cfg.toml: unreadable\r\n"]
    assert proto.feed(b"HELLO\r\n") == [ascii_line(GREETING)]
    assert log and PASSWORD not in "\n".join(log)


def test_console_reply_text_is_escaped_to_printable_ascii():
    proto = ConsoleProtocol(FailingActions(OSError()), FakeClock())
    assert proto.feed(b"CONFIG SHOW\n") == [b'| hostname = "r\\xe9lay"\r\n', b"| \\x1b[2Jcleared\r\n", b"OK\r\n"]
    assert ascii_line("a\u2028b\x00") == b"a\\u2028b\\x00\r\n"
