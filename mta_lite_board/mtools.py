"""mtools — list, read and write files on a FAT stick through mtools, without mounting it.

    runner = MtoolsRunner()                              # each command killed after timeout_s
    listing = list_root(runner, "/dev/sda1")             # Listing(label, entries, ...)
    data = read_file(runner, "/dev/sda1", "mta-lite.toml", entry.size)
    write_file(runner, "/dev/sda1", "RESULT.TXT", b"OK ...\\r\\n")
    clusters(runner, "/dev/sda1", "mta-lite.toml")       # [53, 54, ...]: where its bytes are
    parse_mdir(text)                                     # pure: what `mdir -a -f` printed

The kernel never parses the stick's file system: mtools (mdir, mcopy, mshowfat) reads the
block device as a plain file in a child process, run without a shell, with a fixed argument
list and a fixed environment (MTOOLS_ENV: no ~/.mtoolsrc, a fixed date format, long names on).
A runner is any callable `runner(argv, limit_bytes, stdin) -> Completed`; MtoolsRunner is the
real one (board/command.py runs the child), tests wrap it to inject faults.

Guarantees: no command outlives its timeout (it is killed with SIGKILL, with its process
group: mtools ignores SIGTERM while blocked in open()); no more than `limit_bytes` of its
standard output and MAX_STDERR_BYTES of its standard error are ever held in memory;
read_file() returns exactly the number of bytes the listing gave, or raises.
SECURITY: everything the stick yields is untrusted: the listing (names, sizes, the label)
and the file contents. The parser never raises anything but ListingError, whatever the text.
Names from the stick are never used in a command line: only fixed names are.
Must never: mount anything, run a shell, read without a bound, or wait without a deadline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from mta_lite.errors import MtaLiteError

from mta_lite_board.command import CommandError, run_command

# A stick that is there answers within a second; a slow one spins up in a few. Long enough
# for a 64 KiB read from the slowest stick, short enough that a hung device (or a path that
# is a FIFO) does not keep the provisioning unit waiting: systemd's own limit is 3 minutes.
MTOOLS_TIMEOUT_S = 30.0
# The top folder of a FAT12/16 stick holds at most 512 entries, about 30 KiB of listing even
# with long names; FAT32's top folder has no such limit. Anything longer is not a provisioning
# stick we can trust to list completely.
MAX_LISTING_BYTES = 64 * 1024
# Only the first line of an mtools error goes into the log.
MAX_STDERR_BYTES = 4096
# A file we rewrite is at most 64 KiB (a config) or a few hundred KiB (a report): even with
# 512-byte clusters that is a few hundred clusters. A longer chain is a damaged FAT.
MAX_CHAIN_CLUSTERS = 4096
# Shown stick strings (labels, mtools errors, names) are cut at this many characters.
MAX_SHOWN_CHARS = 200
ROOT = "::/"

# The environment mtools runs with: no HOME (no ~/.mtoolsrc), no sanity check of the
# geometry (sticks are not floppies), a fixed date and 24-hour time format so that
# parse_mdir() can rely on it, long names on, and UTF-8 for names that are not ASCII.
MTOOLS_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
    "LC_ALL": "C.UTF-8",
    "MTOOLS_SKIP_CHECK": "1",
    "MTOOLS_DATE_STRING": "yyyy-mm-dd",
    "MTOOLS_TWENTY_FOUR_HOUR_CLOCK": "1",
    "MTOOLS_DOTTED_DIR": "0",
    "MTOOLS_NO_VFAT": "0",
}


class StickReadError(MtaLiteError, OSError):
    """The stick could not be read completely: mtools failed, or returned too little or too
    much (a stick pulled mid-read, a damaged file system)."""


class StickTimeoutError(StickReadError, TimeoutError):
    """An mtools command did not finish in time and was killed (a hung device)."""


class StickWriteError(MtaLiteError, OSError):
    """A file could not be written to the stick (read-only, full or gone)."""


class ListingError(MtaLiteError, ValueError):
    """The text is not a complete `mdir` listing of the stick's top folder."""


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes           # at most the limit given to the runner
    stderr: bytes           # at most MAX_STDERR_BYTES
    overflow: bool          # stdout reached the limit; the command was killed there


