"""The serial console end to end: the real `mta-lite-board --serial` on a real pty pair.

Peers (tests/support/board.py): socat (`socat -d -d pty,raw,echo=0,link=DIR/ttyA pty,raw,echo=0,link=DIR/ttyB`, a pty
pair, started per test and terminated in teardown), the real board daemon as a subprocess on
ttyA (stopped with SIGTERM in teardown), and on ttyB the laptop client (mta_lite_tools.provision) as a subprocess or a
raw pyserial client; for the I/O edge alone (board.console.SerialConsole in this process), a
bare kernel pty from os.openpty(), closed at the end of its test.
C1/C2: apply, broken apply, rollback, checked on disk. C3: 64 KiB of line noise, then the
console still works; the port going away and coming back; a console nobody reads caps its
replies and never blocks the event loop, nor does a slow command. S3: neither the daemon's log nor anything read from
the port ever holds the password or its base64.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
import tomli_w

from mta_lite_board.console_protocol import NOISE_ERR_INTERVAL_S
from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from tests.support.board import Board, PtyPair, RawClient
from tests.support.relay import PASSWORD, secret_needles
from tests.support.waiting import wait_until, wait_until_async

ROOT = Path(__file__).resolve().parents[2]
PROVISION = ["-m", "mta_lite_tools.provision"]     # the laptop client, as `mta-lite-provision` runs it
NEEDLES = secret_needles({PASSWORD})
NOISE_BYTES = 64 * 1024
REPLY_LINE = re.compile(rb"[ -~]*\r\n")

pytestmark = pytest.mark.integration


def config_bytes(spool: str, port=587) -> bytes:
    return tomli_w.dumps({
        "hostname": "relay.lan.test", "spool_dir": spool, "admin_address": "admin@lan.test",
        "listen": [{"address": "127.0.0.1:2525"}],
        "relays": {"isp": {"host": "smtp.isp.example", "port": port, "tls": "starttls",
                           "username": "office@isp.example", "password": PASSWORD}},
        "master": {"smtpd_user": "", "qmgr_user": ""},
    }).encode()


@pytest.fixture
def rig(tmp_path):
    pty = PtyPair(tmp_path)
    pty.start()
    board = Board(tmp_path, pty.a)
    Path(board.config).write_bytes(config_bytes(board.spool))
    seen: list[bytes] = []
    try:
        yield pty, board, seen
    finally:
        board.stop()
        pty.stop()
    leaks = [n for n in NEEDLES if n in board.log() or n in b"".join(seen)]
    if leaks:
        pytest.fail("the password (or its base64) left the box: in the daemon's log or on the port")


def provision(device: str, seen: list[bytes], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *PROVISION, "--port", device, *args], capture_output=True,
                            timeout=60, cwd=ROOT)
    seen += [result.stdout, result.stderr]
    return result


def test_console_serial_provision_status_apply_broken_apply_rollback(rig, tmp_path):
    pty, board, seen = rig
    board.start()
    status = provision(pty.b, seen, "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.decode().splitlines()[-2:] == [
        "queue: incoming 0, active 0, deferred 0, hold 0, corrupt 0", "OK"]

    good = tmp_path / "good.toml"
    good.write_bytes(config_bytes(board.spool, port=465))
    applied = provision(pty.b, seen, "apply", str(good))
    kept = configgen.generations(board.config)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.decode() == f"OK generation 2 installed (config {kept[0].digest})\n"
    assert kept[0].current and Path(kept[0].path).read_bytes() == good.read_bytes()
    assert load_config(board.config).relays["isp"].port == 465

    broken = tmp_path / "broken.toml"
    broken.write_bytes(config_bytes(board.spool).replace(b"port = 587", b'port = "x587"'))
    installed = Path(board.config).read_bytes()
    refused = provision(pty.b, seen, "apply", str(broken))
    assert refused.returncode == 1
    assert refused.stdout.decode() == "ERR console upload: relays.isp.port: expected int, got 'x587'\n"
    assert Path(board.config).read_bytes() == installed and len(configgen.generations(board.config)) == 2

    rolled = provision(pty.b, seen, "rollback")
    assert rolled.returncode == 0 and rolled.stdout.startswith(b"OK generation 3 installed (config ")
    assert load_config(board.config).relays["isp"].port == 587

    shown = provision(pty.b, seen, "show")
    assert shown.returncode == 0 and b'password = "********"' in shown.stdout
    listed = provision(pty.b, seen, "generations")
    assert [line.split()[0] for line in listed.stdout.decode().splitlines()] == ["3", "2", "1", "OK"]
    assert board.stop() == 0 and b"stopped" in board.log()


def test_console_serial_line_noise_then_hello_and_upload_work(rig):
    pty, board, seen = rig
    board.start()
    client = RawClient(pty.b, seen)
    try:
        client.hello()
        rng = random.Random(20240525)
        noise = bytearray(rng.randbytes(NOISE_BYTES))
        for _ in range(256):                    # more line ends and 0xff than chance gives
            noise[rng.randrange(NOISE_BYTES)] = rng.choice(b"\r\n\xff")
        started = time.monotonic()
        client.port.write(noise)
        before = client.hello()
        elapsed = time.monotonic() - started
        assert all(REPLY_LINE.fullmatch(line) for line in before), before
        errs = [line for line in before if line.startswith(b"ERR")]
        assert 1 <= len(errs) <= 2 + elapsed / NOISE_ERR_INTERVAL_S, (len(errs), elapsed)

        new = config_bytes(board.spool, port=2525)
        assert client.command(b"CONFIG BEGIN %d" % len(new)) == [b"OK send %d bytes as base64 lines\r\n" % len(new)]
        assert client.command(b"DATA " + base64.b64encode(new)) == [b"OK %d of %d bytes\r\n" % (len(new), len(new))]
        reply = client.command(b"CONFIG COMMIT " + hashlib.sha256(new).hexdigest().encode())
        assert reply[-1].startswith(b"OK generation 2 installed (config ")
    finally:
        client.close()
    assert load_config(board.config).relays["isp"].port == 2525
    assert board.proc.poll() is None, "the daemon died of line noise"


def test_console_serial_port_gone_and_back_daemon_survives(rig):
    pty, board, seen = rig
    board.start()
    assert provision(pty.b, seen, "status").returncode == 0
    pty.stop()
    wait_until(lambda: b"gone" in board.log(), 10, what="the daemon to notice the port is gone")
    # The port stays away through several reopen attempts (REOPEN_MIN_S doubling): the
    # daemon must stay up, and log the outage once, not once per attempt.
    with pytest.raises(subprocess.TimeoutExpired):
        board.proc.wait(timeout=1.0)
    pty.start()
    status = provision(pty.b, seen, "status")
    assert status.returncode == 0, status.stderr
    wait_until(lambda: b"back" in board.log(), 10, what="the daemon to log the port back")
    log = board.log().decode()
    assert len(re.findall(r"console: \S+ gone: .*; retrying", log)) == 1, log
    assert board.proc.poll() is None


def test_console_serial_broken_config_at_start_can_be_replaced(rig, tmp_path):
    pty, board, seen = rig
    Path(board.config).write_bytes(b"hostname = \n")
    board.start()
    wait_until(lambda: b"not valid TOML" in board.log(), 10, what="the config error in the log")
    assert provision(pty.b, seen, "show").returncode == 1
    good = tmp_path / "good.toml"
    good.write_bytes(config_bytes(board.spool))
    applied = provision(pty.b, seen, "apply", str(good))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert load_config(board.config).relays["isp"].port == 587


def test_provision_without_a_port_exits_2(tmp_path):
    result = subprocess.run([sys.executable, *PROVISION, "--port", str(tmp_path / "nothing"), "status"],
                            capture_output=True, timeout=30)
    assert result.returncode == 2 and b"provision: " in result.stderr
    usage = subprocess.run([sys.executable, *PROVISION, "--port", "x", "frobnicate"], capture_output=True, timeout=30)
    assert usage.returncode == 2


# ------------------------------------------------------------------ the I/O edge on a bare pty

def board_log(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "board")


def memory_protocol(directory: Path):
    from mta_lite_board.console import FileActions
    from mta_lite_board.console_protocol import ConsoleProtocol
    Path(directory / "mta-lite.toml").write_bytes(config_bytes(str(directory / "spool")))
    return lambda: ConsoleProtocol(FileActions(str(directory / "mta-lite.toml"), str(directory / "spool")))


async def read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    """Everything read from the non-blocking `fd` up to and including `needle`'s arrival."""
    got = bytearray()

    def arrived() -> bytes | None:
        try:
            got.extend(os.read(fd, 65536))
        except BlockingIOError:
            pass
        return bytes(got) if needle in got else None
    try:
        return await wait_until_async(arrived, timeout, what=repr(needle), interval=0.01)
    except TimeoutError:
        raise TimeoutError(f"no {needle!r} in {bytes(got[-200:])!r}") from None


