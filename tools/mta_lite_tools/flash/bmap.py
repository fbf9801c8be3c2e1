"""bmap — bmaptool's block map: which blocks of an image hold data, and their checksums.

    find_bmap(image_path) -> path | None        # where bmaptool itself looks
    load_bmap(path) -> Bmap                      # parsed, its own checksum verified
    parse_bmap(data, path) -> Bmap               # pure
    plan(bmap | None, image_size) -> Plan        # the byte ranges to write

The format is bmaptool's XML (bmap-tools 3.x, format versions 1.3, 1.4 and 2.x): ImageSize,
BlockSize, BlocksCount, MappedBlocksCount, ChecksumType, BmapFileChecksum (the checksum of
the file with this very value replaced by zeros) and BlockMap/Range elements "FIRST-LAST"
or "N", each with a `chksum` of its bytes. Blocks not listed hold nothing and are not written.

Guarantees: a Bmap is internally consistent (sizes agree, ranges ascending, inside the image,
not overlapping, adding up to MappedBlocksCount) and its own checksum matched; anything else
is one BmapError naming the file and the problem. A bmap comes with a downloaded image, so
it is untrusted: its size is bounded and the XML parser is Python's (expat, which refuses
entity expansion bombs).
Must never: accept a bmap whose own checksum does not match, or one without a checksum.
"""

from __future__ import annotations

import hashlib
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from .errors import ImageError, InputMissingError

# A bmap lists one line of about 100 bytes per range; even a badly fragmented 64 GB image
# has far fewer than 100,000 ranges. Anything larger is not a bmap.
MAX_BMAP_BYTES = 16 * 1024 * 1024
_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


class BmapError(ImageError):
    """The bmap file is not a valid, consistent bmap, or its own checksum does not match."""


@dataclass(frozen=True)
class Range:
    start: int                  # first byte of the range in the image
    end: int                    # one past its last byte
    digest: str | None          # hex checksum of those bytes (ChecksumType), None: not given
    blocks: str                 # "FIRST-LAST", as the bmap names it, for messages

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Bmap:
    path: str
    version: str
    image_size: int
    block_size: int
    mapped_blocks: int
    checksum_type: str          # a hashlib name: "sha256" for every bmap bmaptool 3.x creates
    ranges: tuple[Range, ...]


@dataclass(frozen=True)
class Plan:
    """What to write: the whole image, or the mapped ranges of a bmap."""
    image_size: int
    ranges: tuple[Range, ...]
    checksum_type: str
    bmap: Bmap | None

    @property
    def mapped_bytes(self) -> int:
        return sum(r.length for r in self.ranges)


def plan(bmap: Bmap | None, image_size: int) -> Plan:
    if bmap is None:
        whole = (Range(0, image_size, None, "all"),) if image_size else ()
        return Plan(image_size, whole, "sha256", None)
    return Plan(bmap.image_size, bmap.ranges, bmap.checksum_type, bmap)


def find_bmap(image_path: str) -> str | None:
    """bmaptool's own search: IMAGE.bmap, then with one extension after another taken off
    (foo.img.xz: foo.img.xz.bmap, foo.img.bmap, foo.bmap)."""
    path = image_path
    while True:
        candidate = path + ".bmap"
        if os.path.isfile(candidate):
            return candidate
        path, ext = os.path.splitext(path)
        if not ext:
            return None


def load_bmap(path: str) -> Bmap:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BMAP_BYTES + 1)
    except FileNotFoundError:
        raise InputMissingError(f"{path}: no such bmap file") from None
    except OSError as exc:
        raise InputMissingError(f"{path}: cannot read the bmap: {exc.strerror}") from None
    return parse_bmap(data, path)


def parse_bmap(data: bytes, path: str) -> Bmap:
    if len(data) > MAX_BMAP_BYTES:
        raise BmapError(f"{path}: over {MAX_BMAP_BYTES} bytes: not a bmap")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise BmapError(f"{path}: not a bmap (XML error: {exc})") from None
    if root.tag != "bmap":
        raise BmapError(f"{path}: not a bmap (the document is <{root.tag}>, not <bmap>)")
    version = root.get("version", "")
    attr, own_tag, checksum_type = _names(root, version, path)
    sizes = {tag: _int(root, tag, path) for tag in ("ImageSize", "BlockSize", "BlocksCount", "MappedBlocksCount")}
    _check_sizes(sizes, path)
    _check_own_checksum(data, _text(root, own_tag, path), checksum_type, path)
    ranges = _ranges(root, attr, sizes, checksum_type, path)
    return Bmap(path, version, sizes["ImageSize"], sizes["BlockSize"], sizes["MappedBlocksCount"],
                checksum_type, ranges)


