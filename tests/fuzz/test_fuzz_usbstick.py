"""Fuzz the USB stick reader (board/mtools.py, board/usbstick.py): C3, untrusted media.

Peers: dosfstools (`mkfs.vfat`) makes one real stick image per module, mtools puts a valid
config on it (with tests.support.relay.PASSWORD inline) and reads the damaged copies. Properties:
(1) the pure `mdir` parser, given any text, returns a Listing or raises ListingError, and
reads back every entry line mdir's own format produces; (2) a copy of the image with random
bytes flipped in its boot sector, FATs, top folder and first data, or cut short anywhere, never
makes provision_from_stick() raise, never installs a config that does not load, and never puts
the password into RESULT.TXT or the log.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile

import pytest
from hypothesis import example, given, strategies as st

from mta_lite_board.mtools import Entry, ListingError, MtoolsRunner, parse_entry, parse_mdir
from mta_lite_board.usbstick import Outcome, provision_from_stick
from mta_lite.config.load import load_config
from tests.fuzz.profiles import fuzz_settings
from tests.support.relay import PASSWORD, secret_needles
from tests.support.stick import Recorder, box_state, config_bytes, make_stick

NEEDLES = secret_needles({PASSWORD})
HEADER = " Volume in drive : is MTACONFIG  \n Volume Serial Number is ED54-60FA\nDirectory for ::/\n\n"
SUMMARY = "        1 file                6 764 bytes\n"
# A damaged FAT can send mtools round a cluster loop; this ends such a run quickly.
FUZZ_TIMEOUT_S = 10.0


# ------------------------------------------------------------------ (1) the parser

def mdir_line(base: str, ext: str, size: int | None, long: str) -> str:
    """One entry line as mtools' mdir prints it (mdir.c: list_file, 24-hour clock)."""
    field = "<DIR>    " if size is None else f" {size:8d}"
    return f"{base:<8} {ext:<3} {field} 2026-11-25   9:07 " + (f" {long}" if long else "")


name_char = st.characters(blacklist_characters="\n", blacklist_categories=("Cs",))
entries = st.tuples(st.text(name_char, min_size=1, max_size=8).filter(lambda b: not b.startswith(" ")),
                    st.text(name_char, max_size=3),
                    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
                    st.text(name_char, max_size=40))


@fuzz_settings(300)
@given(text=st.text(max_size=400), complete=st.booleans(), framed=st.booleans())
@example(text="", complete=True, framed=False)
@example(text=" Volume in drive : is X\nDirectory for ::/\n", complete=True, framed=False)
def test_mdir_parser_any_text_listing_or_listing_error(text, complete, framed):
    if framed:
        text = HEADER + text + "\n" + SUMMARY
    try:
        listing = parse_mdir(text, complete)
    except ListingError:
        return
    assert all(isinstance(e, Entry) for e in listing.entries)
    assert listing.complete is complete


@fuzz_settings(300)
@given(lines=st.lists(entries, max_size=5))
def test_mdir_parser_entry_lines_read_back(lines):
    text = HEADER + "".join(mdir_line(*entry) + "\n" for entry in lines) + SUMMARY
    listing = parse_mdir(text)
    assert listing.label == "MTACONFIG" and listing.skipped == 0
    for (base, ext, size, long), entry in zip(lines, listing.entries, strict=True):
        short = base.rstrip(" ") + ("." + ext.rstrip(" ") if ext.rstrip(" ") else "")
        assert entry == Entry(short, long, size or 0, size is None)


def test_mdir_parser_reads_real_mdir_output(tmp_path):
    """The control for the properties above: the format they assume is what mdir prints."""
    image = make_stick(tmp_path / "s.img", {"mta-lite.toml": b"x" * 6764, "ROLLBACK.TXT": b"1",
                                            "Ünï cödé.txt": b""})
    runner = MtoolsRunner()
    listing = parse_mdir(runner(["mdir", "-a", "-f", "-i", image, "::/"], 65537, b"").stdout.decode())
    assert listing.label == "MTACONFIG" and listing.skipped == 0
    assert [(e.name, e.size) for e in listing.entries] == [("mta-lite.toml", 6764), ("ROLLBACK.TXT", 1),
                                                           ("Ünï cödé.txt", 0)]
    assert parse_entry("MTA-LI~1 TOM      6764 2026-11-25  12:06  mta-lite.toml") == \
        Entry("MTA-LI~1.TOM", "mta-lite.toml", 6764, False)


# ------------------------------------------------------------------ (2) damaged images

class BaseImage:
    """The bytes of one real stick image, and where its metadata (boot sector, FATs, top
    folder) ends. Its repr is short: hypothesis prints it with every failing example."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        sector, _cluster, reserved, fats, root_entries = struct.unpack_from("<HBHBH", blob, 11)
        (fat_sectors,) = struct.unpack_from("<H", blob, 22)
        self.meta_end = (reserved + fats * fat_sectors) * sector + root_entries * 32

    def __repr__(self) -> str:
        return f"BaseImage({len(self.blob)} bytes, metadata up to {self.meta_end})"


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """One real 1 MiB stick (FAT12) with a valid config."""
    path = make_stick(tmp_path_factory.mktemp("stick") / "base.img",
                      {"mta-lite.toml": config_bytes(hostname="fuzz.lan.test")}, size="1M")
    with open(path, "rb") as handle:
        return BaseImage(handle.read())


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@fuzz_settings(100, long_examples=2000)
@given(data=st.data())
def test_provision_damaged_image_never_raises_never_installs_garbage(base_image, data):
    blob, meta_end = base_image.blob, base_image.meta_end
    flips = data.draw(st.lists(st.tuples(st.integers(0, meta_end + 4096), st.integers(1, 255)), max_size=8))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    damaged = bytearray(blob)
    for offset, mask in flips:
        damaged[offset] ^= mask
    lines, logger = _Lines(), logging.getLogger("mta_lite_board.usbstick")
    with tempfile.TemporaryDirectory(prefix="mta-fuzz-stick-") as directory:
        image, config = os.path.join(directory, "stick.img"), os.path.join(directory, "etc", "mta-lite.toml")
        with open(image, "wb") as handle:
            handle.write(bytes(damaged[:cut]))
        os.mkdir(os.path.dirname(config))
        with open(config, "wb") as handle:
            handle.write(config_bytes())
        before = box_state(config)
        runner = Recorder(inner=MtoolsRunner(timeout_s=FUZZ_TIMEOUT_S))
        level = logger.level
        logger.addHandler(lines)
        logger.setLevel(logging.INFO)
        try:
            result = provision_from_stick(image, config, runner)
        finally:
            logger.removeHandler(lines)
            logger.setLevel(level)
        if result.outcome in (Outcome.APPLIED, Outcome.UNCHANGED):
            assert load_config(config).hostname       # what was installed loads
        else:
            assert box_state(config) == before, result
        written = b"".join(stdin for argv, stdin in zip(runner.calls, runner.stdins) if "-o" in argv)
        for needle in NEEDLES:
            assert needle not in written and needle.decode() not in "\n".join(lines.lines)
        assert 1 <= len(lines.lines) <= 2
