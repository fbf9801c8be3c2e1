"""Boot the real image twice under qemu-system-aarch64 -M virt and relay mail through it.

See tests/image/test_image_boot.py for the set-up (MTA_LITE_IMAGE, `make image-test`).
Boot 1: a mta-lite.toml put on the boot partition with mcopy is installed (and leaves the
card, mta-lite-result.txt says OK), SMTP answers through hostfwd, a mail from swaks reaches
smtp-sink on the host; with the sink stopped a second mail is deferred; the power is cut.
Boot 2: the deferred mail is delivered from the spool the data partition kept. Both boots:
the console shows the root file system mounted read-only. Timings are printed (pytest -s).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from .test_image_boot import (BOOT_DEADLINE_S, BOOT_OFFSET, CARD_EXTRA, DATA_OFFSET, DELIVERY_DEADLINE_S, IMAGE,
                              debugfs, mtype)
from tests.support.peers import free_port     # qemu's hostfwd takes ports on its command line
from tests.support.waiting import wait_until
from .test_image_boot import pytestmark  # noqa: F401  (the same skip: without MTA_LITE_IMAGE)

MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")
# The guest sees the host's loopback as this address (qemu user-mode networking).
HOST_FROM_GUEST = "10.0.2.2"
SECRET = "boot-test-inline-password"


def guest_config(sink_port: int) -> str:
    return f"""
hostname = "relay-test.lan"
mynetworks = ["127.0.0.0/8", "10.0.2.0/24"]
admin_address = "admin@example.test"
default_relay = "sink"

[[listen]]
address = "0.0.0.0:25"

[relays.sink]
host = "{HOST_FROM_GUEST}"
port = {sink_port}
tls = "none"

[relays.isp]                    # never used: its inline password must end up in secrets/
host = "smtp.isp.example"
port = 587
tls = "starttls"
username = "office@isp.example"
password = "{SECRET}"

[queue]
min_backoff = "10s"
max_backoff = "20s"
"""


class Sink:
    """smtp-sink on 127.0.0.1:port, each message dumped into its own file. It runs as nobody,
    so the dump directory is under /tmp (pytest's own directories are root's 0700)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dump = pathlib.Path(tempfile.mkdtemp(prefix="mta-image-sink-", dir="/tmp"))
        os.chmod(self.dump, 0o777)
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", "-d", f"{self.dump}/%M.", f"127.0.0.1:{port}",
                                      "10"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dump, ignore_errors=True)

    def wait_for(self, subject: str, deadline_s: float) -> float:
        """Seconds until a mail with `subject` is at the sink."""
        start = time.monotonic()
        wait_until(lambda: any(path.is_file() and f"Subject: {subject}" in path.read_text(errors="replace")
                               for path in self.dump.rglob("*")),
                   deadline_s, what=f"a mail with Subject: {subject} at the sink", interval=1.0)
        return time.monotonic() - start


class Guest:
    """One boot of the image (its own kernel, initrd and cmdline), killed by its pidfile. The
    console is the PL011 (ttyAMA0) written to a file; on the virt machine that UART is also
    /dev/serial0, the board daemon's, which only ever answers input (none is sent)."""

    def __init__(self, disk: pathlib.Path, kernel: pathlib.Path, initrd: pathlib.Path, smtp_port: int,
                 console: pathlib.Path) -> None:
        cmdline = mtype(disk, "cmdline.txt").strip().replace("console=tty1", "console=ttyAMA0")
        cmdline += " systemd.journald.forward_to_console=1"
        self.console, self.pidfile = console, console.with_suffix(".pid")
        self.port = smtp_port
        argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-smp", "2", "-m", "1024",
                "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
                "-append", cmdline, "-serial", f"file:{console}",
                "-drive", f"if=none,file={disk},format=raw,id=hd", "-device", "virtio-blk-device,drive=hd",
                "-netdev", f"user,id=n,hostfwd=tcp:127.0.0.1:{smtp_port}-:25", "-device", "virtio-net-device,netdev=n",
                "-device", "virtio-rng-device", "-pidfile", str(self.pidfile)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def log(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_smtp(self, deadline_s: float) -> float:
        """Seconds from power-on until the relay's 220 greeting comes through hostfwd."""
        try:
            wait_until(self._greets, deadline_s - (time.monotonic() - self.started),
                       what="the relay's SMTP greeting", interval=2.0)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; console:\n" + self.log()[-5000:]) from None
        return time.monotonic() - self.started

    def _greets(self) -> bool:
        assert self.proc.poll() is None, "qemu exited:\n" + self.log()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.settimeout(20)
                return sock.recv(512).startswith(b"220")
        except OSError:
            return False

    def wait_log(self, condition, deadline_s: float) -> None:
        """Poll the console (the journal is forwarded to it) until `condition(text)` holds."""
        start = time.monotonic()
        while not condition(self.log()):
            assert time.monotonic() - start < deadline_s, "console:\n" + self.log()[-3000:]
            time.sleep(1)

    def cut_power(self) -> None:
        pid = int(self.pidfile.read_text().strip()) if self.pidfile.exists() else self.proc.pid
        os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def swaks(port: int, subject: str) -> None:
    done = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "scanner@lan.test",
                           "--to", "bob@example.test", "--header", f"Subject: {subject}",
                           "--body", "scanned document", "--timeout", "120"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]


