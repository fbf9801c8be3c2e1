"""flash (test support) — card images, bmaps, loop devices and fake sysfs trees for the flash tool's tests.

Peers: util-linux (`sfdisk` partitions an image file; `losetup` attaches a file as a real
block device), dosfstools (`mkfs.vfat --offset` formats the boot partition inside the image),
mtools (`mcopy` puts files on it, `mtype` reads them back), bmap-tools (`bmaptool create`
writes the bmap of a sparse image, `bmaptool copy` is the reference writer), and the xz,
zstd and gzip programs that pack release images. Nothing is mounted (the kernel here has
no vfat).

    make_card_image(path)                 # 16 MiB: MBR, FAT boot partition, data partition
    make_bmap(image, bmap)                # bmaptool create, the real peer
    bmap_xml(image, ranges)               # the same format by hand, for unit tests
    rechecksum(bmap_bytes)                # a bmap edited on purpose, with a valid own checksum
    pack(image, "xz" | "zstd" | "gzip")   # the packed copy beside it, by the real program
    LoopDevice(backing_file)              # losetup -f --show; detached on exit
    fake_sys(root, disks, mounts)         # a /sys/block tree and mount table: devices.Roots
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from mta_lite_tools.flash.devices import Roots

MIB = 1024 * 1024
BOOT_START_SECTOR = 2048            # 1 MiB, where sfdisk and the Pi images put it
BOOT_OFFSET = BOOT_START_SECTOR * 512
BOOT_SECTORS = 16384                # 8 MiB
DATA_START_SECTOR = BOOT_START_SECTOR + BOOT_SECTORS
MTOOLS_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "MTOOLS_SKIP_CHECK": "1"}


def run(argv: list[str], stdin: bytes | None = None, env: dict | None = None) -> bytes:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, env=env)
    if done.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return done.stdout


def have(*programs: str) -> bool:
    return all(shutil.which(p) for p in programs)


def make_card_image(path, size_mib: int = 16, data_kib: int = 256, seed: int = 1) -> str:
    """A sparse image like the box's: MBR; partition 1 FAT (8 MiB at 1 MiB) holding a
    "kernel"; partition 2 (Linux) with `data_kib` of random bytes at its start."""
    path = str(path)
    rng = random.Random(seed)
    run(["truncate", "-s", f"{size_mib}M", path])
    table = f"label: dos\nstart={BOOT_START_SECTOR}, size={BOOT_SECTORS}, type=c\nstart={DATA_START_SECTOR}, type=83\n"
    run(["sfdisk", "-q", path], stdin=table.encode())
    # mkfs.vfat takes the partition's size in KiB, and warns that the file is larger: fine.
    run(["mkfs.vfat", "--offset", str(BOOT_START_SECTOR), "-n", "BOOT", path, str(BOOT_SECTORS // 2)])
    run(["mcopy", "-i", f"{path}@@{BOOT_OFFSET}", "-", "::/kernel8.img"], stdin=rng.randbytes(20000), env=MTOOLS_ENV)
    with open(path, "r+b") as handle:
        handle.seek(DATA_START_SECTOR * 512)
        handle.write(rng.randbytes(data_kib * 1024))
    return path


def make_bmap(image: str, bmap: str | None = None) -> str:
    bmap = bmap or re.sub(r"\.img$", "", image) + ".bmap"
    run(["bmaptool", "create", "-o", bmap, image])
    return bmap


def bmap_xml(image: str, ranges: list[tuple[int, int]], block_size: int = 4096, version: str = "2.0") -> bytes:
    """bmaptool's format 2.0 for the given (first, last) block ranges of `image`."""
    with open(image, "rb") as handle:
        data = handle.read()
    blocks = -(-len(data) // block_size)
    lines = []
    for first, last in ranges:
        digest = hashlib.sha256(data[first * block_size:(last + 1) * block_size]).hexdigest()
        text = f"{first}-{last}" if last != first else f"{first}"
        lines.append(f'        <Range chksum="{digest}"> {text} </Range>')
    mapped = sum(last - first + 1 for first, last in ranges)
    xml = (f'<?xml version="1.0" ?>\n<bmap version="{version}">\n'
           f"    <ImageSize> {len(data)} </ImageSize>\n    <BlockSize> {block_size} </BlockSize>\n"
           f"    <BlocksCount> {blocks} </BlocksCount>\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
           f"    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {'0' * 64} </BmapFileChecksum>\n"
           "    <BlockMap>\n" + "\n".join(lines) + "\n    </BlockMap>\n</bmap>\n")
    return rechecksum(xml.encode())


def rechecksum(bmap: bytes) -> bytes:
    """The bmap with its BmapFileChecksum computed again (as bmaptool create computes it)."""
    match = re.search(rb"<BmapFileChecksum>\s*([0-9a-f]+)\s*</BmapFileChecksum>", bmap)
    start, end = match.span(1)
    zeroed = bmap[:start] + b"0" * (end - start) + bmap[end:]
    return bmap[:start] + hashlib.sha256(zeroed).hexdigest().encode() + bmap[end:]


def pack(image: str, kind: str) -> str:
    """The image packed by the real program, beside it (foo.img -> foo.img.xz)."""
    argv, suffix = {"xz": (["xz", "-k", "-f", "-0", "-T1"], ".xz"), "zstd": (["zstd", "-q", "-f", "-k"], ".zst"),
                    "gzip": (["gzip", "-k", "-f"], ".gz")}[kind]
    run(argv + [image])
    return image + suffix


def digest(path: str, length: int | None = None) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(length) if length else handle.read()).hexdigest()


