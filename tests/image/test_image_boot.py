"""The real SD-card image (make image-test): inspected without mounting, then booted twice in qemu.

MTA_LITE_IMAGE names the raw disk image `make image` left in build/image/disk.img; without it
every test here is skipped (they take minutes: `make test` does not run them).

The boot test runs qemu-system-aarch64 -M virt with the image's own kernel and initrd (taken
from its boot partition with mtools) and its own cmdline.txt (the console moved to the PL011, ttyAMA0, the
journal forwarded to it), virtio disk and network, user-mode networking with a hostfwd port on
127.0.0.1. A mta-lite.toml goes onto the boot partition with mcopy; swaks sends from the host;
smtp-sink on the host's loopback (10.0.2.2 from the guest) receives. First boot: the config is
installed and leaves the card, a mail is relayed, a second one is deferred (the sink is down)
and the power is cut. Second boot: the deferred mail is delivered from the spool on the data
partition. Only loopback and qemu's user-mode network are used.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from firmware.image import layout

IMAGE = os.environ.get("MTA_LITE_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE or not pathlib.Path(IMAGE).exists(),
                                reason="MTA_LITE_IMAGE not set: run `make image-test`")
BOOT_OFFSET = layout.BOOT_START_MIB * layout.MIB
ROOT_OFFSET = layout.partition_plan()[1].offset
DATA_OFFSET = layout.DATA_START_MIB * layout.MIB
# The card is this much larger than the image: room for the data partition the box makes.
CARD_EXTRA = "+768M"
# Full-system emulation of a Cortex-A53 on 2 busy cores: systemd, mkfs and Python are slow.
BOOT_DEADLINE_S = 900
DELIVERY_DEADLINE_S = 300


def debugfs(image: pathlib.Path, offset: int, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, f"{image}?offset={offset}"], capture_output=True,
                          text=True, check=True).stdout


def mtype(image: pathlib.Path, name: str) -> str | None:
    done = subprocess.run(["mtype", "-i", f"{image}@@{BOOT_OFFSET}", f"::/{name}"], capture_output=True,
                          env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


# ------------------------------------------------------------------ static inspection

def test_partitions_and_labels():
    dump = subprocess.run(["sfdisk", "-d", IMAGE], capture_output=True, text=True, check=True).stdout
    assert "label: dos" in dump and f"label-id: 0x{layout.DISK_ID:08x}" in dump
    assert dump.count("start=") == 2, "boot and root only: the box makes the data partition"
    blk = subprocess.run(["blkid", "-p", "-O", str(ROOT_OFFSET), "-o", "export", IMAGE], capture_output=True,
                         text=True).stdout
    assert f"LABEL={layout.ROOT_LABEL}" in blk and "TYPE=ext4" in blk
    listing = subprocess.run(["mdir", "-i", f"{IMAGE}@@{BOOT_OFFSET}", "::/"], capture_output=True, text=True,
                             check=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1")).stdout
    assert f"is {layout.BOOT_LABEL}" in listing


def test_file_systems_are_clean():
    work = pathlib.Path(IMAGE).parent
    for number, offset, size in ((1, BOOT_OFFSET, layout.BOOT_MIB), (2, ROOT_OFFSET, layout.ROOT_MIB)):
        part = work / f"check-p{number}.img"
        subprocess.run(["dd", f"if={IMAGE}", f"of={part}", "bs=1M", f"skip={offset // layout.MIB}",
                        f"count={size}", "conv=sparse", "status=none"], check=True)
        try:
            check = ["fsck.vfat", "-n", str(part)] if number == 1 else ["e2fsck", "-fn", str(part)]
            done = subprocess.run(check, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            part.unlink()


def test_boot_files():
    for name in ("config.txt", "cmdline.txt", "mta-lite.toml.example", "bootcode.bin", "start4.elf",
                 "bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-zero-2-w.dtb"):
        assert mtype(pathlib.Path(IMAGE), name) is not None, name
    config, cmdline = mtype(pathlib.Path(IMAGE), "config.txt"), mtype(pathlib.Path(IMAGE), "cmdline.txt")
    assert "arm_64bit=1" in config and "enable_uart=1" in config
    kernel = next(line.split("=", 1)[1] for line in config.splitlines() if line.startswith("kernel="))
    assert mtype(pathlib.Path(IMAGE), kernel.strip()) is not None
    assert cmdline == layout.cmdline()


def test_read_only_root_in_fstab_and_units_enabled():
    fstab = debugfs(pathlib.Path(IMAGE), ROOT_OFFSET, "cat /etc/fstab")
    assert fstab == layout.fstab()
    wants = debugfs(pathlib.Path(IMAGE), ROOT_OFFSET, "ls -l /etc/systemd/system/multi-user.target.wants")
    for unit in ("mta-lite.service", "mta-lite.path", "mta-lite-board.service", "mta-lite-firstboot.service",
                 "mta-lite-page.service", "mta-lite-page.path"):
        assert unit in wants, unit
    for unit in layout.DISABLED_UNITS:
        assert unit not in wants
    assert "mta-lite-data.service" in debugfs(pathlib.Path(IMAGE), ROOT_OFFSET,
                                              "ls -l /etc/systemd/system/local-fs.target.wants")


def test_package_importable_under_qemu_user(tmp_path):
    """The venv's mta-lite and board import in the image's own Python (qemu-user, a chroot of
    the root file system unpacked with debugfs rdump)."""
    root = tmp_path / "root"
    root.mkdir()
    for top in ("usr", "etc"):
        subprocess.run(["debugfs", "-R", f"rdump /{top} {root}", f"{IMAGE}?offset={ROOT_OFFSET}"],
                       capture_output=True, check=True)
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("sbin", "usr/sbin")):
        (root / link).symlink_to(target)
    probe = ("import mta_lite.cli, mta_lite_board.daemon, mta_lite_board.firstboot, lgpio, gpiozero, aiosmtplib, dns.resolver;"
             "print('ok', mta_lite.cli.__file__)")
    done = subprocess.run(["chroot", str(root), f"{layout.VENV}/bin/python3", "-c", probe], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok /usr/lib/mta-lite/venv/"), done.stderr
    version = subprocess.run(["chroot", str(root), "/usr/bin/mta-lite", "--help"], capture_output=True, text=True,
                             timeout=300)
    assert version.returncode == 0, version.stderr
