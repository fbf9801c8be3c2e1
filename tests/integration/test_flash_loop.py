"""mta-lite-flash on real block devices: loop devices (`losetup`) stand for the SD card.

What is real here: the kernel's block layer and page cache (the verify must read past the
loop device's cache: a byte changed in the backing file behind the device is only seen if
the cache was dropped), O_EXCL on a device with a mounted ext4, the order of the system
calls (strace), a terminal (pty) for the progress bar and the typed confirmation, SIGINT
mid-write while the image comes slowly through a FIFO, and a card that stops taking data
(the backing file truncated and `losetup -c`: the kernel then answers ENOSPC; this kernel
has no device-mapper for an EIO target). The guards are also run end to end on a fake
/sys/block whose device nodes (mknod) point at a loop device, so that a guard that failed
would visibly write to it. The real / of this machine is checked by the guard function
only: a broken guard must not be able to write to it.

Needs root and losetup; every loop device is detached in teardown."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from mta_lite.config import generations as configgen
from mta_lite_tools.flash import cli
from mta_lite_tools.flash.devices import Roots, inspect_target, read_system, refusal, root_disks
from mta_lite_tools.flash.errors import TargetRefusedError
from mta_lite_tools.flash.writer import Card
from tests.support.flash import (BOOT_OFFSET, MIB, MTOOLS_ENV, FakeDisk, LoopDevice, digest, fake_sys, have, loop_skip_reason,
                             make_bmap, make_card_image, run)
from tests.support.stick import config_bytes
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(loop_skip_reason() is not None, reason=loop_skip_reason() or ""),
              pytest.mark.skipif(not have("sfdisk", "mkfs.vfat", "mcopy", "mtype", "bmaptool"),
                                 reason="needs fdisk, dosfstools, mtools, bmap-tools (tools/install-test-deps.sh)")]
FLASH = str(Path(sys.executable).with_name("mta-lite-flash"))
CARD_BYTES = 32 * MIB
# Long enough for a loaded 2-core CI machine to write a 16 MiB image; every wait polls.
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("image")
    path = make_card_image(base / "card.img")
    make_bmap(path)
    return path


@pytest.fixture
def loop(tmp_path):
    backing = tmp_path / "card.bin"
    backing.write_bytes(b"")
    os.truncate(backing, CARD_BYTES)
    with LoopDevice(str(backing)) as device:
        yield device


def _head(path: str, size: int = 4096) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def test_flash_loop_with_bmap_holds_the_image(image, loop):
    done = subprocess.run([FLASH, image, loop.path, "--yes"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"target: {loop.path} (unknown model, 33.6 MB, virtual)" in done.stdout
    assert digest(loop.backing, 16 * MIB) == digest(image)
    assert done.stderr == ""


def test_flash_loop_config_read_by_mtype_and_accepted_by_the_box(image, loop, tmp_path):
    config = tmp_path / "mta-lite.toml"
    config.write_bytes(config_bytes())
    done = subprocess.run([FLASH, image, loop.path, "--yes", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    on_card = run(["mtype", "-i", f"{loop.path}@@{BOOT_OFFSET}", "::/mta-lite.toml"], env=MTOOLS_ENV)
    assert on_card == config.read_bytes()
    (tmp_path / "box").mkdir()
    configgen.apply_config(str(tmp_path / "box" / "mta-lite.toml"), on_card, "boot:mta-lite.toml")


def test_flash_loop_broken_config_exits_78_and_the_card_stays_untouched(image, loop, tmp_path):
    config = tmp_path / "mta-lite.toml"
    config.write_bytes(config_bytes(admin_address="not an address"))
    done = subprocess.run([FLASH, image, loop.path, "--yes", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    assert done.stderr == (f"mta-lite-flash: {config}: admin_address: expected an address like "
                           "user@example.com, got 'not an address'\n")
    assert done.stdout == ""
    assert _head(loop.backing, 16 * MIB) == bytes(16 * MIB)


def test_flash_loop_byte_changed_on_the_card_found_by_verify(image, loop):
    changed_at = BOOT_OFFSET + 12345                # inside the FAT's mapped blocks

    def card_changes_a_byte(card):
        with open(loop.backing, "r+b") as handle:   # behind the device's back, as a failing card would
            handle.seek(changed_at)
            byte = handle.read(1)
            handle.seek(changed_at)
            handle.write(bytes([byte[0] ^ 0x10]))

    err = io.StringIO()
    status = cli.main([image, loop.path, "--yes"], before_verify=card_changes_a_byte,
                      streams=cli.Streams(io.StringIO(), io.StringIO(), err))
    assert status == 74
    assert f"verify failed: {loop.path} differs from the image at byte {changed_at} (bmap blocks 256-" in err.getvalue()


def _open_fifo_for_writing(fifo: Path, proc: subprocess.Popen) -> int:
    """Open the FIFO once the flash tool opened it for reading (polled, with a deadline)."""
    def opened() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:                             # ENXIO: no reader yet
            if proc.poll() is not None:
                raise AssertionError(f"mta-lite-flash exited without opening the image: {proc.communicate()}")
            return None
    fd = wait_until(opened, DEADLINE_S, what="mta-lite-flash to open the image", interval=0.01)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _feed(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _start_slow(image: str, loop: LoopDevice, tmp_path: Path) -> tuple[subprocess.Popen, int, bytes]:
    """mta-lite-flash reading the image from a FIFO (with the image's bmap beside it) that
    has been fed the first 8 MiB: the FAT's ranges are written, the head is not, and the tool
    waits for more. The pipe holds at most 64 KiB, so once the write returned the tool has
    read (and written) everything up to 64 KiB before 8 MiB."""
    fifo = tmp_path / "slow.img"
    os.mkfifo(fifo)
    (tmp_path / "slow.bmap").write_bytes(Path(image).with_suffix(".bmap").read_bytes())
    proc = subprocess.Popen([FLASH, str(fifo), loop.path, "--yes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    fd = _open_fifo_for_writing(fifo, proc)
    data = Path(image).read_bytes()
    _feed(fd, data[:8 * MIB])
    return proc, fd, data


def test_flash_loop_ctrl_c_mid_write_exits_130_card_incomplete(image, loop, tmp_path):
    proc, fd, data = _start_slow(image, loop, tmp_path)
    proc.send_signal(signal.SIGINT)
    # Ctrl-C on a terminal reaches every process of the pipeline, so the feeding side ends
    # too. Without that, a SIGINT that lands between two of the tool's reads of the pipe (in
    # C, where Python does not look at signals) would wait for the next byte of the image.
    os.close(fd)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 130
    assert err == ("mta-lite-flash: interrupted: the card is incomplete (it has no partition table yet, "
                   "so nothing will use it): write it again\n")
    assert "done" not in out
    with open(loop.backing, "rb") as card:
        assert card.read(4096) == bytes(4096)               # the head, written last, is not there
        card.seek(BOOT_OFFSET)
        assert card.read(4096) == data[BOOT_OFFSET:BOOT_OFFSET + 4096] != bytes(4096)   # the FAT is


def test_flash_loop_card_that_stops_taking_data_exits_74_card_incomplete(image, loop, tmp_path):
    proc, fd, data = _start_slow(image, loop, tmp_path)
    try:
        os.truncate(loop.backing, 0)                        # the card is gone
        run(["losetup", "-c", loop.path])
        try:
            _feed(fd, data[8 * MIB:])
        except BrokenPipeError:
            pass                                            # the tool stopped reading: expected
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 74
    assert re.fullmatch(rf"mta-lite-flash: writing {loop.path} failed at byte \d+: No space left on device; "
                        r"the card is incomplete \(it has no partition table yet, so nothing will use it\): "
                        r"write it again\n", err), err
    assert "done" not in out


def test_flash_loop_head_written_first_as_zeros_and_last_as_the_image(image, loop, tmp_path):
    if not have("strace"):
        pytest.skip("needs strace (tools/install-test-deps.sh)")
    trace = tmp_path / "trace.txt"
    run(["strace", "-f", "-s", "8", "-e", "trace=openat,pwrite64,fsync", "-o", str(trace),
         FLASH, image, loop.path, "--yes", "--no-verify"])
    lines = trace.read_text().splitlines()
    opened = next(re.search(r"= (\d+)$", line).group(1) for line in lines
                  if f'openat(AT_FDCWD, "{loop.path}"' in line and "O_EXCL" in line)
    calls = []
    for line in lines:
        if m := re.search(rf"pwrite64\({opened}, (\".*?\"(?:\.\.\.)?), (\d+), (\d+)\)", line):
            calls.append(("pwrite", int(m.group(3)), int(m.group(2)), m.group(1)))
        elif f"fsync({opened})" in line:
            calls.append(("fsync",))
    assert calls[0] == ("pwrite", 0, 4096, '"\\0\\0\\0\\0\\0\\0\\0\\0"...') and calls[1] == ("fsync",)
    assert [c[1:3] for c in calls[2:-2] if c[0] == "pwrite" and c[1] < 4096] == []
    assert calls[-2][:3] == ("pwrite", 0, 4096) and calls[-1] == ("fsync",)


def _in_pty(argv: list[str], answer: bytes | None = None) -> tuple[int, bytes]:
    """Run argv on a real terminal (100 x 30); type `answer` once it asks."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    output, deadline = b"", time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], deadline - time.monotonic())[0]:
                break
            try:
                chunk = os.read(fd, 65536)
            except OSError:                     # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if answer is not None and b"Type yes" in output:
                os.write(fd, answer)
                answer = None
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def test_flash_pty_progress_bars_show_bytes_rate_and_time_left(image, loop):
    status, output = _in_pty([FLASH, image, loop.path, "--yes"])
    assert status == 0, output
    text = output.decode("utf-8", "replace")
    for step in ("write", "verify"):
        assert re.search(rf"{step}: 100%\|.*\| [\d.]+[kM]?/[\d.]+[kM]? \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kM]?B/s\]", text), text


def test_flash_pty_typed_yes_writes_a_non_removable_disk(image, loop):
    status, output = _in_pty([FLASH, image, loop.path], answer=b"yes\n")
    assert status == 0, output
    assert f"{loop.path} (unknown model, 33.6 MB, virtual) is not removable.".encode() in output
    assert digest(loop.backing, 16 * MIB) == digest(image)


def test_flash_pty_answer_other_than_yes_writes_nothing(image, loop):
    status, output = _in_pty([FLASH, image, loop.path], answer=b"y\n")
    assert status == 73
    assert b"refused: not confirmed; nothing was written" in output
    assert _head(loop.backing, 16 * MIB) == bytes(16 * MIB)


def test_flash_loop_not_removable_without_yes_or_terminal_refused(image, loop):
    done = subprocess.run([FLASH, image, loop.path], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 73
    assert done.stderr.endswith("is not removable: give --yes to write to it anyway; nothing was written\n")
    assert _head(loop.backing, 16 * MIB) == bytes(16 * MIB)


@pytest.fixture
def mounted_loop(loop, tmp_path):
    if not have("mkfs.ext4"):
        pytest.skip("needs e2fsprogs")
    run(["mkfs.ext4", "-q", "-F", loop.path])
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    run(["mount", loop.path, str(mountpoint)])
    try:
        yield loop, mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)


def test_flash_loop_with_mounted_file_system_refused_by_guard_and_kernel(image, mounted_loop):
    loop, mountpoint = mounted_loop
    before = digest(loop.backing)
    done = subprocess.run([FLASH, image, loop.path, "--yes"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 73
    assert f"refused: {loop.path} is mounted on {mountpoint}: unmount it first" in done.stderr
    with pytest.raises(TargetRefusedError, match="it is in use"):       # O_EXCL: the kernel says no too
        Card.open(inspect_target(loop.path, Roots(), False), 16 * MIB)
    assert digest(loop.backing) == before


def test_flash_real_disk_holding_root_refused():
    roots = Roots()
    system = read_system(roots)
    disks = sorted(d for d in root_disks(system) if os.path.exists(f"/dev/{d}") and not d.startswith("dm-"))
    if not disks:
        pytest.skip("/ is not on a disk /sys/block lists (an overlay or network root)")
    target = inspect_target(f"/dev/{disks[0]}", roots, False)
    assert refusal(system, target, 1) == f"/dev/{disks[0]} holds / (the running system)"


# ------------------------------------------------------------------ fake sysfs, real device nodes

GUARDS = {
    "root disk": (FakeDisk(), [("MINE", "/", "/dev/sdb")], "holds / (the running system)"),
    "mounted partition": (FakeDisk(), [("7:250", "/media/me/BOOT", "/dev/sdb1")], "sdb1 is mounted on /media/me/BOOT"),
    "read-only": (FakeDisk(read_only=True), [], "is read-only"),
    "too small": (FakeDisk(size_bytes=8 * MIB), [], "is too small: 8.4 MB (8.0 MiB), the image is 16.0 MiB"),
    "not removable": (FakeDisk(removable=False, transport="ata"), [], "is not removable: give --yes"),
    "over 128 GB": (FakeDisk(size_bytes=256 * 10**9), [], "is larger than 128.0 GB: give --yes"),
}


def _fake_card(tmp_path: Path, loop: LoopDevice, disk: FakeDisk, mounts: list) -> Roots:
    major, minor = loop.rdev
    disk.dev = f"{major}:{minor}"
    disk.partitions = {"sdb1": "7:250"}
    mounts = [(disk.dev if dev == "MINE" else dev, point, source) for dev, point, source in mounts]
    roots = fake_sys(tmp_path / "fake", [disk], mounts)
    os.mknod(os.path.join(roots.dev, "sdb"), stat.S_IFBLK | 0o600, os.makedev(major, minor))
    return roots


@pytest.mark.parametrize("guard", GUARDS)
def test_flash_fake_sysfs_guard_refuses_and_the_device_stays_untouched(image, loop, tmp_path, guard):
    disk, mounts, message = GUARDS[guard]
    roots = _fake_card(tmp_path, loop, disk, mounts)
    err = io.StringIO()
    status = cli.main([image, os.path.join(roots.dev, "sdb")], roots=roots,
                      streams=cli.Streams(io.StringIO(), io.StringIO(), err))
    assert status == 73, err.getvalue()
    assert message in err.getvalue() and err.getvalue().endswith("; nothing was written\n")
    assert _head(loop.backing, 16 * MIB) == bytes(16 * MIB)


def test_flash_fake_sysfs_removable_card_written_without_yes(image, loop, tmp_path):
    roots = _fake_card(tmp_path, loop, FakeDisk(), [])
    out = io.StringIO()
    status = cli.main([image, os.path.join(roots.dev, "sdb")], roots=roots,
                      streams=cli.Streams(io.StringIO(), out, io.StringIO()))
    assert status == 0
    assert f"target: {roots.dev}/sdb (Generic- SD/MMC, 31.9 GB, usb)" in out.getvalue()
    assert digest(loop.backing, 16 * MIB) == digest(image)
