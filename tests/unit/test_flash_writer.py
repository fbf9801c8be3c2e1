"""mta-lite-flash's writer (tools/mta_lite_tools/flash/writer.py) on plain files: only the
mapped ranges are written, the head goes last, a damaged or truncated image is an error
before the head is written, and the read-back finds a changed byte to the byte.

Targets are files (--to-file): a fresh file is sparse, so SEEK_DATA/SEEK_HOLE show exactly
which ranges were written. Loop devices are in tests/integration/test_flash_loop.py."""

from __future__ import annotations

import io
import os
import random

import pytest

from mta_lite_tools.flash import cli
from mta_lite_tools.flash.bmap import parse_bmap, plan
from mta_lite_tools.flash.devices import Target
from mta_lite_tools.flash.errors import ImageError
from mta_lite_tools.flash.image import open_image
from mta_lite_tools.flash.writer import HEAD_BYTES, VERIFY_GRAIN_BYTES, Card, first_difference, verify, write_image
from tests.support.flash import bmap_xml, rechecksum

BLOCK = 4096
MIB = 1024 * 1024
RANGES = [(0, 3), (300, 1400), (2000, 2000)]       # blocks: head, a run over several chunks, one block


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


@pytest.fixture
def image(tmp_path) -> str:
    """10 MiB, data where RANGES are, zeros elsewhere (as a bmap would describe it)."""
    rng = random.Random(11)
    data = bytearray(10 * MIB)
    for first, last in RANGES:
        data[first * BLOCK:(last + 1) * BLOCK] = rng.randbytes((last - first + 1) * BLOCK)
    path = tmp_path / "card.img"
    path.write_bytes(bytes(data))
    return str(path)


def _plan(image: str, bmap_bytes: bytes | None = None):
    return plan(parse_bmap(bmap_bytes, "card.bmap") if bmap_bytes else None, os.path.getsize(image))


def _write(image: str, target: str, image_plan):
    with open_image(image) as source, Card.open(Target(target, "file"), image_plan.image_size) as card:
        return write_image(source, card, image_plan, Counter())


def _data_extents(path: str) -> list[tuple[int, int]]:
    extents, offset, size = [], 0, os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return extents


def test_write_image_without_bmap_copies_every_byte(tmp_path, image):
    written = _write(image, str(tmp_path / "out.img"), _plan(image))
    assert (tmp_path / "out.img").read_bytes() == open(image, "rb").read()
    assert written.bytes == 10 * MIB


def test_write_image_with_bmap_writes_only_the_mapped_ranges(tmp_path, image):
    out = str(tmp_path / "out.img")
    written = _write(image, out, _plan(image, bmap_xml(image, RANGES)))
    assert open(out, "rb").read() == open(image, "rb").read()
    assert written.bytes == sum(last - first + 1 for first, last in RANGES) * BLOCK
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    os.truncate(probe, MIB)
    if _data_extents(str(probe)) == []:         # the file system keeps holes: they show what was written
        assert _data_extents(out) == [(first * BLOCK, (last + 1) * BLOCK) for first, last in RANGES]


def test_write_image_range_not_matching_its_checksum_raises_and_leaves_the_head_zero(tmp_path, image):
    bmap = bmap_xml(image, RANGES)
    wrong = parse_bmap(bmap, "card.bmap").ranges[1].digest
    damaged = rechecksum(bmap.replace(wrong.encode(), b"f" * 64))
    out = str(tmp_path / "out.img")
    with pytest.raises(ImageError, match=r"blocks 300-1400 \(bytes 1228800-5738495\) do not match their checksum"):
        _write(image, out, _plan(image, damaged))
    assert open(out, "rb").read(HEAD_BYTES) == bytes(HEAD_BYTES)


