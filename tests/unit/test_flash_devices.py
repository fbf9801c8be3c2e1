"""mta-lite-flash's guards (tools/mta_lite_tools/flash/devices.py) on a fake /sys/block and
mount table: every refusal, the confirmation rule and the list of candidates.

The fake trees are built by tests.support.flash.fake_sys() the way sysfs lays them out (disks
as links into /sys/devices, whose path tells the transport). The same guards against a real
loop device and real device nodes are in tests/integration/test_flash_loop.py."""

from __future__ import annotations

import io

import pytest

from mta_lite_tools.flash import cli
from mta_lite_tools.flash.devices import (Target, candidates, confirmation, describe, inspect_target, parse_mountinfo,
                                          read_system, refusal, root_disks)
from tests.support.flash import FakeDisk, fake_sys

IMAGE_SIZE = 800 * 1024 * 1024
ROOT_DISK = FakeDisk(name="nvme0n1", dev="259:0", size_bytes=512 * 10**9, removable=False, transport="nvme",
                     vendor="", model="Samsung SSD 980", partitions={"nvme0n1p1": "259:1", "nvme0n1p2": "259:2"})
ROOT_MOUNTS = [("259:2", "/", "/dev/nvme0n1p2"), ("259:1", "/boot/efi", "/dev/nvme0n1p1")]


def _system(tmp_path, *disks: FakeDisk, mounts=ROOT_MOUNTS):
    return read_system(fake_sys(tmp_path, [ROOT_DISK, *disks], list(mounts)))


def _block(name: str, dev: str = "") -> Target:
    return Target(f"/dev/{name}", "block", name, dev)


def test_refusal_removable_card_passes(tmp_path):
    system = _system(tmp_path, FakeDisk())
    assert refusal(system, _block("sdb", "8:16"), IMAGE_SIZE) is None
    assert describe(system, system.disks["sdb"]).endswith("(Generic- SD/MMC, 31.9 GB, usb)")


def test_refusal_disk_holding_root_refused(tmp_path):
    system = _system(tmp_path)
    assert "holds / (the running system)" in refusal(system, _block("nvme0n1"), IMAGE_SIZE)


def test_refusal_root_on_lvm_refuses_the_physical_disk(tmp_path):
    lvm = FakeDisk(name="dm-0", dev="253:0", removable=False, transport="virtual", partitions={},
                   slaves=["sda2"])
    sda = FakeDisk(name="sda", dev="8:0", removable=False, transport="ata", partitions={"sda1": "8:1", "sda2": "8:2"},
                   holders={"sda2": ["dm-0"]})
    system = read_system(fake_sys(tmp_path, [lvm, sda], [("253:0", "/", "/dev/mapper/vg-root")]))
    assert root_disks(system) == {"dm-0", "sda"}
    assert "holds /" in refusal(system, _block("sda"), IMAGE_SIZE)


def test_refusal_mounted_partition_refused_with_its_mount_point(tmp_path):
    system = _system(tmp_path, FakeDisk(), mounts=ROOT_MOUNTS + [("8:18", "/media/me/my card", "/dev/sdb2")])
    reason = refusal(system, _block("sdb"), IMAGE_SIZE)
    assert reason.endswith("sdb2 is mounted on /media/me/my card: unmount it first "
                           f"(udisksctl unmount -b {system.path('sdb2')})")


def test_refusal_mount_found_by_source_name_refused(tmp_path):
    """btrfs reports an anonymous device number in mountinfo: the source names the partition."""
    system = _system(tmp_path, FakeDisk(), mounts=ROOT_MOUNTS + [("0:45", "/mnt", "/dev/sdb1")])
    assert "sdb1 is mounted on /mnt" in refusal(system, _block("sdb"), IMAGE_SIZE)


def test_refusal_whole_disk_file_system_mounted_refused(tmp_path):
    system = _system(tmp_path, FakeDisk(partitions={}), mounts=ROOT_MOUNTS + [("8:16", "/media/stick", "/dev/sdb")])
    assert "sdb is mounted on /media/stick" in refusal(system, _block("sdb"), IMAGE_SIZE)


def test_refusal_partition_held_by_dm_crypt_refused(tmp_path):
    system = _system(tmp_path, FakeDisk(holders={"sdb2": ["dm-3"]}))
    assert refusal(system, _block("sdb"), IMAGE_SIZE).endswith("is in use by dm-3 (LVM, RAID or dm-crypt)")


def test_refusal_read_only_card_refused(tmp_path):
    system = _system(tmp_path, FakeDisk(read_only=True))
    assert "is read-only (is the card's lock switch on?)" in refusal(system, _block("sdb"), IMAGE_SIZE)


def test_refusal_smaller_than_the_image_refused(tmp_path):
    system = _system(tmp_path, FakeDisk(size_bytes=512 * 1024 * 1024))
    reason = refusal(system, _block("sdb"), IMAGE_SIZE)
    assert "is too small: 536.9 MB (512.0 MiB), the image is 800.0 MiB" in reason


def test_refusal_empty_card_reader_refused(tmp_path):
    system = _system(tmp_path, FakeDisk(size_bytes=0, partitions={}))
    assert "has no medium" in refusal(system, _block("sdb"), IMAGE_SIZE)


