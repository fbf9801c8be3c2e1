"""devices — what a target device is, and the guards that refuse to write to it.

    roots = Roots()                             # /sys, /dev, /proc/self/mountinfo (tests: fakes)
    system = read_system(roots)                 # every disk in <sys>/block, and the mount table
    target = inspect_target(path, roots, to_file)
    refusal(system, target, image_size)         # pure: why not to write there, or None
    confirmation(disk)                          # pure: why to ask first (--yes), or None
    candidates(system)                          # pure: the removable disks, for the list

Facts come from sysfs (<sys>/block/NAME: size in 512-byte sectors, ro, removable, dev,
holders, slaves, partitions as subdirectories with a `partition` file, device/model or
device/name) and from the mount table (/proc/self/mountinfo). The three roots are
parameters, so that every guard can be tested on a fake tree.

Guarantees: refusal() says no, with a one-line reason, to: anything that is not a block
device (unless --to-file), a partition instead of a whole disk, a disk the kernel does not
list, the disk holding / (also through LVM or dm-crypt), a disk with any mounted partition
or any holder (LVM, RAID, dm-crypt), a read-only disk, an empty card reader, a disk smaller
than the image. confirmation() asks for --yes for a disk that is not removable or is larger
than LARGE_DISK_BYTES. The writer adds the kernel's own refusal on top (O_EXCL, see writer).
Must never: open a device for writing, or change anything in /sys or /dev.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from .progress import human_bytes, human_disk

# sysfs gives sizes in 512-byte units, whatever the device's own sector size (block/genhd.c).
SYSFS_SECTOR_BYTES = 512
# A Raspberry Pi card is 8 to 128 GB (a "128 GB" card holds about 125-128 * 10^9 bytes). A
# larger disk is much more likely a backup drive than the card: ask before writing to it.
LARGE_DISK_BYTES = 128 * 10**9
# sysfs path pieces -> transport, checked in this order (a card reader on USB is "usb").
_TRANSPORTS = (("/usb", "usb"), ("/mmc_host/", "mmc"), ("/nvme", "nvme"), ("/ata", "ata"),
               ("/virtio", "virtio"), ("/virtual/", "virtual"))


@dataclass(frozen=True)
class Roots:
    sys: str = "/sys"
    dev: str = "/dev"
    mountinfo: str = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Partition:
    name: str                   # "sdb1", "mmcblk0p1"
    dev: str                    # "8:17"
    holders: tuple[str, ...]    # devices built on it: "dm-0"


@dataclass(frozen=True)
class Disk:
    name: str                   # "sdb"
    dev: str                    # "8:16"
    size_bytes: int
    read_only: bool
    removable: bool
    model: str
    transport: str              # "usb", "mmc", "nvme", "ata", "virtio", "virtual", "unknown"
    partitions: tuple[Partition, ...]
    holders: tuple[str, ...]
    slaves: tuple[str, ...]     # what a dm or md device is built on


@dataclass(frozen=True)
class Mount:
    dev: str                    # "MAJ:MIN" of the mounted file system
    mountpoint: str
    name: str                   # kernel name of its source device, "" if it has none


@dataclass(frozen=True)
class System:
    disks: dict[str, Disk]
    mounts: tuple[Mount, ...]
    dev_root: str

    def path(self, name: str) -> str:
        return os.path.join(self.dev_root, name)


@dataclass(frozen=True)
class Target:
    path: str                   # as given
    kind: str                   # "block", "file", "missing", "other"
    name: str = ""              # kernel name of a block device
    node_dev: str = ""          # "MAJ:MIN" of the device node


# ------------------------------------------------------------------ reading the facts

def read_system(roots: Roots) -> System:
    block = os.path.join(roots.sys, "block")
    disks = {name: _read_disk(os.path.join(block, name), name) for name in sorted(_listdir(block))}
    try:
        with open(roots.mountinfo, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""               # no mount table: every mount check then passes, O_EXCL still guards
    mounts = tuple(Mount(dev, point, _source_name(source, roots.dev))
                   for dev, point, source in parse_mountinfo(text))
    return System(disks, mounts, roots.dev)


def _read_disk(path: str, name: str) -> Disk:
    transport = _transport(os.path.realpath(path), name)
    removable = _read(path, "removable") == "1"
    # A card in a laptop's built-in reader is an mmc device that says removable=0; its
    # device/type tells an SD card from soldered eMMC.
    if transport == "mmc" and _read(path, "device/type") == "SD":
        removable = True
    model = " ".join(filter(None, (_read(path, "device/vendor"),
                                   _read(path, "device/model") or _read(path, "device/name"))))
    partitions = tuple(Partition(p, _read(path, f"{p}/dev"), tuple(_listdir(os.path.join(path, p, "holders"))))
                       for p in sorted(_listdir(path)) if os.path.isfile(os.path.join(path, p, "partition")))
    size = _read(path, "size")
    return Disk(name=name, dev=_read(path, "dev"), size_bytes=int(size) * SYSFS_SECTOR_BYTES if size.isdigit() else 0,
                read_only=_read(path, "ro") == "1", removable=removable, model=model, transport=transport,
                partitions=partitions, holders=tuple(_listdir(os.path.join(path, "holders"))),
                slaves=tuple(_listdir(os.path.join(path, "slaves"))))


def _transport(real_path: str, name: str) -> str:
    for piece, transport in _TRANSPORTS:
        if piece in real_path:
            return transport
    return "mmc" if name.startswith("mmcblk") else "unknown"


def _read(base: str, relative: str) -> str:
    """One sysfs value, "" if the file is absent (a card pulled while we look is absent too)."""
    try:
        with open(os.path.join(base, relative), encoding="utf-8", errors="replace") as handle:
            return " ".join(handle.read().split())
    except OSError:
        return ""


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(MAJ:MIN, mount point, source) per line of /proc/self/mountinfo (proc(5)): fields up
    to " - " are ID, parent, MAJ:MIN, root, mount point, options, optional fields; after it
    come type, source, super options. Blanks in names are escaped as octal (\\040)."""
    out = []
    for line in text.splitlines():
        left, separator, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if separator and len(fields) >= 5 and len(rest) >= 2:
            out.append((fields[2], _unescape(fields[4]), _unescape(rest[1])))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _source_name(source: str, dev_root: str) -> str:
    """The kernel name behind a mount source like /dev/sdb1 or /dev/mapper/root ("dm-0")."""
    if not source.startswith("/dev/"):
        return ""
    root = os.path.realpath(dev_root)
    real = os.path.realpath(os.path.join(root, source[len("/dev/"):]))
    return os.path.relpath(real, root) if real.startswith(root + os.sep) else ""