def replayed_data(disk: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """A copy of the data partition with its ext4 journal replayed (e2fsck -fy on the copy):
    after a power cut recent writes may be in the journal only, which debugfs does not read."""
    copy = work / "data-after-boot1.img"
    subprocess.run(["dd", f"if={disk}", f"of={copy}", "bs=1M", f"skip={DATA_OFFSET // (1024 * 1024)}",
                    "conv=sparse", "status=none"], check=True)
    done = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stdout + done.stderr        # 1: errors corrected (the replay)
    return copy


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    work = tmp_path_factory.mktemp("card")
    disk = work / "card.img"
    subprocess.run(["cp", "--sparse=always", IMAGE, str(disk)], check=True)
    subprocess.run(["truncate", "-s", CARD_EXTRA, str(disk)], check=True)
    for name in ("cmdline.txt", "config.txt"):
        assert mtype(disk, name)
    config = mtype(disk, "config.txt")
    kernel = next(line.split("=", 1)[1].strip() for line in config.splitlines() if line.startswith("kernel="))
    initrd = kernel.replace("vmlinuz", "initrd.img")
    for name in (kernel, initrd):
        subprocess.run(["mcopy", "-n", "-i", f"{disk}@@{BOOT_OFFSET}", f"::/{name}", str(work / name)],
                       check=True, env=MTOOLS_ENV)
    return disk, work / kernel, work / initrd, work


def test_two_boots_relay_keep_the_spool_and_a_read_only_root(card):
    disk, kernel, initrd, work = card
    sink_port, smtp_port = free_port(), free_port()
    (work / "mta-lite.toml").write_text(guest_config(sink_port))
    subprocess.run(["mcopy", "-i", f"{disk}@@{BOOT_OFFSET}", str(work / "mta-lite.toml"), "::/mta-lite.toml"],
                   check=True, env=MTOOLS_ENV)
    sink = Sink(sink_port)
    guest = Guest(disk, kernel, initrd, smtp_port, work / "console1.log")
    try:
        first = guest.wait_smtp(BOOT_DEADLINE_S)
        print(f"\nboot 1 (fresh card: data partition made, config installed): SMTP after {first:.0f} s")
        swaks(smtp_port, "boot-1-relayed")
        print(f"boot 1: relayed to the sink in {sink.wait_for('boot-1-relayed', DELIVERY_DEADLINE_S):.0f} s")
        sink.stop()
        deferred = guest.log().count("status=deferred")
        swaks(smtp_port, "boot-2-deferred")
        guest.wait_log(lambda text: text.count("status=deferred") > deferred, DELIVERY_DEADLINE_S)
    finally:
        guest.cut_power()
        sink.remove()
    log1 = guest.log()
    (work / "console1.saved").write_text(log1)
    assert "mta-lite-data: root file system mounted read-only" in log1, log1[-3000:]
    assert mtype(disk, "mta-lite.toml") is None, "the installed config left the boot partition"
    result = mtype(disk, "mta-lite-result.txt")
    assert result and result.startswith("OK generation"), result
    # The data partition holds etc/ (bound on /etc/mta-lite) and spool/.
    data = replayed_data(disk, work)
    installed = debugfs(data, 0, "cat /etc/mta-lite.toml")
    assert 'hostname = "relay-test.lan"' in installed and SECRET not in installed
    assert "g0000" in debugfs(data, 0, "ls /etc/secrets")
    deferred = [line.split("/")[5] for line in debugfs(data, 0, "ls -p /spool/deferred").splitlines()
                if line.count("/") >= 6 and line.split("/")[5] not in (".", "..")]
    assert len(deferred) == 1, "the mail deferred at boot 1 is in the spool"

    sink = Sink(sink_port)
    guest = Guest(disk, kernel, initrd, smtp_port, work / "console2.log")
    try:
        second = guest.wait_smtp(BOOT_DEADLINE_S)
        print(f"boot 2 (data partition kept): SMTP after {second:.0f} s")
        took = sink.wait_for("boot-2-deferred", DELIVERY_DEADLINE_S)
        print(f"boot 2: the mail deferred at boot 1 delivered {took:.0f} s later")
    finally:
        guest.cut_power()
        sink.remove()
    assert "mta-lite-data: root file system mounted read-only" in guest.log()
