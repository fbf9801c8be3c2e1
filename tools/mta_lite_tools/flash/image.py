"""image — the disk image as one stream of bytes, whatever it is packed in.

    with open_image(path) as source:        # ImageSource
        source.peek(n); source.read(n); source.skip(n); source.position
    kind_of(first_bytes) -> "raw" | "xz" | "gzip" | "zstd"
    measure(path, on_progress) -> int       # bytes of the unpacked image, in one pass

A raw image is read as it is; xz, gzip and zstd images (told apart by their magic bytes, so
that a file named .img that is really .img.xz still works) are unpacked while they are read.
Nothing is ever unpacked into a temporary file: an image is larger than a laptop's /tmp.

Guarantees: the stream ends only at a clean end of its container, every check of the
container passed (xz's CRC, gzip's CRC and length, the end of every zstd frame); a truncated
or corrupt file raises ImageError naming the file and how far into the image it got, never
a short stream. Memory stays bounded whatever the file holds (see ZSTD_SLICE_BYTES).
Must never: write anything, or hand out bytes beyond a point where the container is known
to be broken.
"""

from __future__ import annotations

import gzip
import lzma
import os
import zlib
from typing import BinaryIO, Callable

from .errors import ImageError, ImageReadError, InputMissingError, ToolMissingError
from .progress import human_bytes

# The magic bytes each container starts with (xz file format 1.0.4 §2.1.1.1, RFC 1952 §2.3.1,
# RFC 8878 §3.1.1). A raw disk image starts with boot code or zeros, never with these.
MAGIC = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
MAGIC_BYTES = max(len(m) for m in MAGIC)
# How much compressed input is read from the file at a time.
READ_BYTES = 1024 * 1024
# zstd can expand one input byte to about 32,000 output bytes (an RLE block of 128 KiB costs
# 4 bytes), and zstandard's decompressobj returns everything one input gives: fed 1 KiB at a
# time it yields at most ~32 MiB per call, where a whole 1 MiB read of an image's empty tail
# could yield 32 GiB. Measured: 1 KiB slices cost about twice the time of zstandard's
# stream_reader, still far faster than any SD card.
ZSTD_SLICE_BYTES = 1024
# Unread data is skipped in pieces this large when the stream cannot seek.
SKIP_BYTES = 4 * 1024 * 1024


def kind_of(head: bytes) -> str:
    """The container a file uses, from its first MAGIC_BYTES bytes."""
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), "raw")


