"""cli — mta-lite-flash: write the box's SD-card image to a card, verified, with its config.

    mta-lite-flash IMAGE [DEVICE] [--config mta-lite.toml] [--yes] [--no-verify] [--to-file]
                   [--bmap FILE | --no-bmap]

Without DEVICE it lists the removable disks (model, size, transport) and writes nothing.
With it, in this order, and nothing is written before the last of the checks:
  1. the config (--config) is validated by the box's own validator (configgen.validate);
  2. the image's bmap is found (as bmaptool finds it) and its own checksum verified, or the
     image's size is taken from the file (a compressed image without a bmap is read once);
  3. the guards (devices.refusal) and, for a disk that is not removable or over 128 GB,
     --yes or a typed "yes" on a terminal;
  4. with --config, the image's first FAT partition is found in its MBR, and mtools checked;
  5. the image is written (writer: first sector last), read back and compared, and the
     config put on the boot partition and read back (bootconfig).
One line per step goes to standard output; progress bars go to standard error, only on a
terminal; errors are one line on standard error that says what state the card is in.

Exit status (sysexits.h, as mta-lite uses it):
    0    written and verified (and the config on it), or the list of disks printed
    64   usage: the command line is wrong
    65   the image or its bmap is corrupt, truncated or inconsistent
    66   the image, the bmap or the config file cannot be opened
    69   mtools (for --config) or the `flash` extra's modules are not installed
    73   a guard refused the target, or it cannot be opened for writing: nothing written
    74   I/O error: the card failed or was pulled out, or the read-back differs (verify),
         or the config could not be put on it; or the image could not be read
    78   the config is invalid (the box's one line: file, key, problem): nothing written
    130  interrupted (Ctrl-C)

Must never: write to the target before every check passed; print the config's contents.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, TextIO

from mta_lite.config import generations as configgen
from mta_lite.errors import ConfigError

from . import bootconfig
from .bmap import Plan, find_bmap, load_bmap, plan
from .devices import (Roots, System, candidates, confirmation, describe, disk_refusal, inspect_target,
                      read_system, refusal)
from .errors import (EX_CONFIG, EX_INTERRUPTED, EX_OK, FlashError, ImageError, InputMissingError, TargetRefusedError,
                     ToolMissingError, UsageError, VerifyError)
from .image import ImageSource, measure, open_image
from .progress import bar, human_bytes, human_disk, human_rate
from .writer import Card, first_difference, verify, write_image

PROG = "mta-lite-flash"
# What the card is like when a step fails or Ctrl-C comes, by the step that was running.
CONSEQUENCE = {
    "check": "nothing was written",
    "write": "the card is incomplete (it has no partition table yet, so nothing will use it): write it again",
    "verify": "the card is written but not verified: write it again to be sure of it",
    "config": (f"the card is written and verified, but {bootconfig.CONFIG_NAME} is not on it: write it again, "
               "or copy the file onto its boot partition"),
    "done": "the card was written completely",
}
VERIFY_FAILED = "do not use this card as it is: write it again, or try another card"
PASSWORD_HINT = ("; a freshly written box has no such file: write the password inline (password = \"...\"), "
                 "the box moves it into a password file when it imports the config")
FILE_HINT = "; a freshly written box holds only what the image holds"


@dataclass
class Streams:
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def say(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    def error(self, line: str) -> None:
        print(f"{PROG}: {line}", file=self.stderr, flush=True)


@dataclass
class Session:
    args: argparse.Namespace
    roots: Roots
    streams: Streams
    before_verify: Callable[[Card], None] | None = None     # tests: change the card after the write
    stage: str = "check"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Write the mta-lite SD-card image to a card: only the blocks "
                     "that hold data (bmap), first sector last, read back and compared; optionally with "
                     "the box's config on its boot partition. Without DEVICE: list the removable disks.")
    parser.add_argument("image", metavar="IMAGE", help=".img, .img.xz, .img.gz or .img.zst")
    parser.add_argument("device", metavar="DEVICE", nargs="?", help="the whole card, e.g. /dev/sdb or /dev/mmcblk0")
    parser.add_argument("--config", metavar="FILE", help="validate FILE and put it on the card as mta-lite.toml")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask before writing to a disk that is not removable or is over 128 GB")
    parser.add_argument("--no-verify", action="store_true", help="do not read the card back")
    parser.add_argument("--to-file", action="store_true", help="DEVICE may be a regular file (created if missing)")
    parser.add_argument("--bmap", metavar="FILE", help="the image's block map (default: found beside IMAGE)")
    parser.add_argument("--no-bmap", action="store_true", help="write the whole image, even with a bmap beside it")
    return parser


def main(argv: list[str] | None = None, *, roots: Roots = Roots(), streams: Streams | None = None,
         before_verify: Callable[[Card], None] | None = None) -> int:
    streams = streams or Streams()
    session = Session(argparse.Namespace(), roots, streams, before_verify)
    try:
        session.args = _parser().parse_args(argv)
        return _run(session)
    except KeyboardInterrupt:
        streams.error(f"interrupted: {CONSEQUENCE[session.stage]}")
        return EX_INTERRUPTED
    except ConfigError as exc:      # the box's own one line: file, key, problem
        streams.error(str(exc))
        return EX_CONFIG
    except FlashError as exc:
        streams.error(f"{exc}; {VERIFY_FAILED if isinstance(exc, VerifyError) else CONSEQUENCE[session.stage]}")
        return exc.exit_code


def _run(session: Session) -> int:
    args, streams = session.args, session.streams
    if importlib.util.find_spec("tqdm") is None:
        raise ToolMissingError("the tqdm module is missing: pip install 'mta-lite[flash]'")
    if args.bmap and args.no_bmap:
        raise UsageError("--bmap and --no-bmap contradict each other")
    if args.device is None:
        if args.to_file:
            raise UsageError("--to-file needs a DEVICE (the file to write)")
        return _list(session)
    config = validated_config(args.config) if args.config else None
    tools = bootconfig.require_mtools() if config is not None else None
    image_plan = _plan(session)
    target = _target(session, image_plan)
    with open_image(args.image) as source:
        boot = None
        if config is not None:
            boot = bootconfig.boot_partition(source.peek(bootconfig.SECTOR_BYTES), args.image, image_plan.image_size)
        with Card.open(target, image_plan.image_size) as card:
            _write_and_verify(session, source, card, image_plan)
            if config is not None:
                session.stage = "config"
                bootconfig.put_config(card, boot, config, tools)
                streams.say(f"config: {bootconfig.CONFIG_NAME} is on partition {boot.number} ({boot.kind}, at byte "
                            f"{boot.start}) and reads back the same; the box imports it at first boot")
    session.stage = "done"
    streams.say(f"done: {args.device} is ready")
    return EX_OK


def _list(session: Session) -> int:
    system = read_system(session.roots)
    disks = candidates(system)
    say = session.streams.say
    if not disks:
        say("no removable disk found: insert the card (in a built-in reader it shows as /dev/mmcblk0)")
        return EX_OK
    say("removable disks (give the one that is your card as DEVICE):")
    for disk in disks:
        note = disk_refusal(system, disk, 0)
        say(f"  {system.path(disk.name):<16} {human_disk(disk.size_bytes):>9}  {disk.transport:<8} "
            f"{disk.model or 'unknown model'}" + (f"  (refused: {note})" if note else ""))
    return EX_OK


def validated_config(path: str) -> bytes:
    """The config's bytes, validated as the box validates one it imports: by configgen, in
    an empty directory that stands for a freshly written box's /etc/mta-lite. Relative file
    names (password_file, tls_cert...) therefore fail, as they would on the box; absolute
    ones are looked up on this computer, the only place that can be looked at."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(configgen.MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise InputMissingError(f"{path}: no such config file") from None
    except OSError as exc:
        raise InputMissingError(f"{path}: cannot read the config: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="mta-lite-flash-") as box:
        try:
            configgen.validate(os.path.join(box, bootconfig.CONFIG_NAME), data, path)
        except ConfigError as exc:
            if not exc.problem.startswith("file not found"):
                raise
            hint = PASSWORD_HINT if exc.key.endswith("password_file") else FILE_HINT
            raise ConfigError(exc.path, exc.key, exc.problem + hint) from None
    return data


def _plan(session: Session) -> Plan:
    args, streams = session.args, session.streams
    bmap_path = args.bmap or (None if args.no_bmap else find_bmap(args.image))
    bmap = load_bmap(bmap_path) if bmap_path else None
    size = _image_size(args.image, bmap, streams)
    result = plan(bmap, size)
    mapped = (f"; bmap {bmap_path}: {human_bytes(result.mapped_bytes)} in {len(result.ranges)} ranges hold data"
              if bmap else "; no bmap: every byte is written")
    streams.say(f"image: {args.image} ({human_bytes(size)}{mapped})")
    return result


def _image_size(path: str, bmap, streams: Streams) -> int:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputMissingError(f"{path}: cannot open the image: {exc.strerror}") from None
    regular = stat.S_ISREG(info.st_mode)
    kind = _kind(path) if regular else None
    if bmap is not None:
        if kind == "raw" and info.st_size != bmap.image_size:
            raise ImageError(f"{path}: the image is {info.st_size} bytes, its bmap {bmap.path} says "
                             f"{bmap.image_size}: they do not belong together")
        return bmap.image_size
    if not regular:
        raise UsageError(f"{path} is not a regular file: reading an image from a pipe needs its bmap (--bmap)")
    if kind == "raw":
        return info.st_size
    # Without a bmap the unpacked size is not written down anywhere reliable (gzip keeps it
    # modulo 4 GiB, zstd only per frame): read the image once. That also checks every CRC
    # before the card is touched.
    with bar("check", info.st_size, streams.stderr) as progress:
        return measure(path, lambda position, _total: progress.update(position - progress.n))


def _kind(path: str) -> str:
    with open_image(path) as source:
        return source.kind


def _target(session: Session, image_plan: Plan):
    args, streams = session.args, session.streams
    target = inspect_target(args.device, session.roots, args.to_file)
    if target.kind == "file" and os.path.exists(args.image) and os.path.samefile(args.device, args.image):
        raise TargetRefusedError(f"refused: {args.device} is the image itself")
    system = read_system(session.roots) if target.kind == "block" else System({}, (), session.roots.dev)
    reason = refusal(system, target, image_plan.image_size, args.to_file)
    if reason:
        raise TargetRefusedError(f"refused: {reason}")
    if target.kind != "block":
        streams.say(f"target: {args.device} (a file)")
        return target
    disk = system.disks[target.name]
    why = confirmation(disk)
    if why and not args.yes:
        _confirm(session, f"{describe(system, disk)} {why}")
    streams.say(f"target: {describe(system, disk)}")
    return target


def _confirm(session: Session, what: str) -> None:
    streams = session.streams
    if not _isatty(streams.stdin):
        raise TargetRefusedError(f"refused: {what}: give --yes to write to it anyway")
    streams.stderr.write(f"{what}.\nEverything on it will be overwritten. Type yes to write "
                         f"{session.args.image} to it: ")
    streams.stderr.flush()
    if streams.stdin.readline().strip().lower() != "yes":
        raise TargetRefusedError("refused: not confirmed")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _write_and_verify(session: Session, source: ImageSource, card: Card, image_plan: Plan) -> None:
    streams = session.streams
    session.stage = "write"
    with bar("write", image_plan.mapped_bytes, streams.stderr) as progress:
        written = write_image(source, card, image_plan, progress)
    streams.say(f"written: {human_bytes(written.bytes)} to {card.path} in {written.seconds:.1f} s "
                f"({human_rate(written.bytes, written.seconds)})")
    if session.args.no_verify:
        streams.say("verify: skipped (--no-verify)")
        return
    session.stage = "verify"
    if session.before_verify:
        session.before_verify(card)
    with bar("verify", image_plan.mapped_bytes, streams.stderr) as progress:
        mismatch, seconds = verify(card, image_plan, written, progress)
    if mismatch is not None:
        at = first_difference(session.args.image, card, mismatch)
        where = (f"at byte {at}" if at is not None
                 else f"in bytes {mismatch.offset}-{mismatch.offset + mismatch.length - 1}")
        blocks = f" (bmap blocks {mismatch.range.blocks})" if image_plan.bmap else ""
        raise VerifyError(f"verify failed: {card.path} differs from the image {where}{blocks}")
    ranges = f"{len(image_plan.ranges)} ranges" if image_plan.bmap else "the whole image"
    streams.say(f"verified: {human_bytes(written.bytes)} read back from {card.path} match the image "
                f"(SHA-256, {ranges}) in {seconds:.1f} s ({human_rate(written.bytes, seconds)})")


if __name__ == "__main__":
    sys.exit(main())
