"""mta-lite-flash's image reader (tools/mta_lite_tools/flash/image.py): raw, xz, gzip and zstd
streams give the same bytes; truncated and corrupt files raise ImageError, never a short
stream; memory stays bounded for an image that is mostly zeros.

The packed files are made by Python's lzma and gzip and by zstandard (the real programs make
them in tests/integration/test_flash_files.py)."""

from __future__ import annotations

import gzip
import lzma
import os
import random
import tracemalloc

import pytest
import zstandard

from mta_lite_tools.flash.errors import ImageError, InputMissingError
from mta_lite_tools.flash.image import measure, open_image

MIB = 1024 * 1024


@pytest.fixture
def image_bytes() -> bytes:
    rng = random.Random(7)
    return rng.randbytes(300_000) + bytes(2 * MIB) + rng.randbytes(100_000)


def _pack(data: bytes, kind: str) -> bytes:
    if kind == "xz":
        return lzma.compress(data, preset=0)
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(data)
    return data


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _read_all(path: str, chunk: int = 65536) -> bytes:
    parts = []
    with open_image(path) as source:
        while data := source.read(chunk):
            parts.append(data)
    return b"".join(parts)


@pytest.mark.parametrize("kind", ["raw", "xz", "gzip", "zstd"])
def test_open_image_each_container_gives_the_image_bytes(tmp_path, image_bytes, kind):
    path = _write(tmp_path, "card.img", _pack(image_bytes, kind))      # told apart by magic, not name
    with open_image(path) as source:
        assert source.kind == kind
    assert _read_all(path) == image_bytes


def test_open_image_zstd_several_frames_reads_them_all(tmp_path, image_bytes):
    packer = zstandard.ZstdCompressor(level=1)
    half = len(image_bytes) // 2
    path = _write(tmp_path, "card.img.zst", packer.compress(image_bytes[:half]) + packer.compress(image_bytes[half:]))
    assert _read_all(path) == image_bytes


def test_open_image_corrupt_xz_raises_image_error(tmp_path, image_bytes):
    packed = bytearray(_pack(image_bytes, "xz"))
    packed[len(packed) // 2] ^= 0x55
    path = _write(tmp_path, "card.img.xz", bytes(packed))
    with pytest.raises(ImageError, match="corrupt xz data"):
        _read_all(path)


@pytest.mark.parametrize("kind, name", [("zstd", "card.img.zst"), ("gzip", "card.img.gz"), ("xz", "card.img.xz")])
def test_open_image_truncated_file_raises_image_error(tmp_path, image_bytes, kind, name):
    packed = _pack(image_bytes, kind)
    path = _write(tmp_path, name, packed[:len(packed) - 200])
    with pytest.raises(ImageError, match="truncated"):
        _read_all(path)


def test_open_image_zstd_cut_at_a_frame_boundary_is_whole(tmp_path, image_bytes):
    """The control for the test above: a stream that ends after a complete frame is fine."""
    packed = zstandard.ZstdCompressor(level=1).compress(image_bytes)
    assert _read_all(_write(tmp_path, "card.img.zst", packed)) == image_bytes


def test_open_image_zstd_of_zeros_keeps_memory_bounded(tmp_path):
    """256 MiB of zeros pack into a few KiB; one read of the packed file must not unpack
    them all at once (zstandard's decompressobj would, fed the whole read)."""
    packer = zstandard.ZstdCompressor(level=3).compressobj()
    packed = b"".join(packer.compress(bytes(4 * MIB)) for _ in range(64)) + packer.flush()
    assert len(packed) < 64 * 1024
    path = _write(tmp_path, "zeros.img.zst", packed)
    tracemalloc.start()
    try:
        total = 0
        with open_image(path) as source:
            while data := source.read(4 * MIB):
                total += len(data)
                del data
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 256 * MIB
    assert peak < 80 * MIB


def test_peek_then_read_returns_the_same_bytes(tmp_path, image_bytes):
    path = _write(tmp_path, "card.img.gz", _pack(image_bytes, "gzip"))
    with open_image(path) as source:
        assert source.peek(512) == image_bytes[:512]
        assert source.position == 0
        assert source.read(1000) == image_bytes[:1000]


@pytest.mark.parametrize("kind", ["raw", "xz"])
def test_skip_passes_over_bytes_and_stops_at_the_end(tmp_path, image_bytes, kind):
    path = _write(tmp_path, "card.img", _pack(image_bytes, kind))
    with open_image(path) as source:
        assert source.skip(1_000_000) == 1_000_000
        assert source.read(10) == image_bytes[1_000_000:1_000_010]
        assert source.skip(10 * MIB) == len(image_bytes) - 1_000_010
        assert source.read(1) == b""


def test_measure_gzip_counts_the_unpacked_bytes(tmp_path, image_bytes):
    path = _write(tmp_path, "card.img.gz", _pack(image_bytes, "gzip"))
    seen = []
    assert measure(path, lambda position, size: seen.append((position, size))) == len(image_bytes)
    assert seen and seen[-1][1] == os.path.getsize(path)


def test_open_image_missing_file_raises_input_missing(tmp_path):
    with pytest.raises(InputMissingError, match="no such image"):
        open_image(str(tmp_path / "nothing.img"))


def test_open_image_pipe_hands_on_the_first_bytes(tmp_path, image_bytes):
    """A FIFO is read once: the bytes read to tell its container must not be lost."""
    fifo = str(tmp_path / "card.img")
    os.mkfifo(fifo)
    packed = _pack(image_bytes, "xz")
    pid = os.fork()
    if pid == 0:        # the writer: exits without running pytest's teardown
        try:
            with open(fifo, "wb") as handle:
                handle.write(packed)
        finally:
            os._exit(0)
    try:
        assert _read_all(fifo) == image_bytes
    finally:
        os.waitpid(pid, 0)
