"""bootconfig — put mta-lite.toml on the card's boot partition, without mounting anything.

    boot = boot_partition(first_sector, image_path, image_size)   # pure: first FAT partition
    tools = require_mtools()                                      # before anything is written
    put_config(card, boot, data, tools)                           # mcopy, sync, mtype, compare

The box's image has an MBR whose first FAT partition is the Pi's boot partition (the one
every computer can write, which is why the config goes there); the box imports
`mta-lite.toml` from its top folder at first boot. The partition table is read from the
image's own first sector, before the card is touched, so an image without a FAT partition
is refused with nothing written. mtools writes into the card as a plain file from the
partition's byte offset (`-i DEVICE@@OFFSET`): nothing is mounted, so no desktop auto-mount
or kernel FAT driver is involved (the kernel may not even have one).

Guarantees: put_config() returns only after the file was written, the card synced, its cache
dropped and the file read back from the card byte for byte the same; otherwise it raises
BootConfigError. mtools runs without a shell, with a fixed argument list and environment
(no ~/.mtoolsrc), and is killed after MTOOLS_TIMEOUT_S.
Must never: mount the card, or show the config's contents (it may hold a password).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass

from .errors import BootConfigError, ImageError, ToolMissingError
from .writer import Card

CONFIG_NAME = "mta-lite.toml"
SECTOR_BYTES = 512              # an MBR counts in 512-byte sectors on SD cards and images
MBR_SIGNATURE = b"\x55\xaa"     # bytes 510-511 of a valid MBR
MBR_ENTRIES_OFFSET = 446        # four 16-byte primary partition entries start here
MBR_ENTRY_BYTES = 16
GPT_PROTECTIVE = 0xEE
# MBR partition type IDs of FAT file systems (the Pi firmware reads FAT12/16/32).
FAT_TYPES = {0x01: "FAT12", 0x04: "FAT16", 0x06: "FAT16", 0x0B: "FAT32", 0x0C: "FAT32 LBA",
             0x0E: "FAT16 LBA"}
# Writing or reading a few KiB takes well under a second even on a slow card; a reader
# that hangs must not keep the tool waiting for ever.
MTOOLS_TIMEOUT_S = 60.0
# Only this much of an mtools error message is shown.
MAX_ERROR_CHARS = 200
# No ~/.mtoolsrc (HOME), no geometry checks (cards are not floppies), messages in English.
MTOOLS_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8", "MTOOLS_SKIP_CHECK": "1"}


@dataclass(frozen=True)
class PartitionEntry:
    number: int                 # 1-4
    type_id: int
    start: int                  # byte offset in the image (and on the card)
    size: int                   # bytes

    @property
    def kind(self) -> str:
        return FAT_TYPES.get(self.type_id, f"type 0x{self.type_id:02x}")


def parse_mbr(sector: bytes) -> tuple[PartitionEntry, ...] | None:
    """The used primary entries of an MBR; None if `sector` is no MBR."""
    if len(sector) < SECTOR_BYTES or sector[SECTOR_BYTES - 2:SECTOR_BYTES] != MBR_SIGNATURE:
        return None
    entries = []
    for index in range(4):
        at = MBR_ENTRIES_OFFSET + index * MBR_ENTRY_BYTES
        type_id = sector[at + 4]
        first, count = struct.unpack_from("<II", sector, at + 8)
        if type_id and count:
            entries.append(PartitionEntry(index + 1, type_id, first * SECTOR_BYTES, count * SECTOR_BYTES))
    return tuple(entries)


def boot_partition(first_sector: bytes, image_path: str, image_size: int) -> PartitionEntry:
    """The image's first FAT partition, or ImageError saying why there is none."""
    entries = parse_mbr(first_sector)
    if entries is None:
        raise ImageError(f"{image_path}: the image has no MBR partition table, so there is no boot "
                         f"partition to put {CONFIG_NAME} on")
    if any(e.type_id == GPT_PROTECTIVE for e in entries):
        raise ImageError(f"{image_path}: the image has a GPT partition table; --config needs the "
                         "MBR a Raspberry Pi image has")
    boot = next((e for e in entries if e.type_id in FAT_TYPES), None)
    if boot is None:
        kinds = ", ".join(e.kind for e in entries) or "none"
        raise ImageError(f"{image_path}: the image has no FAT partition for {CONFIG_NAME} (partitions: {kinds})")
    if boot.start + boot.size > image_size:
        raise ImageError(f"{image_path}: partition {boot.number} ends beyond the image's {image_size} bytes")
    return boot


def require_mtools() -> dict[str, str]:
    """Full paths of mcopy and mtype; ToolMissingError (nothing written yet) without them."""
    found = {name: shutil.which(name) for name in ("mcopy", "mtype")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ToolMissingError(f"--config needs mtools ({', '.join(missing)} not found): "
                               "apt install mtools (or dnf/pacman install mtools)")
    return found


def put_config(card: Card, boot: PartitionEntry, data: bytes, tools: dict[str, str]) -> None:
    if "@@" in card.path:           # mtools reads FILE@@OFFSET as an offset into FILE
        raise BootConfigError(f"{card.path}: a device path with '@@' cannot be given to mtools")
    image = f"{card.path}@@{boot.start}"
    _run([tools["mcopy"], "-o", "-i", image, "-", f"::/{CONFIG_NAME}"], data)
    card.sync()
    card.drop_cache()
    back = _run([tools["mtype"], "-i", image, f"::/{CONFIG_NAME}"], b"")
    if back != data:
        raise BootConfigError(f"{CONFIG_NAME} read back from partition {boot.number} of {card.path} "
                              f"differs from what was written ({len(back)} of {len(data)} bytes)")


def _run(argv: list[str], stdin: bytes) -> bytes:
    name = argv[0].rsplit("/", 1)[-1]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, env=MTOOLS_ENV, timeout=MTOOLS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BootConfigError(f"{name} did not finish within {MTOOLS_TIMEOUT_S:g} s (a hung card reader?)") from None
    except OSError as exc:
        raise ToolMissingError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.decode("utf-8", "replace").split())[:MAX_ERROR_CHARS]
        raise BootConfigError(f"{name} failed with status {done.returncode}: {detail or 'no message'}")
    return done.stdout