def test_write_image_image_shorter_than_its_bmap_raises_before_the_head(tmp_path, image):
    bmap = bmap_xml(image, RANGES)
    os.truncate(image, 8 * MIB)                  # the last range now lies beyond the end
    out = str(tmp_path / "out.img")
    image_plan = plan(parse_bmap(bmap, "card.bmap"), 0)
    with pytest.raises(ImageError, match="ends after 8388608 bytes, not the 10485760 its bmap card.bmap gives"):
        _write(image, out, image_plan)
    assert open(out, "rb").read(HEAD_BYTES) == bytes(HEAD_BYTES)


def test_write_image_image_longer_than_its_bmap_raises(tmp_path, image):
    bmap = bmap_xml(image, RANGES)
    with open(image, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ImageError, match="holds more than the 10485760 bytes its bmap card.bmap gives"):
        _write(image, str(tmp_path / "out.img"), plan(parse_bmap(bmap, "card.bmap"), 0))


def test_verify_changed_byte_found_to_the_byte(tmp_path, image):
    out = str(tmp_path / "out.img")
    image_plan = _plan(image, bmap_xml(image, RANGES))
    with open_image(image) as source, Card.open(Target(out, "file"), image_plan.image_size) as card:
        written = write_image(source, card, image_plan, Counter())
        assert verify(card, image_plan, written, Counter())[0] is None
        changed_at = 300 * BLOCK + 3 * VERIFY_GRAIN_BYTES + 1234
        with open(out, "r+b") as handle:            # the "card" changes a byte behind our back
            handle.seek(changed_at)
            byte = handle.read(1)
            handle.seek(changed_at)
            handle.write(bytes([byte[0] ^ 0x01]))
        mismatch, _ = verify(card, image_plan, written, Counter())
        assert (mismatch.offset, mismatch.range.blocks) == (300 * BLOCK + 3 * VERIFY_GRAIN_BYTES, "300-1400")
        assert first_difference(image, card, mismatch) == changed_at


def test_cli_to_file_with_bmap_writes_verifies_and_says_so(tmp_path, image):
    (tmp_path / "card.bmap").write_bytes(bmap_xml(image, RANGES))
    out, err = io.StringIO(), io.StringIO()
    status = cli.main([image, str(tmp_path / "card.out"), "--to-file"], streams=cli.Streams(io.StringIO(), out, err))
    assert status == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0] == f"image: {image} (10.0 MiB; bmap {tmp_path}/card.bmap: 4.3 MiB in 3 ranges hold data)"
    assert lines[1] == f"target: {tmp_path}/card.out (a file)"
    assert lines[2].startswith(f"written: 4.3 MiB to {tmp_path}/card.out in ")
    assert lines[3].startswith(f"verified: 4.3 MiB read back from {tmp_path}/card.out match the image (SHA-256, 3 ranges)")
    assert lines[4] == f"done: {tmp_path}/card.out is ready"
    assert err.getvalue() == ""                  # not a terminal: no progress bar at all
    assert (tmp_path / "card.out").read_bytes() == open(image, "rb").read()


def test_cli_verify_failure_exits_74_with_the_byte(tmp_path, image):
    out_path = str(tmp_path / "card.out")

    def flip(card):
        with open(out_path, "r+b") as handle:
            handle.seek(5000)
            byte = handle.read(1)
            handle.seek(5000)
            handle.write(bytes([byte[0] ^ 0xFF]))

    err = io.StringIO()
    status = cli.main([image, out_path, "--to-file", "--no-bmap"], before_verify=flip,
                      streams=cli.Streams(io.StringIO(), io.StringIO(), err))
    assert status == 74
    assert err.getvalue() == (f"mta-lite-flash: verify failed: {out_path} differs from the image at byte 5000; "
                              "do not use this card as it is: write it again, or try another card\n")


def test_cli_target_is_the_image_refused(tmp_path, image):
    err = io.StringIO()
    assert cli.main([image, image, "--to-file"], streams=cli.Streams(io.StringIO(), io.StringIO(), err)) == 73
    assert "is the image itself; nothing was written" in err.getvalue()