def open_pty() -> tuple[int, str, int]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    return master, os.ttyname(slave), slave


def run_console_on_pty(make_console, scenario) -> str:
    """make_console(name) on a fresh pty, scenario(master, task) beside it on one loop, both
    cancelled and the pty closed at the end; the pty's name."""
    import asyncio
    master, name, slave = open_pty()

    async def main():
        task = asyncio.create_task(make_console(name).run())
        try:
            await scenario(master, task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        os.close(master)
        os.close(slave)
    return name


async def greeted(master: int) -> None:
    await read_until(master, b"OK mta-lite console 1\r\n")
    os.write(master, b"HELLO\r\n")
    await read_until(master, b"OK mta-lite console 1\r\n")


def test_serial_console_on_a_pty_replies_and_never_blocks_when_nobody_reads(tmp_path, caplog):
    import asyncio
    from mta_lite_board.console import MAX_PENDING_OUTPUT_BYTES, SerialConsole
    caplog.set_level("INFO", logger="board")

    async def scenario(master, task):
        await greeted(master)
        # Ask for far more than the pty and the output buffer hold, and read nothing: the
        # loop must go on (this coroutine runs on it) and the replies be capped, not queued.
        for _ in range(MAX_PENDING_OUTPUT_BYTES // 700 + 200):
            os.write(master, b"HELP\r\n")
            await asyncio.sleep(0)
        await wait_until_async(lambda: "nobody reads the port" in board_log(caplog), 10,
                               what="the replies to be capped")
        assert not task.done()
        await read_until(master, b"| HELP ", timeout=5)
        # Once the line is read again the console answers again (HELLO until it does, as
        # the clients do: a greeting that met a full buffer was dropped).
        deadline = time.monotonic() + 10
        while True:
            os.write(master, b"\r\nHELLO\r\n")
            try:
                await read_until(master, b"OK mta-lite console 1\r\n", timeout=0.5)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no answer after the flood"

    run_console_on_pty(lambda name: SerialConsole(name, memory_protocol(tmp_path)), scenario)


def test_serial_console_port_that_fails_to_open_logs_once_then_comes_back(tmp_path, caplog, monkeypatch):
    import mta_lite_board.console as console
    caplog.set_level("INFO", logger="board")
    monkeypatch.setattr(console, "REOPEN_MIN_S", 0.01)
    monkeypatch.setattr(console, "REOPEN_MAX_S", 0.02)
    attempts = []

    def opener(port: str):
        attempts.append(port)
        if len(attempts) <= 5:
            raise serial.SerialException(2, f"could not open port {port}")
        if len(attempts) == 6:
            return serial.serial_for_url("loop://")      # no file descriptor: refused too
        return console.open_port(port)

    async def scenario(master, task):
        await greeted(master)
        await wait_until_async(lambda: "back" in board_log(caplog), 5, what="the port logged back")

    name = run_console_on_pty(lambda name: console.SerialConsole(name, memory_protocol(tmp_path), opener), scenario)
    text = board_log(caplog)
    assert len(attempts) == 7
    assert text.count("retrying") == 1 and "cannot open" in text and f"console: {name} back" in text


def test_serial_console_slow_command_streams_its_steps_and_never_blocks_the_loop(tmp_path):
    """A relay test takes seconds: its steps reach the port as they happen, the event loop (and
    with it the LEDs) goes on meanwhile, and a line typed during it is answered after it."""
    import asyncio
    import threading
    from mta_lite_board.console import FileActions, SerialConsole
    from mta_lite_board.console_protocol import ConsoleProtocol
    from mta_lite_board.relaycli import RelayTest
    gate = threading.Event()
    Path(tmp_path / "mta-lite.toml").write_bytes(config_bytes(str(tmp_path / "spool")))

    class SlowActions(FileActions):
        def relay_names(self):
            return ["isp"]

        def relay_test(self, name, on_line):
            on_line("DNS: ok, first step")
            gate.wait(20)
            on_line("AUTH: ok, second step")
            return RelayTest(name, True, ["DNS: ok, first step", "AUTH: ok, second step"])

    actions = SlowActions(str(tmp_path / "mta-lite.toml"), str(tmp_path / "spool"))

    async def scenario(master, task):
        await greeted(master)
        os.write(master, b"TEST RELAY isp\r\nHELP\r\n")
        got = await read_until(master, b"| DNS: ok, first step\r\n")
        woke = 0
        for _ in range(20):                 # the loop runs while the command waits
            await asyncio.sleep(0.01)
            woke += 1
        try:
            got += os.read(master, 65536)
        except BlockingIOError:
            pass
        assert woke == 20 and b"second step" not in got and b"| HELP" not in got
        gate.set()
        got = await read_until(master, b"| HELP ")
        assert got.index(b"| AUTH: ok, second step\r\nOK relay test of isp passed\r\n") < got.index(b"| HELP ")

    try:
        run_console_on_pty(lambda name: SerialConsole(name, lambda: ConsoleProtocol(actions)), scenario)
    finally:
        gate.set()
