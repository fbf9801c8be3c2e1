"""The arithmetic of wiping a replaced file on a FAT stick (board/fatwipe.py) and mshowfat's
cluster chains (board/mtools.py), on boot sectors built by hand. The real thing, on images
made by mkfs.vfat, is in tests/integration/test_usbstick_scrub.py.
"""

from __future__ import annotations

import struct

import pytest

from mta_lite_board.fatwipe import Geometry, GeometryError, parse_boot_sector, wipe_ranges
from mta_lite_board.mtools import MAX_CHAIN_CLUSTERS, StickReadError, parse_chain


def boot_sector(sector=512, per_cluster=8, reserved=32, fats=2, root_entries=0, total=81920, fat_sectors=80) -> bytes:
    boot = bytearray(512)
    struct.pack_into("<HBHBHH", boot, 11, sector, per_cluster, reserved, fats, root_entries, 0)
    struct.pack_into("<II", boot, 32, total, fat_sectors)
    return bytes(boot)


def test_parse_boot_sector_fat32_geometry():
    geometry = parse_boot_sector(boot_sector(), 81920 * 512)
    assert geometry == Geometry(4096, (32 + 2 * 80) * 512, (81920 - 192) // 8)
    assert geometry.offset(2) == geometry.data_offset and geometry.offset(3) == geometry.data_offset + 4096


@pytest.mark.parametrize("changes", [dict(sector=500), dict(per_cluster=3), dict(fats=0), dict(reserved=0),
                                     dict(total=10 ** 9)])
def test_parse_boot_sector_insane_values_refused(changes):
    with pytest.raises(GeometryError):
        parse_boot_sector(boot_sector(**changes), 81920 * 512)


def test_cluster_outside_the_data_area_refused():
    geometry = Geometry(4096, 1 << 20, 100)
    for cluster in (0, 1, 102, 10 ** 6):
        with pytest.raises(GeometryError):
            geometry.offset(cluster)


def test_wipe_ranges_old_clusters_not_reused_and_slack_of_the_last():
    geometry = Geometry(1000, 0, 100)
    ranges = wipe_ranges(geometry, old=[5, 6, 7], new=[7, 20], new_size=1300)
    assert ranges == [(3000, 1000), (4000, 1000), (18000 + 300, 700)]
    assert wipe_ranges(geometry, old=[5], new=[], new_size=0) == [(3000, 1000)]
    assert wipe_ranges(geometry, old=[5], new=[5], new_size=1000) == []


@pytest.mark.parametrize("text, chain", [("::/mta-lite.toml <53-55><70>\n", [53, 54, 55, 70]),
                                         ("::/x <3>\n", [3]), ("::/x Root directory or empty file\n", [])])
def test_parse_chain_forms(text, chain):
    assert parse_chain(text) == chain


@pytest.mark.parametrize("text", ["garbage", f"::/x <2-{MAX_CHAIN_CLUSTERS + 2}>", "::/x <9-3>"])
def test_parse_chain_refuses_garbage_and_overlong_chains(text):
    with pytest.raises(StickReadError):
        parse_chain(text)