def inspect_target(path: str, roots: Roots, to_file: bool) -> Target:
    """What `path` is; block devices by their kernel name under the /dev root."""
    real = os.path.realpath(path)
    try:
        info = os.stat(real)
    except FileNotFoundError:
        return Target(path, "missing")
    if stat.S_ISBLK(info.st_mode):
        root = os.path.realpath(roots.dev)
        name = os.path.relpath(real, root) if real.startswith(root + os.sep) else ""
        return Target(path, "block", name, f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}")
    return Target(path, "file" if stat.S_ISREG(info.st_mode) else "other")


# ------------------------------------------------------------------ the guards, pure

def refusal(system: System, target: Target, image_size: int, to_file: bool = False) -> str | None:
    """Why `target` must not be written (one line), or None."""
    if target.kind != "block":
        return _file_refusal(target, to_file)
    found = find(system, target.name)
    if found is None:
        return f"{target.path} is not a disk the kernel lists in /sys/block"
    disk, partition = found
    if partition is not None:
        return f"{target.path} is a partition of {system.path(disk.name)}: give the whole card, {system.path(disk.name)}"
    if target.node_dev and disk.dev and target.node_dev != disk.dev:
        return f"{target.path} is device {target.node_dev}, but the kernel's {disk.name} is {disk.dev}"
    return disk_refusal(system, disk, image_size)


