"""mta-lite-flash's bmap reader (tools/mta_lite_tools/flash/bmap.py): bmaptool's format,
its own checksum, consistency, and where bmaptool looks for it.

The bmaps here are written by tests.support.flash.bmap_xml() in bmaptool's format 2.0;
tests/integration/test_flash_loop.py checks the same against `bmaptool create` and `copy`."""

from __future__ import annotations

import random

import pytest

from mta_lite_tools.flash.bmap import BmapError, find_bmap, load_bmap, parse_bmap, plan
from tests.support.flash import bmap_xml, rechecksum

BLOCK = 4096


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "card.img"
    path.write_bytes(random.Random(3).randbytes(40 * BLOCK + 100))      # the last block is partial
    return str(path)


def test_parse_bmap_valid_gives_byte_ranges(image):
    bmap = parse_bmap(bmap_xml(image, [(0, 0), (5, 9), (40, 40)]), "card.bmap")
    assert (bmap.image_size, bmap.block_size, bmap.mapped_blocks) == (40 * BLOCK + 100, BLOCK, 7)
    assert [(r.start, r.end, r.blocks) for r in bmap.ranges] == [
        (0, BLOCK, "0-0"), (5 * BLOCK, 10 * BLOCK, "5-9"), (40 * BLOCK, 40 * BLOCK + 100, "40-40")]
    assert all(len(r.digest) == 64 for r in bmap.ranges)
    assert plan(bmap, 0).mapped_bytes == 6 * BLOCK + 100


def test_parse_bmap_changed_byte_fails_its_own_checksum(image):
    data = bmap_xml(image, [(0, 3)]).replace(b"<ImageSize> ", b"<ImageSize>  ")
    with pytest.raises(BmapError, match="own checksum does not match"):
        parse_bmap(data, "card.bmap")


def test_parse_bmap_changed_range_with_valid_own_checksum_parses(image):
    """A range checksum that does not match the image is found while writing (writer tests)."""
    data = bmap_xml(image, [(0, 3)])
    digest = parse_bmap(data, "card.bmap").ranges[0].digest
    edited = rechecksum(data.replace(digest.encode(), b"0" * 64))
    assert parse_bmap(edited, "card.bmap").ranges[0].digest == "0" * 64


@pytest.mark.parametrize("ranges, message", [
    ([(5, 9), (0, 0)], "out of order"),
    ([(0, 5), (5, 9)], "overlaps"),
    ([(40, 41)], "outside the image"),
])
def test_parse_bmap_bad_ranges_refused(image, ranges, message):
    with pytest.raises(BmapError, match=message):
        parse_bmap(bmap_xml(image, ranges), "card.bmap")


def test_parse_bmap_mapped_count_disagreeing_with_ranges_refused(image):
    data = rechecksum(bmap_xml(image, [(0, 3)]).replace(b"<MappedBlocksCount> 4 ", b"<MappedBlocksCount> 5 "))
    with pytest.raises(BmapError, match="ranges hold 4 blocks"):
        parse_bmap(data, "card.bmap")


def test_parse_bmap_image_size_disagreeing_with_block_count_refused(image):
    data = rechecksum(bmap_xml(image, [(0, 3)]).replace(b"<BlocksCount> 41 ", b"<BlocksCount> 40 "))
    with pytest.raises(BmapError, match="inconsistent"):
        parse_bmap(data, "card.bmap")


@pytest.mark.parametrize("version, message", [("1.2", "no checksums"), ("3.0", "newer than this tool")])
def test_parse_bmap_unsupported_version_refused(image, version, message):
    with pytest.raises(BmapError, match=message):
        parse_bmap(bmap_xml(image, [(0, 3)], version=version), "card.bmap")


def test_parse_bmap_version_1_4_reads_as_2_0(image):
    assert parse_bmap(bmap_xml(image, [(0, 3)], version="1.4"), "card.bmap").checksum_type == "sha256"


@pytest.mark.parametrize("data", [b"", b"not xml", b"<html></html>", b"<bmap version='2.0'></bmap>"])
def test_parse_bmap_not_a_bmap_refused(data):
    with pytest.raises(BmapError):
        parse_bmap(data, "card.bmap")


def test_parse_bmap_entity_expansion_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE b [<!ENTITY a "aaaaaaaaaa">'
            + b"".join(b'<!ENTITY a%d "%s">' % (i + 1, (b"&a%d;" % i if i else b"&a;") * 10) for i in range(9))
            + b']><bmap version="2.0">&a9;</bmap>')
    with pytest.raises(BmapError):
        parse_bmap(bomb, "bomb.bmap")


@pytest.mark.parametrize("bmap_name", ["card.img.xz.bmap", "card.img.bmap", "card.bmap"])
def test_find_bmap_looks_where_bmaptool_looks(tmp_path, bmap_name):
    (tmp_path / bmap_name).write_bytes(b"")
    assert find_bmap(str(tmp_path / "card.img.xz")) == str(tmp_path / bmap_name)


def test_find_bmap_none_beside_the_image_gives_none(tmp_path):
    (tmp_path / "other.bmap").write_bytes(b"")
    assert find_bmap(str(tmp_path / "card.img.xz")) is None


def test_load_bmap_file_on_disk_parses(tmp_path, image):
    path = tmp_path / "card.bmap"
    path.write_bytes(bmap_xml(image, [(1, 2)]))
    assert load_bmap(str(path)).ranges[0].start == BLOCK
