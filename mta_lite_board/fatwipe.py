"""fatwipe — rewrite a file on a FAT stick so that its old bytes are gone from the stick too.

    wiped = rewrite_wiping(runner, device, "mta-lite.toml", new_bytes)
    Wiped(complete=True, problem="")

Replacing a file on FAT (mtools' `mcopy -o`, or any PC) frees its clusters and writes the new
content wherever the allocator points: on FAT32 that is after the last cluster handed out (the
FSInfo hint), so the old clusters, password and all, stay on the stick until something else
happens to reuse them. Sticks are lost and lent. So: note the file's clusters (`mshowfat`),
rewrite it with mtools (which keeps the directory and both FATs right), note its new clusters,
then overwrite with zeros every old cluster the new file does not use, and the slack after the
new file's last byte, directly on the device, and read those bytes back to check that no
secret is left in them.

The device's geometry (sector and cluster size, where the data area starts) comes from its
boot sector, checked for sanity: only ever bytes inside the data area, at clusters mtools named
for this one file, are written. A geometry or chain that does not add up is no wipe, and says so.
Guarantees: the file's new content is in place whatever the wipe does; `complete` is True only
if the file reads back as written and every old byte it no longer holds read back as zero.
Must never: write outside the clusters of this file, or write at all to a stick mtools could not
rewrite.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from mta_lite_board.mtools import Runner, StickReadError, StickWriteError, clusters, read_file, write_file

BOOT_SECTOR_BYTES = 512
SECTOR_SIZES = (512, 1024, 2048, 4096)


class GeometryError(ValueError):
    """The boot sector does not describe a FAT file system we can compute offsets in."""


@dataclass(frozen=True)
class Geometry:
    cluster_bytes: int
    data_offset: int        # byte offset of cluster 2
    clusters: int           # number of data clusters

    def offset(self, cluster: int) -> int:
        if not 2 <= cluster < self.clusters + 2:
            raise GeometryError(f"cluster {cluster} is outside the data area")
        return self.data_offset + (cluster - 2) * self.cluster_bytes


@dataclass(frozen=True)
class Wiped:
    complete: bool
    problem: str = ""       # why not, for a person


def parse_boot_sector(boot: bytes, device_bytes: int) -> Geometry:
    """The geometry from a FAT12/16/32 boot sector (its BIOS parameter block)."""
    if len(boot) < BOOT_SECTOR_BYTES:
        raise GeometryError("the boot sector is short")
    sector, per_cluster, reserved, fats, root_entries, total16 = struct.unpack_from("<HBHBHH", boot, 11)
    fat16, = struct.unpack_from("<H", boot, 22)
    total32, fat32 = struct.unpack_from("<II", boot, 32)
    fat_sectors, total = fat16 or fat32, total16 or total32
    if sector not in SECTOR_SIZES or per_cluster not in (1, 2, 4, 8, 16, 32, 64, 128):
        raise GeometryError("sector or cluster size is not one FAT allows")
    if reserved < 1 or fats not in (1, 2) or fat_sectors < 1 or total < 1:
        raise GeometryError("reserved sectors, FAT count or sizes are not sane")
    first_data = reserved + fats * fat_sectors + -(-root_entries * 32 // sector)
    count = (total - first_data) // per_cluster
    if count < 1 or total * sector > device_bytes:
        raise GeometryError("the file system is larger than the device")
    return Geometry(sector * per_cluster, first_data * sector, count)


def read_geometry(device: str) -> Geometry:
    with open(device, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
        return parse_boot_sector(handle.read(BOOT_SECTOR_BYTES), size)


def wipe_ranges(geometry: Geometry, old: list[int], new: list[int], new_size: int) -> list[tuple[int, int]]:
    """(offset, length) of every byte the old file had that the new one does not hold now:
    old clusters outside the new chain, and the new chain's last cluster after its last byte."""
    kept = set(new)
    ranges = [(geometry.offset(cluster), geometry.cluster_bytes) for cluster in old if cluster not in kept]
    used = new_size - (len(new) - 1) * geometry.cluster_bytes if new else 0
    if new and 0 < used < geometry.cluster_bytes:
        ranges.append((geometry.offset(new[-1]) + used, geometry.cluster_bytes - used))
    return ranges


def rewrite_wiping(runner: Runner, device: str, name: str, data: bytes) -> Wiped:
    """Rewrite `name` with `data` and wipe what it held (see the module docstring);
    StickWriteError if the file itself could not be rewritten."""
    try:
        old = clusters(runner, device, name)
    except StickReadError as exc:
        old, before = None, str(exc)
    write_file(runner, device, name, data)
    if old is None:
        return Wiped(False, f"its old clusters could not be found ({before})")
    try:
        new = clusters(runner, device, name)
        if read_file(runner, device, name, len(data)) != data:
            return Wiped(False, "the rewritten file does not read back as written")
        geometry = read_geometry(device)
        ranges = wipe_ranges(geometry, old, new, len(data))
        _zero(device, geometry, ranges)
        zeroed = _read_back_zero(device, ranges)
    except (StickReadError, GeometryError) as exc:
        return Wiped(False, str(exc))
    except OSError as exc:
        return Wiped(False, f"the stick could not be overwritten: {exc.strerror or type(exc).__name__}")
    return Wiped(True) if zeroed else Wiped(False, "the old clusters did not read back as overwritten")


def _zero(device: str, geometry: Geometry, ranges: list[tuple[int, int]]) -> None:
    end = geometry.data_offset + geometry.clusters * geometry.cluster_bytes
    with open(device, "r+b") as handle:
        for offset, length in ranges:
            if offset < geometry.data_offset or offset + length > end:
                raise GeometryError("a range to wipe is outside the data area")
            handle.seek(offset)
            handle.write(bytes(length))
        handle.flush()
        os.fsync(handle.fileno())


def _read_back_zero(device: str, ranges: list[tuple[int, int]]) -> bool:
    with open(device, "rb") as handle:
        for offset, length in ranges:
            handle.seek(offset)
            if handle.read(length) != bytes(length):
                return False
    return True


__all__ = ["Geometry", "GeometryError", "StickWriteError", "Wiped", "parse_boot_sector", "read_geometry",
           "rewrite_wiping", "wipe_ranges"]