class LoopDevice:
    """`losetup -f --show FILE`, a real block device over FILE; detached on exit."""

    def __init__(self, backing: str) -> None:
        self.backing = str(backing)
        self.path = ""

    def __enter__(self) -> "LoopDevice":
        self.path = run(["losetup", "-f", "--show", self.backing]).decode().strip()
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["losetup", "-d", self.path], capture_output=True, timeout=30)

    @property
    def rdev(self) -> tuple[int, int]:
        info = os.stat(self.path)
        return os.major(info.st_rdev), os.minor(info.st_rdev)


def loop_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "loop devices need root"
    if not have("losetup") or not os.path.exists("/dev/loop-control"):
        return "no losetup or /dev/loop-control on this machine"
    return None


# ------------------------------------------------------------------ fake sysfs

# Where sysfs puts a disk of each transport (the guards read the transport from this path).
_DEVICE_PATHS = {
    "usb": "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0",
    "mmc": "platform/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa",
    "nvme": "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0",
    "ata": "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0",
    "virtual": "virtual",
}


@dataclass
class FakeDisk:
    name: str = "sdb"
    dev: str = "8:16"
    size_bytes: int = 31_914_983_424            # a "32 GB" card
    removable: bool = True
    read_only: bool = False
    vendor: str = "Generic-"
    model: str = "SD/MMC"
    transport: str = "usb"
    partitions: dict[str, str] = field(default_factory=lambda: {"sdb1": "8:17", "sdb2": "8:18"})
    holders: dict[str, list[str]] = field(default_factory=dict)     # disk or partition name -> holders
    slaves: list[str] = field(default_factory=list)
    mmc_type: str = ""                          # "SD" or "MMC" for mmc disks


def _put(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text + "\n")


def fake_sys(root, disks: list[FakeDisk], mounts: list[tuple[str, str, str]] = ()) -> Roots:
    """A sysfs tree and a mount table under `root`; mounts are (MAJ:MIN, mount point, source)."""
    root = str(root)
    block = os.path.join(root, "sys", "block")
    os.makedirs(block, exist_ok=True)
    os.makedirs(os.path.join(root, "dev"), exist_ok=True)
    for disk in disks:
        real = os.path.join(root, "sys", "devices", _DEVICE_PATHS[disk.transport], "block", disk.name)
        for name, text in (("size", str(disk.size_bytes // 512)), ("ro", str(int(disk.read_only))),
                           ("removable", str(int(disk.removable))), ("dev", disk.dev)):
            _put(os.path.join(real, name), text)
        if disk.transport != "virtual":
            _put(os.path.join(real, "device", "vendor"), disk.vendor)
            _put(os.path.join(real, "device", "model"), disk.model)
        if disk.mmc_type:
            _put(os.path.join(real, "device", "type"), disk.mmc_type)
        for part, dev in disk.partitions.items():
            _put(os.path.join(real, part, "dev"), dev)
            _put(os.path.join(real, part, "partition"), part[-1])
        for owner, holders in disk.holders.items():
            base = real if owner == disk.name else os.path.join(real, owner)
            for holder in holders:
                os.makedirs(os.path.join(base, "holders", holder), exist_ok=True)
        for slave in disk.slaves:
            os.makedirs(os.path.join(real, "slaves", slave), exist_ok=True)
        os.makedirs(os.path.join(real, "holders"), exist_ok=True)
        os.symlink(os.path.relpath(real, block), os.path.join(block, disk.name))
    lines = [f"{20 + i} 1 {dev} / {point.replace(' ', chr(92) + '040')} rw,relatime shared:1 - ext4 {source} rw"
             for i, (dev, point, source) in enumerate(mounts)]
    _put(os.path.join(root, "mountinfo"), "\n".join(lines))
    return Roots(sys=os.path.join(root, "sys"), dev=os.path.join(root, "dev"),
                 mountinfo=os.path.join(root, "mountinfo"))
