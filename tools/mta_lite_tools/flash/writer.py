"""writer — write the image's mapped ranges to the card, first sector last; read them back.

    with Card.open(target, image_size) as card:
        written = write_image(source, card, plan, bar)     # Written: digests, bytes, seconds
        mismatch, seconds = verify(card, plan, written, bar)
        first_difference(image_path, card, mismatch)       # the exact byte, from the image again

The order of the writes is what makes an interrupted card harmless: the first HEAD_BYTES
of the card (MBR, GPT header) are zeroed and synced first, then every range is written in
WRITE_CHUNK_BYTES pieces at block-aligned offsets, then the image's own first HEAD_BYTES
last, then everything is synced. A card pulled out or a Ctrl-C at any point before the
end leaves a card with no partition table: no computer mounts it, no Pi boots half of it
(Raspberry Pi Imager writes the first block last for the same reason).

While a range is written, its bytes are hashed twice: the bmap's checksum of the whole
range (a damaged image is caught, never called done) and SHA-256 per VERIFY_GRAIN_BYTES,
kept to compare the read-back with and to say where the card differs.

Guarantees: every error on the card is a CardError naming the byte offset; every problem
with the image is an ImageError; the card is synced before write_image() returns.
Must never: write a byte outside the plan's ranges (besides zeroing the head), or write
the head before every other range is written and the image's end is checked.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from .bmap import Plan, Range
from .devices import Target
from .errors import CardError, ImageError, TargetRefusedError
from .image import ImageSource, open_image

# Large writes keep a card busy; 4 MiB is the erase block of most SD cards (SD Physical
# Layer spec: allocation units of 4 MiB on cards up to 32 GB), so a write rarely straddles two.
WRITE_CHUNK_BYTES = 4 * 1024 * 1024
# Held back and written last: the MBR (sector 0), and with 512-byte sectors the GPT header
# (sector 1) and the start of its table; also one page, so the write stays aligned.
HEAD_BYTES = 4096
# A verify failure is reported to the byte, but the read-back is compared by digest at this
# grain: 32 bytes of digest per 64 KiB, 4 MiB of memory for a 8 GiB image without a bmap.
VERIFY_GRAIN_BYTES = 64 * 1024
# On a block device, dirty pages are flushed this often: the progress bar then shows what
# reached the card, not the page cache, and a pulled card is noticed within seconds.
SYNC_EVERY_BYTES = 64 * 1024 * 1024


class Bar(Protocol):
    def update(self, n: int) -> object: ...


@dataclass(frozen=True)
class Written:
    grains: tuple[tuple[bytes, ...], ...]   # SHA-256 digests of each range's grains
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Mismatch:
    offset: int                 # first byte of the grain that differs
    length: int
    range: Range


class Card:
    """The open target: a block device (exclusive and locked) or a plain file."""

    def __init__(self, path: str, fd: int, is_block: bool) -> None:
        self.path, self.fd, self.is_block = path, fd, is_block
        self._unsynced = 0

    @classmethod
    def open(cls, target: Target, image_size: int) -> "Card":
        if target.kind != "block":
            fd = _open(target.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, image_size)    # sparse: what the bmap leaves out reads as zeros
            except OSError as exc:
                os.close(fd)
                raise TargetRefusedError(f"cannot make {target.path} {image_size} bytes long: {exc.strerror}") from None
            return cls(target.path, fd, False)
        # O_EXCL on a block device is the kernel's own guard: it fails with EBUSY while any
        # file system on the disk is mounted or anything else holds it (dm, md, swap).
        fd = _open(target.path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        try:
            # A BSD lock on the whole disk tells udev not to probe it, re-read its partition
            # table or let udisks mount it while we write (systemd's "Locking Block Device
            # Access"): the half-written card stays invisible, and its boot partition is not
            # mounted under us before mta-lite.toml is on it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TargetRefusedError(f"{target.path} is locked by another program (a partitioner?)") from None
        return cls(target.path, fd, True)

    def __enter__(self) -> "Card":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)       # closing also drops the lock

    def pwrite_all(self, offset: int, data) -> None:
        view = memoryview(data)
        while view:
            try:
                done = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                raise CardError(f"writing {self.path} failed at byte {offset}: {exc.strerror}") from None
            if done == 0:
                raise CardError(f"writing {self.path} failed at byte {offset}: the device takes no more data")
            view, offset = view[done:], offset + done
        self._unsynced += len(data)
        if self.is_block and self._unsynced >= SYNC_EVERY_BYTES:
            self.sync()

    def pread_all(self, offset: int, size: int) -> bytes:
        parts, wanted = [], size
        while wanted:
            try:
                data = os.pread(self.fd, wanted, offset + size - wanted)
            except OSError as exc:
                raise CardError(f"reading {self.path} back failed at byte {offset + size - wanted}: "
                                f"{exc.strerror}") from None
            if not data:
                raise CardError(f"{self.path} ends at byte {offset + size - wanted}, inside the image")
            parts.append(data)
            wanted -= len(data)
        return b"".join(parts)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise CardError(f"flushing {self.path} failed: {exc.strerror}") from None
        self._unsynced = 0

    def drop_cache(self) -> None:
        """Make the next reads come from the card itself. After fsync the cached pages are
        clean, and POSIX_FADV_DONTNEED evicts clean pages of this device (or file), so the
        read-back really reads the card. O_DIRECT would bypass the cache too, but needs
        page-aligned buffers and is refused by some USB readers' drivers and by tmpfs (for
        --to-file); the fadvise works on anything and costs nothing."""
        try:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass            # only a hint: the reads then may come from the cache, still correct data


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            reason = "it is in use (mounted, or held by another program)"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            reason = "permission denied (writing a disk needs root: sudo)"
        else:
            reason = exc.strerror
        raise TargetRefusedError(f"cannot open {path}: {reason}") from None


def grain_digests(data: bytes) -> list[bytes]:
    view = memoryview(data)
    return [hashlib.sha256(view[i:i + VERIFY_GRAIN_BYTES]).digest() for i in range(0, len(view), VERIFY_GRAIN_BYTES)]


# ------------------------------------------------------------------ writing

def write_image(source: ImageSource, card: Card, plan: Plan, bar: Bar,
                clock: Callable[[], float] = time.monotonic) -> Written:
    started = clock()
    card.pwrite_all(0, bytes(min(HEAD_BYTES, plan.image_size)))
    card.sync()
    held: list[tuple[int, bytes]] = []
    grains = []
    for item in plan.ranges:
        source.skip(item.start - source.position)
        if source.position < item.start:
            raise _short(source, plan)
        grains.append(_write_range(source, card, plan, item, held, bar))
    _check_end(source, plan)
    for offset, data in held:
        card.pwrite_all(offset, data)
    card.sync()
    return Written(tuple(grains), plan.mapped_bytes, clock() - started)


def _write_range(source: ImageSource, card: Card, plan: Plan, item: Range,
                 held: list[tuple[int, bytes]], bar: Bar) -> tuple[bytes, ...]:
    whole = hashlib.new(plan.checksum_type) if item.digest else None
    grains: list[bytes] = []
    offset = item.start
    while offset < item.end:
        data = source.read(min(WRITE_CHUNK_BYTES, item.end - offset))
        if not data:
            raise _short(source, plan)
        if whole:
            whole.update(data)
        grains += grain_digests(data)
        _put(card, offset, data, held)
        offset += len(data)
        bar.update(len(data))
    if whole and whole.hexdigest() != item.digest:
        where = f"blocks {item.blocks} (bytes {item.start}-{item.end - 1})"
        raise ImageError(f"{source.path}: {where} do not match their checksum in {plan.bmap.path}: "
                         "the image is damaged (download it again)")
    return tuple(grains)


def _put(card: Card, offset: int, data: bytes, held: list[tuple[int, bytes]]) -> None:
    """Write `data` at `offset`, keeping back what falls into the head."""
    if offset < HEAD_BYTES:
        cut = min(len(data), HEAD_BYTES - offset)
        held.append((offset, bytes(data[:cut])))
        data, offset = memoryview(data)[cut:], offset + cut
    if data:
        card.pwrite_all(offset, data)


def _check_end(source: ImageSource, plan: Plan) -> None:
    """Read on to the image's end: its size must be what the plan says, and the container's
    last checks (xz index, gzip trailer, zstd frame end) must pass before the head goes out."""
    wanted = plan.image_size - source.position
    if source.skip(wanted) < wanted:
        raise _short(source, plan)
    if source.read(1):
        said = f"its bmap {plan.bmap.path} gives" if plan.bmap else "it had when it was measured"
        raise ImageError(f"{source.path}: the image holds more than the {plan.image_size} bytes {said}")


def _short(source: ImageSource, plan: Plan) -> ImageError:
    said = f"its bmap {plan.bmap.path} gives" if plan.bmap else "it had when it was measured"
    return ImageError(f"{source.path}: the image ends after {source.position} bytes, not the "
                      f"{plan.image_size} {said}: it is truncated")


# ------------------------------------------------------------------ verifying

def verify(card: Card, plan: Plan, written: Written, bar: Bar,
           clock: Callable[[], float] = time.monotonic) -> tuple[Mismatch | None, float]:
    """Read every written range back from the card; the first grain that differs, or None."""
    started = clock()
    card.drop_cache()
    for item, expected in zip(plan.ranges, written.grains):
        offset, index = item.start, 0
        while offset < item.end:
            size = min(WRITE_CHUNK_BYTES, item.end - offset)
            for k, digest in enumerate(grain_digests(card.pread_all(offset, size))):
                if digest != expected[index + k]:
                    start = offset + k * VERIFY_GRAIN_BYTES
                    return Mismatch(start, min(VERIFY_GRAIN_BYTES, item.end - start), item), clock() - started
            index += -(-size // VERIFY_GRAIN_BYTES)
            offset += size
            bar.update(size)
    return None, clock() - started


def first_difference(image_path: str, card: Card, mismatch: Mismatch) -> int | None:
    """The first byte where the card differs from the image, found by reading the image
    again up to the grain that differs; None if the image cannot be read again (a pipe)."""
    if not os.path.isfile(image_path):
        return None
    with open_image(image_path) as source:
        source.skip(mismatch.offset)
        want = source.read(mismatch.length)
    have = card.pread_all(mismatch.offset, mismatch.length)
    return next((mismatch.offset + i for i, (a, b) in enumerate(zip(want, have)) if a != b), None)
