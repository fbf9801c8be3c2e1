"""Fuzz the serial console's protocol (board.console_protocol).

Peer: none. An in-memory set of actions for the chunking property; real config files in a
temporary directory (board.console.FileActions, mta_lite.config.generations) for uploads. C3: any
bytes in any chunking never make the protocol raise, every reply line is printable ASCII
ended by CRLF, and no reply or log line holds the password or its base64 (S3); feeding byte
by byte gives the replies that feeding in chunks gives. C1: an upload of any bytes, or of a
valid config with bytes changed, leaves the installed config as it was unless the upload
validates, and then it is the generation the reply names.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile

import tomli_w
from hypothesis import event, example, given, strategies as st

from mta_lite_board.console import FileActions
from mta_lite_board.console_protocol import ConsoleProtocol, GREETING
from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from mta_lite.config.generations import ApplyResult, Generation
from mta_lite.errors import ConfigError
from tests.fuzz.profiles import fuzz_settings
from tests.support.relay import PASSWORD, secret_needles

NEEDLES = secret_needles({PASSWORD})
REPLY_LINE = re.compile(rb"[ -~]*\r\n")
CONFIG = {
    "hostname": "relay.lan.test", "spool_dir": "/var/spool/mta-lite", "admin_address": "admin@lan.test",
    "listen": [{"address": "127.0.0.1:2525"}],
    "relays": {"isp": {"host": "smtp.isp.example", "port": 587, "tls": "starttls",
                       "username": "office@isp.example", "password": PASSWORD}},
    "senders": [{"address": "alice@lan.test", "relay": "isp", "username": "alice@isp.example",
                 "password": PASSWORD}],
    "master": {"smtpd_user": "", "qmgr_user": ""},
}
VALID = tomli_w.dumps(CONFIG).encode()


class Clock:
    now = 5000.0

    def __call__(self) -> float:
        return self.now


class MemoryActions:
    """Deterministic stand-ins: replies depend only on the calls, never on time or disk."""

    def __init__(self) -> None:
        self.installed, self.number = VALID, 1

    def status(self) -> str:
        return "mta-lite: not running\nqueue: incoming 0"

    def config_show(self) -> str:
        return 'hostname = "relay.lan.test"\npassword = "********"'

    def generations(self) -> list[Generation]:
        return [Generation(self.number, "g", len(self.installed), 0.0, "0123456789ab", True)]

    def apply(self, data: bytes, source: str) -> ApplyResult:
        if not data.startswith(b"#"):
            raise ConfigError(source, "hostname", f"expected one word, got {data[:8]!r}")
        self.installed, self.number = data, self.number + 1
        return ApplyResult(self.number, hashlib.sha256(data).hexdigest()[:12], True)

    def rollback(self, number: int | None) -> ApplyResult:
        raise ConfigError("cfg.toml", "", f"no generation {number}")


def frame(data: bytes, sha: str | None = None, size: int | None = None, width: int = 576) -> bytes:
    """An upload of `data` as the provisioning client sends it."""
    lines = [b"CONFIG BEGIN %d" % (len(data) if size is None else size)]
    lines += [b"DATA " + base64.b64encode(data[i:i + width]) for i in range(0, len(data), width)]
    lines.append(b"CONFIG COMMIT " + (sha or hashlib.sha256(data).hexdigest()).encode())
    return b"\r\n".join(lines) + b"\r\n"


def mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    changed = bytearray(data[:cut])
    for pos, value in flips:
        if changed:
            changed[pos % len(changed)] = value
    return bytes(changed)


commands = st.sampled_from([b"HELLO", b"HELP", b"STATUS", b"CONFIG SHOW", b"CONFIG GENERATIONS", b"CONFIG ABORT",
                            b"CONFIG ROLLBACK", b"CONFIG ROLLBACK 1", b"config begin 12", b"DATA QUJD",
                            b"CONFIG COMMIT " + b"ab" * 32, b"CONFIG", b"", b"  HELLO  "])
endings = st.sampled_from([b"\r\n", b"\n", b"\r"])
mutated = st.builds(mutate, st.just(VALID), st.integers(1, len(VALID)),
                    st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 255)), max_size=3))
uploads = st.one_of(st.binary(min_size=1, max_size=200), mutated, st.just(VALID)).filter(bool)
pieces = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda c, e: c + e, commands, endings),
    st.builds(frame, uploads),
    st.builds(lambda d, s: frame(d, sha=s), uploads, st.sampled_from(["0" * 64, "F" * 64])),
    st.builds(lambda d, n: frame(d, size=n), uploads, st.integers(1, 300)),
    st.just(b"X" * 1100 + b"\r\n"),
)
streams = st.lists(pieces, max_size=12).map(b"".join)


def check_replies(lines: list[bytes]) -> None:
    for line in lines:
        assert REPLY_LINE.fullmatch(line), line
    text = b"".join(lines)
    assert not [n for n in NEEDLES if n in text], text


def feed_in(proto: ConsoleProtocol, stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    out = []
    for a, b in zip([0] + points, points + [len(stream)]):
        out += proto.feed(stream[a:b])
    return out


@fuzz_settings(300)
@given(stream=streams, cuts=st.lists(st.integers(0, 10_000), max_size=20))
@example(stream=b"HELLO\r", cuts=[])
@example(stream=b"CONFIG BEGIN 3\r\nDATA QUJD\r\nCONFIG COMMIT " + hashlib.sha256(b"ABC").hexdigest().encode() + b"\n",
         cuts=[3, 17, 18])
def test_console_any_bytes_in_any_chunking_give_the_same_clean_replies(stream, cuts):
    log: list[str] = []
    whole = ConsoleProtocol(MemoryActions(), Clock(), log.append).feed(stream)
    check_replies(whole)
    assert not [n for n in NEEDLES if n in "\n".join(log).encode()]
    chunked = feed_in(ConsoleProtocol(MemoryActions(), Clock()), stream, cuts)
    one_by_one = ConsoleProtocol(MemoryActions(), Clock())
    by_byte = [line for i in range(len(stream)) for line in one_by_one.feed(stream[i:i + 1])]
    assert whole == chunked == by_byte


@fuzz_settings(150, long_examples=2000)
@given(stream=st.lists(st.one_of(st.builds(frame, uploads), pieces), min_size=1, max_size=4).map(b"".join),
       cuts=st.lists(st.integers(0, 10_000), max_size=8))
@example(stream=frame(VALID.replace(b"port = 587", b'port = "x"')), cuts=[])
@example(stream=frame(VALID.replace(b"[[senders]]", b"[[senders]]\nrelay = 5")), cuts=[])
def test_console_upload_of_any_bytes_changes_the_config_only_if_it_validates(stream, cuts):
    with tempfile.TemporaryDirectory(prefix="mta-fuzz-console-") as directory:
        path = os.path.join(directory, "mta-lite.toml")
        with open(path, "wb") as handle:
            handle.write(VALID)
        log: list[str] = []
        replies = feed_in(ConsoleProtocol(FileActions(path, directory), Clock(), log.append), stream, cuts)
        check_replies(replies)
        assert not [n for n in NEEDLES if n in "\n".join(log).encode()]
        installed = [r for r in replies if re.fullmatch(rb"OK generation \d+ installed \(config [0-9a-f]{12}\)\r\n", r)]
        with open(path, "rb") as handle:
            now = handle.read()
        event(f"installed: {bool(installed)}")
        if not installed:
            assert now == VALID
            return
        number = int(installed[-1].split()[2])
        newest = configgen.generations(path)[0]
        assert newest.number == number and newest.current
        load_config(path)                           # what was installed validates


def test_console_fuzz_base_config_uploads_and_installs(tmp_path):
    """The control for the properties above: the unchanged config is a valid upload."""
    path = str(tmp_path / "mta-lite.toml")
    with open(path, "wb") as handle:
        handle.write(VALID.replace(b"587", b"465"))
    replies = ConsoleProtocol(FileActions(path, str(tmp_path)), Clock()).feed(frame(VALID))
    assert replies[-1].startswith(b"OK generation 2 installed (config ")
    assert ConsoleProtocol(MemoryActions(), Clock()).feed(b"HELLO\n") == [GREETING.encode() + b"\r\n"]