Runner = Callable[[Sequence[str], int, bytes], Completed]


@dataclass(frozen=True)
class Entry:
    short: str              # the 8.3 name as mdir shows it, "NAME.EXT"
    long: str               # the VFAT long name, "" if the entry has none
    size: int               # bytes, as the directory entry claims; 0 for a directory
    is_dir: bool

    def is_named(self, name: str) -> bool:
        """FAT names are case-insensitive, and mtools finds a file by either of its names."""
        folded = name.casefold()
        return folded in (self.short.casefold(), self.long.casefold())

    @property
    def name(self) -> str:
        return self.long or self.short


@dataclass(frozen=True)
class Listing:
    label: str | None       # the volume label, trailing blanks removed; None: no label
    entries: tuple[Entry, ...]
    skipped: int            # lines in the entry area that are no entry mdir would print
    complete: bool          # False: the listing was cut at MAX_LISTING_BYTES


# ------------------------------------------------------------------ the subprocess edge

class MtoolsRunner:
    """Runs one mtools command with a deadline and bounded output (see the module docstring)."""

    def __init__(self, timeout_s: float = MTOOLS_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def __call__(self, argv: Sequence[str], limit_bytes: int, stdin: bytes = b"") -> Completed:
        try:
            done = run_command(argv, timeout_s=self.timeout_s, limit_bytes=max(1, limit_bytes), stdin=stdin,
                               env=MTOOLS_ENV, max_stderr=MAX_STDERR_BYTES)
        except CommandError as exc:
            raise StickReadError(str(exc)) from None
        if done.timed_out:
            raise StickTimeoutError(f"{argv[0]} did not finish within {self.timeout_s:g} s and was killed "
                                    "(a hung or pulled stick)")
        return Completed(done.returncode, done.stdout, done.stderr, done.overflow)


# ------------------------------------------------------------------ commands

def list_root(runner: Runner, device: str) -> Listing:
    """The stick's top folder, hidden files included (`mdir -f`: no free-space count, which
    would read the whole FAT)."""
    done = runner(["mdir", "-a", "-f", "-i", _image(device), ROOT], MAX_LISTING_BYTES + 1, b"")
    if not done.overflow:
        _check(done, "mdir")
    text = done.stdout[:MAX_LISTING_BYTES].decode("utf-8", "replace")
    return parse_mdir(text, complete=not done.overflow)


def read_file(runner: Runner, device: str, name: str, size: int) -> bytes:
    """Exactly `size` bytes of the top-folder file `name` (a fixed name, never one from the
    stick); StickReadError if mtools gives fewer, more, or fails. At most size + 1 bytes are
    read from the pipe, whatever the stick holds."""
    done = runner(["mcopy", "-n", "-i", _image(device), ROOT + name, "-"], size + 1, b"")
    if done.overflow:
        raise StickReadError(f"{name} holds more than the {size} bytes its directory entry gives "
                             "(a damaged file system?)")
    _check(done, "mcopy")
    if len(done.stdout) != size:
        raise StickReadError(f"read {len(done.stdout)} of the {size} bytes of {name} "
                             "(the stick was pulled or its file system is damaged)")
    return done.stdout


def write_file(runner: Runner, device: str, name: str, data: bytes) -> None:
    """Replace (or create) the top-folder file `name`; StickWriteError if that fails."""
    try:
        done = runner(["mcopy", "-o", "-i", _image(device), "-", ROOT + name], MAX_STDERR_BYTES, data)
        _check(done, "mcopy")
    except StickReadError as exc:
        raise StickWriteError(str(exc)) from None


def clusters(runner: Runner, device: str, name: str) -> list[int]:
    """The clusters of the top-folder file `name`, in order (`mshowfat`); StickReadError if
    mtools fails or the chain is longer than MAX_CHAIN_CLUSTERS (a damaged or crafted FAT)."""
    done = runner(["mshowfat", "-i", _image(device), ROOT + name], MAX_LISTING_BYTES, b"")
    _check(done, "mshowfat")
    return parse_chain(done.stdout.decode("ascii", "replace"))


def parse_chain(text: str) -> list[int]:
    """`::/name <53-68><70>` -> [53, ..., 68, 70]; StickReadError if it is not that."""
    runs = _CHAIN.findall(text)
    if not runs and "empty file" in text:
        return []
    if not runs:
        raise StickReadError(f"mshowfat printed no cluster chain: {shown(text.strip(), 80)!r}")
    found: list[int] = []
    for first, last in runs:
        first_n, last_n = int(first), int(last or first)
        if last_n < first_n or len(found) + last_n - first_n + 1 > MAX_CHAIN_CLUSTERS:
            raise StickReadError("the file's cluster chain is longer than the file (a damaged file system?)")
        found.extend(range(first_n, last_n + 1))
    return found


def _image(device: str) -> str:
    # mtools reads "FILE@@OFFSET" as "FILE from byte OFFSET": a device path never has it.
    if "@@" in device:
        raise StickReadError(f"not a device path: {shown(device)}")
    return device


def _check(done: Completed, program: str) -> None:
    if done.returncode != 0:
        detail = "; ".join(line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip())
        raise StickReadError(f"{program} exited with status {done.returncode}: {shown(detail) or 'no message'}")


def shown(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` from the stick or from mtools, safe for one log line: control characters
    escaped, cut at `limit` characters."""
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------ parsing, pure

# `mdir` (mtools 4) prints, for each entry: the 8.3 name as "%s %s " (8 and 3 characters;
# 13 blanks for a nameless entry), then "<DIR>    " or " %8ld" (the size), " ", the date,
# "  ", the time as "%2d:%02d" and one more character (am/pm, a blank in 24-hour mode), and
# " LONGNAME" if the entry has a long name.
_ENTRY = re.compile(r"(?P<base>.{8}) (?P<ext>.{3}) (?:<DIR>    | *(?P<size>[0-9]{1,10}))"
                    r" [0-9]{4}-[0-9]{2}-[0-9]{2}  [ 0-9][0-9]:[0-9]{2}[ ap](?: (?P<long>.+))?")
_VOLUME = re.compile(r" Volume in drive .(?: is (?P<label>.*)| has no label)")
_ABBREVIATED = re.compile(r"(?P<long>.*) \(abbr=.*\)")
_SUMMARY = re.compile(r" +[0-9]+ files? +[0-9 ]+ bytes|No files")
_HEADER = "Directory for " + ROOT
_CHAIN = re.compile(r"<([0-9]{1,10})(?:-([0-9]{1,10}))?>")


def parse_label(line: str) -> str | None:
    """The label from mdir's first line; None when the stick has no label."""
    match = _VOLUME.fullmatch(line)
    if not match:
        raise ListingError(f"not an mdir listing: first line {shown(line, 60)!r}")
    if match["label"] is None:
        return None
    label = match["label"].rstrip(" ")
    abbreviated = _ABBREVIATED.fullmatch(label)
    return abbreviated["long"] if abbreviated else label


def parse_entry(line: str) -> Entry | None:
    """One entry line, or None if mdir would not print this line for an entry."""
    match = _ENTRY.fullmatch(line)
    if not match:
        return None
    base, ext = match["base"].rstrip(" "), match["ext"].rstrip(" ")
    short = f"{base}.{ext}" if ext else base
    size = match["size"]
    return Entry(short, match["long"] or "", int(size) if size else 0, size is None)


def parse_mdir(text: str, complete: bool = True) -> Listing:
    """The output of `mdir -a -f -i DEVICE ::/`. complete=False: the text was cut at
    MAX_LISTING_BYTES; the summary line is then not required (and the last line may be cut)."""
    lines = text.split("\n")
    label = parse_label(lines[0])
    try:
        start = lines.index(_HEADER) + 1
    except ValueError:
        raise ListingError(f"no line {_HEADER!r} in the mdir listing") from None
    body = [line for line in lines[start:] if line]
    if complete:
        if not body or not _SUMMARY.fullmatch(body[-1]):
            raise ListingError("the mdir listing ends before its summary line")
        body.pop()
    elif body:
        body.pop()          # may be cut in the middle
    entries = [parse_entry(line) for line in body]
    found = tuple(e for e in entries if e is not None)
    return Listing(label, found, len(entries) - len(found), complete)