def _file_refusal(target: Target, to_file: bool) -> str | None:
    if target.kind == "missing":
        return None if to_file else f"{target.path}: no such device"
    if target.kind == "file" and to_file:
        return None
    if to_file:
        return f"{target.path} is neither a regular file nor a block device"
    return f"{target.path} is not a block device (to write the image into a file, give --to-file)"


def disk_refusal(system: System, disk: Disk, image_size: int) -> str | None:
    """The guards that concern the whole disk, in order of how much they matter."""
    path = system.path(disk.name)
    if disk.name in root_disks(system):
        return f"{path} holds / (the running system)"
    mounts = mounted(system, disk)
    if mounts:
        name, mountpoint = mounts[0]
        return (f"{system.path(name)} is mounted on {mountpoint}: unmount it first "
                f"(udisksctl unmount -b {system.path(name)})")
    holders = disk.holders + tuple(h for p in disk.partitions for h in p.holders)
    if holders:
        return f"{path} is in use by {', '.join(sorted(set(holders)))} (LVM, RAID or dm-crypt)"
    if disk.read_only:
        return f"{path} is read-only (is the card's lock switch on?)"
    if disk.size_bytes == 0:
        return f"{path} has no medium (is there a card in the reader?)"
    if disk.size_bytes < image_size:
        return (f"{path} is too small: {human_disk(disk.size_bytes)} ({human_bytes(disk.size_bytes)}), "
                f"the image is {human_bytes(image_size)}")
    return None


def confirmation(disk: Disk) -> str | None:
    """Why to ask before writing (--yes, or a typed "yes" on a terminal), or None."""
    reasons = []
    if not disk.removable:
        reasons.append("is not removable")
    if disk.size_bytes > LARGE_DISK_BYTES:
        reasons.append(f"is larger than {human_disk(LARGE_DISK_BYTES)}")
    return " and ".join(reasons) or None


def candidates(system: System) -> list[Disk]:
    """The removable disks, the only ones worth suggesting."""
    roots = root_disks(system)
    return [d for d in system.disks.values() if d.removable and d.name not in roots]


def describe(system: System, disk: Disk) -> str:
    return (f"{system.path(disk.name)} ({disk.model or 'unknown model'}, {human_disk(disk.size_bytes)}, "
            f"{disk.transport})")


def find(system: System, name: str) -> tuple[Disk, Partition | None] | None:
    """The disk `name` is, or the disk and partition it is."""
    if name in system.disks:
        return system.disks[name], None
    for disk in system.disks.values():
        for partition in disk.partitions:
            if partition.name == name:
                return disk, partition
    return None


def mounted(system: System, disk: Disk) -> list[tuple[str, str]]:
    """(device name, mount point) of every mount on the disk or one of its partitions."""
    names = {disk.name: disk.dev, **{p.name: p.dev for p in disk.partitions}}
    devs = {dev: name for name, dev in names.items() if dev}
    return [(devs.get(m.dev) or m.name, m.mountpoint) for m in system.mounts
            if m.dev in devs or m.name in names]


def root_disks(system: System) -> set[str]:
    """The disks the running system's / lives on, through partitions, dm and md devices."""
    roots = [m for m in system.mounts if m.mountpoint == "/"]
    if not roots:
        return set()
    mount = roots[-1]           # the last mount on / is the one in effect
    by_dev = {d.dev: d.name for d in system.disks.values() if d.dev}
    by_dev.update({p.dev: p.name for d in system.disks.values() for p in d.partitions if p.dev})
    start = by_dev.get(mount.dev) or mount.name
    return _disks_below(system, start, set()) if start else set()


def _disks_below(system: System, name: str, seen: set[str]) -> set[str]:
    if name in seen:
        return set()
    seen.add(name)
    found = find(system, name)
    if found is None:
        return set()
    disk, _ = found
    below = {disk.name}
    for slave in disk.slaves:
        below |= _disks_below(system, slave, seen)
    return below