def test_refusal_partition_instead_of_disk_names_the_disk(tmp_path):
    system = _system(tmp_path, FakeDisk())
    reason = refusal(system, _block("sdb1"), IMAGE_SIZE)
    assert reason == f"/dev/sdb1 is a partition of {system.path('sdb')}: give the whole card, {system.path('sdb')}"


def test_refusal_device_node_not_matching_sysfs_refused(tmp_path):
    system = _system(tmp_path, FakeDisk())
    assert "is device 8:32, but the kernel's sdb is 8:16" in refusal(system, _block("sdb", "8:32"), IMAGE_SIZE)


def test_refusal_disk_unknown_to_sysfs_refused(tmp_path):
    assert "not a disk the kernel lists" in refusal(_system(tmp_path), _block("sdz"), IMAGE_SIZE)


def test_refusal_regular_file_without_to_file_refused(tmp_path):
    path = tmp_path / "card.bin"
    path.write_bytes(b"")
    target = inspect_target(str(path), fake_sys(tmp_path / "fake", []), to_file=False)
    assert target.kind == "file"
    assert refusal(_system(tmp_path / "sys"), target, IMAGE_SIZE) == (
        f"{path} is not a block device (to write the image into a file, give --to-file)")
    assert refusal(_system(tmp_path / "sys2"), target, IMAGE_SIZE, to_file=True) is None


def test_refusal_character_device_refused_even_with_to_file(tmp_path):
    target = inspect_target("/dev/null", fake_sys(tmp_path, []), to_file=True)
    assert refusal(_system(tmp_path / "sys"), target, IMAGE_SIZE, to_file=True) == (
        "/dev/null is neither a regular file nor a block device")


def test_refusal_missing_device_refused_unless_to_file(tmp_path):
    target = inspect_target(str(tmp_path / "sdq"), fake_sys(tmp_path, []), to_file=False)
    assert refusal(_system(tmp_path / "sys"), target, IMAGE_SIZE).endswith("sdq: no such device")
    assert refusal(_system(tmp_path / "sys2"), target, IMAGE_SIZE, to_file=True) is None


@pytest.mark.parametrize("disk, expected", [
    (FakeDisk(), None),
    (FakeDisk(removable=False, transport="ata"), "is not removable"),
    (FakeDisk(size_bytes=256 * 10**9), "is larger than 128.0 GB"),
    (FakeDisk(removable=False, size_bytes=2 * 10**12), "is not removable and is larger than 128.0 GB"),
    (FakeDisk(size_bytes=127_865_454_592), None),                      # a "128 GB" card
])
def test_confirmation_asked_for_fixed_or_large_disks(tmp_path, disk, expected):
    assert confirmation(_system(tmp_path, disk).disks["sdb"]) == expected


def test_confirmation_sd_card_in_built_in_reader_counts_as_removable(tmp_path):
    sd = FakeDisk(name="mmcblk0", dev="179:0", removable=False, transport="mmc", mmc_type="SD",
                  partitions={"mmcblk0p1": "179:1"})
    emmc = FakeDisk(name="mmcblk1", dev="179:8", removable=False, transport="mmc", mmc_type="MMC", partitions={})
    system = _system(tmp_path, sd, emmc)
    assert confirmation(system.disks["mmcblk0"]) is None
    assert confirmation(system.disks["mmcblk1"]) == "is not removable"
    assert [d.name for d in candidates(system)] == ["mmcblk0"]


def test_candidates_lists_removable_disks_only(tmp_path):
    fixed = FakeDisk(name="sda", dev="8:0", removable=False, transport="ata", partitions={})
    card = FakeDisk(name="sdc", dev="8:32", partitions={"sdc1": "8:33"})
    system = _system(tmp_path, fixed, card)
    assert [d.name for d in candidates(system)] == ["sdc"]


def test_parse_mountinfo_reads_device_point_and_source():
    text = ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
            "95 27 8:17 / /media/me/My\\040Card rw,nosuid shared:52 master:1 - vfat /dev/sdb1 rw\n"
            "garbage line\n")
    assert parse_mountinfo(text) == [("254:0", "/", "/dev/vda"), ("8:17", "/media/me/My Card", "/dev/sdb1")]


def test_cli_without_device_lists_candidates_and_writes_nothing(tmp_path):
    roots = fake_sys(tmp_path, [ROOT_DISK, FakeDisk(), FakeDisk(name="sdc", dev="8:32", partitions={"sdc1": "8:33"},
                                                                model="Flash Drive", vendor="SanDisk")],
                     ROOT_MOUNTS + [("8:33", "/media/stick", "/dev/sdc1")])
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["nothing.img"], roots=roots, streams=cli.Streams(io.StringIO(), out, err)) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "removable disks (give the one that is your card as DEVICE):"
    assert lines[1].split() == [f"{roots.dev}/sdb", "31.9", "GB", "usb", "Generic-", "SD/MMC"]
    assert "sdc" in lines[2] and "SanDisk Flash Drive" in lines[2] and "(refused:" in lines[2]
    assert "mounted on /media/stick" in lines[2]
    assert len(lines) == 3 and err.getvalue() == ""


def test_cli_without_device_and_no_removable_disk_says_so(tmp_path):
    out = io.StringIO()
    assert cli.main(["x.img"], roots=fake_sys(tmp_path, [ROOT_DISK], ROOT_MOUNTS),
                    streams=cli.Streams(io.StringIO(), out, io.StringIO())) == 0
    assert out.getvalue().startswith("no removable disk found")
