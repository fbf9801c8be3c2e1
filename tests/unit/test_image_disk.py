"""A reduced SD-card image, made by the recipe's own code from a tiny stand-in root tree and
inspected without mounting: sfdisk -d, mdir/mtype, debugfs, e2fsck -n, fsck.vfat -n.

The same functions as `make image` lay it out (firmware/image/build.py: firmware files, fstab,
units enabled, boot files; disk.py: partitions and file systems), with small partitions and
no Debian inside, so it takes seconds on a machine with no cached root file system. Needs
dosfstools, mtools, e2fsprogs, fdisk, faketime and bmap-tools (tools/install-test-deps.sh).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess

import pytest

from firmware.image import build, disk, layout
from mta_lite_tools.flash import bmap as flash_bmap
from mta_lite_tools.flash import bootconfig

pytestmark = pytest.mark.skipif(not all(shutil.which(p) for p in ("mkfs.vfat", "mcopy", "mke2fs", "sfdisk",
                                                                   "debugfs", "systemctl", "bmaptool")),
                                reason="image tools missing: bash tools/install-test-deps.sh")
PLAN = layout.partition_plan(boot_mib=40, root_mib=24)
SDE = 1700000000
ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def stand_in_root(root: pathlib.Path) -> None:
    """What the cached Debian root provides that the recipe touches: raspi-firmware's boot files."""
    firmware = root / "boot/firmware"
    firmware.mkdir(parents=True)
    (firmware / "config.txt").write_text("arm_64bit=1\nkernel=vmlinuz-6.12.0-test-arm64\n")
    (firmware / "vmlinuz-6.12.0-test-arm64").write_bytes(b"\0kernel" * 1000)
    (firmware / "bcm2711-rpi-4-b.dtb").write_bytes(b"\xd0\x0d\xfe\xed")
    for top in ("etc", "usr/lib/systemd/system", "var/log", "tmp"):
        (root / top).mkdir(parents=True, exist_ok=True)


def make_image(work: pathlib.Path, name: str) -> pathlib.Path:
    root, boot = work / f"{name}-root", work / f"{name}-boot"
    stand_in_root(root)
    build.install_firmware(root)
    build.enable_units(root, tuple(u for u in layout.ENABLED_UNITS if u.startswith("mta-lite")))
    build.stamp_build_time(root, SDE)
    build.boot_files(root, boot)
    build.clamp_mtimes(root, SDE)
    build.clamp_mtimes(boot, SDE)
    return disk.make_disk(work / f"{name}.img", boot, root, PLAN, SDE)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("image"), "a")


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=ENV).stdout


def mtype(image: pathlib.Path, name: str) -> str:
    return run("mtype", "-i", f"{image}@@{PLAN[0].offset}", f"::/{name}")


def debugfs(image: pathlib.Path, command: str) -> str:
    return run("debugfs", "-R", command, f"{image}?offset={PLAN[1].offset}")


def test_partition_table_is_the_plan(image):
    dump = run("sfdisk", "-d", str(image))
    assert "label: dos" in dump and "label-id: 0x6d74616c" in dump
    assert f"{image}1 : start=        8192, size=       81920, type=c, bootable" in dump
    assert f"{image}2 : start=       90112, size=       49152, type=83" in dump
    assert image.stat().st_size == layout.image_bytes(PLAN)


def test_boot_partition_holds_firmware_cmdline_config_and_example(image):
    listing = run("mdir", "-i", f"{image}@@{PLAN[0].offset}", "::/")
    assert f"is {layout.BOOT_LABEL}" in listing
    assert mtype(image, "cmdline.txt") == layout.cmdline()
    config = mtype(image, "config.txt")
    assert "kernel=vmlinuz-6.12.0-test-arm64" in config and "enable_uart=1" in config
    assert 'hostname = "relay.home.lan"' in mtype(image, "mta-lite.toml.example")
    assert mtype(image, "vmlinuz-6.12.0-test-arm64")


def test_root_holds_fstab_units_enabled_and_no_boot_files(image):
    assert debugfs(image, "cat /etc/fstab") == layout.fstab()
    wants = debugfs(image, "ls -l /etc/systemd/system/multi-user.target.wants")
    for unit in ("mta-lite.service", "mta-lite.path", "mta-lite-board.service", "mta-lite-firstboot.service",
                 "mta-lite-maillog.service"):
        assert unit in wants
    for unit in layout.DISABLED_UNITS:
        assert unit not in wants
    assert "mta-lite-data.service" in debugfs(image, "ls -l /etc/systemd/system/local-fs.target.wants")
    assert "config.txt" not in debugfs(image, "ls /boot/firmware"), "boot files only on the FAT"
    assert debugfs(image, "cat /usr/lib/mta-lite/image.conf") == layout.image_conf()
    assert "mta-lite-data" in debugfs(image, "ls /usr/lib/mta-lite")
    assert debugfs(image, f"cat {layout.BUILD_TIME_FILE}") == f"{SDE}\n"     # the relay's clock floor


def test_file_systems_check_clean(image, tmp_path):
    for part in PLAN:
        piece = tmp_path / f"p{part.number}.img"
        subprocess.run(["dd", f"if={image}", f"of={piece}", "bs=1M", f"skip={part.start_mib}",
                        f"count={part.size_mib}", "status=none"], check=True)
        check = ["fsck.vfat", "-n", str(piece)] if part.fstype == "vfat" else ["e2fsck", "-fn", str(piece)]
        done = subprocess.run(check, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_nothing_is_dated_after_the_epoch(image):
    stat = debugfs(image, "stat /etc/fstab")
    assert "2023" in stat.split("ctime:")[1].splitlines()[0]
    assert "2023-11-14" in run("mdir", "-i", f"{image}@@{PLAN[0].offset}", "::/")


def test_two_builds_are_the_same_bytes(image, tmp_path):
    again = make_image(tmp_path, "b")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (image, again)]
    assert digest[0] == digest[1]


def test_bmap_maps_only_data_and_the_flash_tool_reads_it(image, tmp_path):
    out = tmp_path / "a.bmap"
    subprocess.run(["bmaptool", "--quiet", "create", "--output", str(out), str(image)], check=True)
    parsed = flash_bmap.load_bmap(str(out))
    assert parsed.image_size == image.stat().st_size
    assert 0 < parsed.mapped_blocks * parsed.block_size < image.stat().st_size // 2
    first = image.read_bytes()[:512]
    boot = bootconfig.boot_partition(first, str(image), image.stat().st_size)
    assert boot.start == PLAN[0].offset and boot.number == 1