def open_image(path: str) -> "ImageSource":
    """The image at `path`, a regular file or a pipe (a pipe is read once, from the start)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise InputMissingError(f"{path}: no such image file") from None
    except OSError as exc:
        raise InputMissingError(f"{path}: cannot open the image: {exc.strerror}") from None
    try:
        head = handle.read(MAGIC_BYTES)
        if handle.seekable():
            handle.seek(0)
            raw = handle
        else:                           # a pipe: what was read must still be handed on
            raw = _Prefixed(head, handle)
    except OSError as exc:
        handle.close()
        raise ImageReadError(f"{path}: cannot read the image: {exc.strerror}") from None
    kind = kind_of(head)
    try:
        return ImageSource(path, kind, handle, _decoder(kind, raw))
    except ToolMissingError:
        handle.close()
        raise


def _decoder(kind: str, raw):
    if kind == "xz":
        return lzma.LZMAFile(raw)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "zstd":
        return _ZstdStream(raw)
    return raw


class _Prefixed:
    """A pipe whose first bytes were already read to tell its container."""

    def __init__(self, head: bytes, handle: BinaryIO) -> None:
        self._head, self._handle = head, handle

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data = self._head if size < 0 else self._head[:size]
            self._head = self._head[len(data):]
            return data
        return self._handle.read(size)

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._handle.close()


class ImageSource:
    """Sequential reads of the unpacked image; see the module docstring."""

    def __init__(self, path: str, kind: str, raw: BinaryIO, stream) -> None:
        self.path, self.kind, self.raw, self.stream = path, kind, raw, stream
        self.position = 0               # bytes of the unpacked image handed out or skipped
        self._peeked = b""

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.stream.close()
        self.raw.close()

    def read(self, size: int) -> bytes:
        """`size` bytes, fewer only at the end of the image."""
        parts, wanted = [], size
        if self._peeked:
            parts.append(self._peeked[:wanted])
            self._peeked = self._peeked[wanted:]
            wanted -= len(parts[0])
        while wanted > 0:
            data = self._guarded(lambda: self.stream.read(wanted))
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
        data = b"".join(parts)
        self.position += len(data)
        return data

    def peek(self, size: int) -> bytes:
        """The next `size` bytes (fewer at the end) without consuming them."""
        data = self.read(size)
        self.position -= len(data)
        self._peeked = data + self._peeked
        return data

    def skip(self, size: int) -> int:
        """Pass over `size` bytes; returns how many there were (fewer only at the end)."""
        if self.kind == "raw" and not self._peeked and self.stream.seekable():
            end = os.fstat(self.raw.fileno()).st_size
            step = max(0, min(size, end - self.position))
            self._guarded(lambda: self.raw.seek(self.position + step))
            self.position += step
            return step
        done = 0
        while done < size:
            data = self.read(min(SKIP_BYTES, size - done))
            if not data:
                break
            done += len(data)
        return done

    def compressed_position(self) -> int:
        """How far into the file itself the reading got (for a progress bar)."""
        return self.raw.tell()

    def _guarded(self, call: Callable):
        try:
            return call()
        except EOFError:
            raise ImageError(f"{self.path}: the {self.kind} data ends after {human_bytes(self.position)} of the "
                             "image, before its end marker: the file is truncated (download it again)") from None
        except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, _ZstdStream.errors()) as exc:
            raise ImageError(f"{self.path}: corrupt {self.kind} data after {human_bytes(self.position)} of the "
                             f"image ({exc}): download it again") from None
        except OSError as exc:
            raise ImageReadError(f"{self.path}: cannot read the image: {exc.strerror or exc}") from None


class _NeverRaised(Exception):
    pass


class _ZstdStream:
    """A readable zstd stream that notices truncation.

    zstandard's own readers (stream_reader, read_to_iter; checked with 0.25) end quietly at a
    frame that is cut short. A decompressobj says whether its frame ended (`eof`), so the
    frames are fed to one, ZSTD_SLICE_BYTES at a time, a new one for each frame."""

    def __init__(self, raw: BinaryIO) -> None:
        self._zstd = _zstandard()
        self._raw = raw
        self._out = bytearray()
        self._input = memoryview(b"")
        self._frame = self._zstd.ZstdDecompressor().decompressobj()
        self._fed = False               # the current frame has had input
        self._frames = 0
        self._ended = False

    @staticmethod
    def errors() -> type:
        try:
            return _zstandard().ZstdError
        except ToolMissingError:
            return _NeverRaised         # no zstd stream can exist without the module

    def read(self, size: int) -> bytes:
        while len(self._out) < size and not self._ended:
            self._step()
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def close(self) -> None:
        self._out = bytearray()

    def _step(self) -> None:
        if not self._input:
            self._input = memoryview(self._raw.read(READ_BYTES))
            if not self._input:
                self._finish()
                return
        piece, self._input = self._input[:ZSTD_SLICE_BYTES], self._input[ZSTD_SLICE_BYTES:]
        self._out += self._frame.decompress(piece)
        self._fed = True
        if self._frame.eof:             # the rest of the input starts the next frame
            self._frames += 1
            rest = self._frame.unused_data
            if rest:
                self._input = memoryview(bytes(rest) + bytes(self._input))
            self._frame = self._zstd.ZstdDecompressor().decompressobj()
            self._fed = False

    def _finish(self) -> None:
        if self._fed or not self._frames:
            raise EOFError("zstd data ends inside a frame")
        self._ended = True


def _zstandard():
    try:
        import zstandard
    except ImportError:
        raise ToolMissingError("reading .zst images needs the zstandard module: "
                               "pip install 'mta-lite[flash]'") from None
    return zstandard


def measure(path: str, on_progress: Callable[[int, int], None] | None = None) -> int:
    """The unpacked size of the image, by reading it through once (which also checks every
    CRC before anything is written). on_progress(file_position, file_size) is called per read."""
    size = os.path.getsize(path)
    total = 0
    with open_image(path) as source:
        while True:
            data = source.read(READ_BYTES * 4)
            if not data:
                return total
            total += len(data)
            if on_progress:
                on_progress(source.compressed_position(), size)