def _names(root: ElementTree.Element, version: str, path: str) -> tuple[str, str, str]:
    """(range checksum attribute, own checksum element, hashlib name) for this version."""
    match = re.fullmatch(r"(\d+)\.(\d+)", version)
    if not match:
        raise BmapError(f"{path}: bmap version {version!r} is not MAJOR.MINOR")
    major, minor = int(match.group(1)), int(match.group(2))
    if major > 2:
        raise BmapError(f"{path}: bmap format {version} is newer than this tool knows (up to 2.x)")
    # 1.4 is 2.0 released under a wrong number (bmaptool's own note); both name the checksum
    # type. 1.3 had SHA-1 only, under other names; older versions had no checksums at all.
    if major == 2 or (major, minor) == (1, 4):
        name = _text(root, "ChecksumType", path).lower()
        if name not in hashlib.algorithms_guaranteed:
            raise BmapError(f"{path}: unknown ChecksumType {name!r}")
        return "chksum", "BmapFileChecksum", name
    if (major, minor) == (1, 3):
        return "sha1", "BmapFileSHA1", "sha1"
    raise BmapError(f"{path}: bmap format {version} has no checksums, so it cannot be verified: "
                    "make a new one with `bmaptool create`")


def _text(root: ElementTree.Element, tag: str, path: str) -> str:
    element = root.find(tag)
    if element is None or element.text is None or not element.text.strip():
        raise BmapError(f"{path}: no <{tag}>")
    return element.text.strip()


def _int(root: ElementTree.Element, tag: str, path: str) -> int:
    text = _text(root, tag, path)
    if not text.isdigit():
        raise BmapError(f"{path}: <{tag}> is not a number: {text[:40]!r}")
    return int(text)


def _check_sizes(sizes: dict[str, int], path: str) -> None:
    block = sizes["BlockSize"]
    if block < 512 or block & (block - 1):
        raise BmapError(f"{path}: <BlockSize> {block} is not a power of two of at least 512 bytes")
    if sizes["BlocksCount"] != -(-sizes["ImageSize"] // block):
        raise BmapError(f"{path}: inconsistent: <ImageSize> {sizes['ImageSize']} bytes is not "
                        f"<BlocksCount> {sizes['BlocksCount']} blocks of {block} bytes")
    if sizes["MappedBlocksCount"] > sizes["BlocksCount"]:
        raise BmapError(f"{path}: inconsistent: more mapped blocks than blocks")


def _check_own_checksum(data: bytes, expected: str, checksum_type: str, path: str) -> None:
    """As bmaptool does it: the first occurrence of the value is replaced by as many "0"s,
    and the whole file is hashed."""
    at = data.find(expected.encode("ascii", "replace"))
    zeroed = data[:at] + b"0" * len(expected) + data[at + len(expected):]
    if at < 0 or hashlib.new(checksum_type, zeroed).hexdigest() != expected:
        raise BmapError(f"{path}: the bmap's own checksum does not match: the file was changed or "
                        "damaged (download it again, or write without it: --no-bmap)")


def _ranges(root: ElementTree.Element, attr: str, sizes: dict[str, int], checksum_type: str,
            path: str) -> tuple[Range, ...]:
    block_map = root.find("BlockMap")
    if block_map is None:
        raise BmapError(f"{path}: no <BlockMap>")
    hex_length = hashlib.new(checksum_type).digest_size * 2
    out, next_free, mapped = [], 0, 0
    for element in block_map.findall("Range"):
        match = _RANGE.fullmatch(element.text or "")
        if not match:
            raise BmapError(f"{path}: bad <Range> {(element.text or '')[:40]!r}")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if first < next_free or last < first or last >= sizes["BlocksCount"]:
            raise BmapError(f"{path}: <Range> {first}-{last} is out of order, overlaps another or lies "
                            f"outside the image's {sizes['BlocksCount']} blocks")
        digest = element.get(attr)
        if digest is not None and not re.fullmatch(f"[0-9a-fA-F]{{{hex_length}}}", digest):
            raise BmapError(f"{path}: <Range> {first}-{last}: {attr} is not a {checksum_type} value")
        block = sizes["BlockSize"]
        out.append(Range(first * block, min((last + 1) * block, sizes["ImageSize"]),
                         digest.lower() if digest else None, f"{first}-{last}"))
        next_free, mapped = last + 1, mapped + last - first + 1
    if mapped != sizes["MappedBlocksCount"]:
        raise BmapError(f"{path}: inconsistent: the ranges hold {mapped} blocks, "
                        f"<MappedBlocksCount> says {sizes['MappedBlocksCount']}")
    return tuple(out)
