"""mta-lite-flash as a user runs it (the installed console script), into files (--to-file),
with images packed by the real xz, zstd and gzip programs and bmaps made by `bmaptool
create`; bmaptool's own `copy` is the reference for which bmaps are good.

Peers: sfdisk + mkfs.vfat + mcopy make the card image (tests/support/flash.py), bmaptool
(bmap-tools), xz, zstd, gzip; mtools (`mtype`) reads the config back from the written card;
the box's configgen.apply_config() imports it as the box will at first boot.
No root needed: every target is a file. Loop devices are in test_flash_loop.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mta_lite.config import generations as configgen
from mta_lite.config.load import load_config
from tests.support.flash import (BOOT_OFFSET, MTOOLS_ENV, bmap_xml, digest, have, make_bmap, make_card_image, pack,
                             rechecksum, run)
from tests.support.relay import PASSWORD
from tests.support.stick import config_bytes

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have("sfdisk", "mkfs.vfat", "mcopy", "mtype", "bmaptool", "xz", "zstd", "gzip"),
                                 reason="needs fdisk, dosfstools, mtools, bmap-tools, xz-utils, zstd, gzip "
                                        "(tools/install-test-deps.sh)")]
FLASH = str(Path(sys.executable).with_name("mta-lite-flash"))


def flash(*argv: str) -> subprocess.CompletedProcess:
    """The console script with pipes as stdin/stdout/stderr: no terminal."""
    return subprocess.run([FLASH, *map(str, argv)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> dict[str, str]:
    """The card image, its bmap by bmaptool, and the image packed three ways (one bmap for all:
    bmaptool finds card.bmap for card.img.xz too)."""
    base = tmp_path_factory.mktemp("card")
    image = make_card_image(base / "card.img")
    return {"img": image, "bmap": make_bmap(image), **{kind: pack(image, kind) for kind in ("xz", "zstd", "gzip")}}


def _damage(path: str, tmp_path, name: str, at_fraction: float | None = None, cut: int = 0) -> str:
    data = bytearray(Path(path).read_bytes())
    if at_fraction is not None:
        data[int(len(data) * at_fraction)] ^= 0x5A
    out = tmp_path / name
    out.write_bytes(bytes(data[:len(data) - cut]))
    return str(out)


@pytest.mark.parametrize("kind", ["img", "xz", "zstd", "gzip"])
@pytest.mark.parametrize("bmap", [True, False], ids=["bmap", "no-bmap"])
def test_flash_packed_image_written_and_verified(card, tmp_path, kind, bmap):
    out = tmp_path / "card.out"
    done = flash(card[kind], out, "--to-file", *([] if bmap else ["--no-bmap"]))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""                         # not a terminal: no progress bars
    assert ("3 ranges hold data" in done.stdout) == bmap
    assert "verified: " in done.stdout and done.stdout.endswith(f"done: {out} is ready\n")
    assert digest(str(out)) == digest(card["img"])


def test_flash_corrupt_xz_without_bmap_refused_before_writing(card, tmp_path):
    image = _damage(card["xz"], tmp_path, "bad.img.xz", at_fraction=0.5)
    done = flash(image, tmp_path / "card.out", "--to-file")
    assert done.returncode == 65
    assert "corrupt xz data" in done.stderr and done.stderr.endswith("; nothing was written\n")
    assert not (tmp_path / "card.out").exists() and "done" not in done.stdout


def test_flash_corrupt_xz_with_bmap_stops_with_the_card_incomplete(card, tmp_path):
    image = _damage(card["xz"], tmp_path, "bad.img.xz", at_fraction=0.5)
    shutil.copy(card["bmap"], tmp_path / "bad.bmap")
    done = flash(image, tmp_path / "card.out", "--to-file")
    assert done.returncode == 65
    # Found by xz's own check or, when a range ends before xz's block does, by the bmap's.
    assert "corrupt xz data" in done.stderr or "do not match their checksum" in done.stderr
    assert "the card is incomplete" in done.stderr
    assert Path(tmp_path / "card.out").read_bytes()[:4096] == bytes(4096)   # no partition table
    assert "done" not in done.stdout


@pytest.mark.parametrize("kind, name", [("zstd", "cut.img.zst"), ("gzip", "cut.img.gz")])
def test_flash_truncated_image_with_bmap_exits_65_never_done(card, tmp_path, kind, name):
    image = _damage(card[kind], tmp_path, name, cut=300)
    shutil.copy(card["bmap"], tmp_path / "cut.bmap")
    done = flash(image, tmp_path / "card.out", "--to-file")
    assert done.returncode == 65
    assert "truncated" in done.stderr and "the card is incomplete" in done.stderr
    assert "done" not in done.stdout and "verified" not in done.stdout


def test_flash_truncated_zstd_without_bmap_refused_before_writing(card, tmp_path):
    done = flash(_damage(card["zstd"], tmp_path, "cut.img.zst", cut=300), tmp_path / "card.out", "--to-file")
    assert done.returncode == 65 and done.stderr.endswith("; nothing was written\n")
    assert not (tmp_path / "card.out").exists()


def test_flash_bmap_with_wrong_own_checksum_refused_before_writing(card, tmp_path):
    bad = Path(card["bmap"]).read_bytes().replace(b"<BlockSize> 4096", b"<BlockSize>  4096")
    (tmp_path / "bad.bmap").write_bytes(bad)
    done = flash(card["img"], tmp_path / "card.out", "--to-file", "--bmap", tmp_path / "bad.bmap")
    assert done.returncode == 65
    assert "the bmap's own checksum does not match" in done.stderr and "nothing was written" in done.stderr
    assert not (tmp_path / "card.out").exists()


def test_flash_range_with_wrong_checksum_exits_65_card_incomplete(card, tmp_path):
    original = Path(card["bmap"]).read_bytes()
    last = original.rsplit(b'chksum="', 1)[1][:64]
    (tmp_path / "bad.bmap").write_bytes(rechecksum(original.replace(last, b"0" * 64)))
    done = flash(card["img"], tmp_path / "card.out", "--to-file", "--bmap", tmp_path / "bad.bmap")
    assert done.returncode == 65
    assert "do not match their checksum in" in done.stderr and "the card is incomplete" in done.stderr


def test_flash_regular_file_target_without_to_file_refused(card, tmp_path):
    out = tmp_path / "card.out"
    out.write_bytes(b"keep")
    done = flash(card["img"], out)
    assert done.returncode == 73
    assert done.stderr == (f"mta-lite-flash: refused: {out} is not a block device (to write the image into a "
                           "file, give --to-file); nothing was written\n")
    assert out.read_bytes() == b"keep"


def test_flash_config_on_the_boot_partition_read_by_mtype_and_imported_by_the_box(card, tmp_path):
    config = tmp_path / "mta-lite.toml"
    config.write_bytes(config_bytes())           # with the smarthost password inline
    out = tmp_path / "card.out"
    done = flash(card["xz"], out, "--to-file", "--config", config)
    assert done.returncode == 0, done.stderr
    assert (f"config: mta-lite.toml is on partition 1 (FAT32 LBA, at byte {BOOT_OFFSET}) and reads back the same"
            in done.stdout)
    assert PASSWORD not in done.stdout + done.stderr
    on_card = run(["mtype", "-i", f"{out}@@{BOOT_OFFSET}", "::/mta-lite.toml"], env=MTOOLS_ENV)
    assert on_card == config.read_bytes()
    assert b"kernel8  img" in run(["mdir", "-i", f"{out}@@{BOOT_OFFSET}", "::/"], env=MTOOLS_ENV)
    box = tmp_path / "box"
    box.mkdir()
    result = configgen.apply_config(str(box / "mta-lite.toml"), on_card, "boot:mta-lite.toml")
    assert result.generation >= 1
    assert load_config(str(box / "mta-lite.toml")).relays["isp"].password.reveal() == PASSWORD


def test_bmaptool_copy_accepts_the_test_bmaps_and_rejects_the_damaged_ones(card, tmp_path):
    """The bmaps the tests make by hand are bmaptool's format: bmaptool copy takes them, and it
    refuses the same damaged ones mta-lite-flash refuses."""
    hand = tmp_path / "hand.bmap"
    hand.write_bytes(bmap_xml(card["img"], [(0, 0), (256, 263), (2304, 2400)]))
    target = tmp_path / "copy.out"
    subprocess.run(["bmaptool", "-q", "copy", "--bmap", str(hand), card["img"], str(target)],
                   check=True, capture_output=True, timeout=60)
    assert flash(card["img"], tmp_path / "ours.out", "--to-file", "--bmap", hand).returncode == 0
    original = Path(card["bmap"]).read_bytes()
    wrong_own = original.replace(b"<BlockSize> 4096", b"<BlockSize>  4096")
    wrong_range = rechecksum(original.replace(original.rsplit(b'chksum="', 1)[1][:64], b"0" * 64))
    for name, data in (("own.bmap", wrong_own), ("range.bmap", wrong_range)):
        (tmp_path / name).write_bytes(data)
        theirs = subprocess.run(["bmaptool", "-q", "copy", "--bmap", str(tmp_path / name), card["img"],
                                 str(tmp_path / "theirs.out")], capture_output=True, timeout=60)
        assert theirs.returncode != 0, name
        assert flash(card["img"], tmp_path / "ours.out", "--to-file", "--bmap", tmp_path / name).returncode == 65


def test_flash_image_from_a_pipe_without_bmap_refused(tmp_path):
    fifo = tmp_path / "card.img"
    os.mkfifo(fifo)
    done = flash(fifo, tmp_path / "card.out", "--to-file")
    assert done.returncode == 64 and "reading an image from a pipe needs its bmap" in done.stderr
