"""usbstick — install a config from a USB stick labelled MTACONFIG, and say on the stick what happened.

    python -m board.usbstick DEVICE [--config FILE]      (udev + systemd run it on insertion)
    provision_from_stick(device, config_path) -> StickResult

What the stick may hold, in its top folder (names are case-insensitive, as FAT's are):
    mta-lite.toml   the new config; installed with configgen.apply_config() as
                    "usb:MTACONFIG/mta-lite.toml" if it validates completely. At most
                    configgen.MAX_CONFIG_BYTES, UTF-8 (a leading byte-order mark is dropped).
    ROLLBACK.TXT    the number of a kept generation, e.g. "6": installs that generation
                    (configgen.rollback). Empty or anything else: an error that lists the
                    generations kept. A number, not "the previous one": a stick left plugged
                    in is read again at every boot, and must not flip between two configs.
    RESULT.TXT      written by the box: one line "OK generation N installed (config DIGEST)"
                    (", no change" / ", rolled back to generation M"), "ERROR <problem>" or
                    "NOTHING to do: ...", then the time (UTC). CRLF, for any PC's editor.
A stick with both mta-lite.toml and ROLLBACK.TXT is refused. Secrets travel inline in
mta-lite.toml (`password = "..."`) or are on the box already: a `password_file` is resolved
against the box's config directory, exactly as the relay resolves it, and no other file is
ever copied from the stick.

Exit status: 0 installed, no change, nothing to do, or not an MTACONFIG stick (ignored);
78 (EX_CONFIG) the stick's content was refused; 75 (EX_TEMPFAIL) the stick could not be read
(pulled, hung, damaged); 73 (EX_CANTCREAT) the box could not write the config.

Guarantees: nothing changes on the box unless the whole file was read (size-checked against
its directory entry) and validated (C1, C3); a stick that is pulled, hangs or lies gives one
log line and exit 75, never a partial install. Every run logs one line for its outcome, and
one more if RESULT.TXT could not be written; that never changes the outcome.
SECURITY: the stick is untrusted media: it is never mounted (mtools reads it, see
board/mtools.py), every read is bounded, and nothing from it reaches a log or RESULT.TXT
except escaped, shortened names and labels. No error shown contains a password (configgen's
errors never do, and file contents are never shown).
Must never: write to a stick that is not labelled MTACONFIG, or to one it could not read;
crash on what a stick holds; log or write a secret.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

from mta_lite import maillog

from mta_lite.config import generations as configgen
from mta_lite.errors import ConfigError

from mta_lite_board.mtools import (MAX_LISTING_BYTES, Entry, Listing, ListingError, MtoolsRunner, Runner, StickReadError,
                     StickWriteError, list_root, read_file, shown, write_file)

LABEL = "MTACONFIG"
CONFIG_NAME = "mta-lite.toml"
ROLLBACK_NAME = "ROLLBACK.TXT"
RESULT_NAME = "RESULT.TXT"
STICK = f"usb:{LABEL}"
SOURCE = f"{STICK}/{CONFIG_NAME}"
ROLLBACK_SOURCE = f"{STICK}/{ROLLBACK_NAME}"
DEFAULT_CONFIG = "/etc/mta-lite/mta-lite.toml"
# A generation number is six digits (configgen names them NNNNNN.toml); a little room for
# blanks and line ends that an editor adds.
MAX_ROLLBACK_BYTES = 64
# RESULT.TXT is read by a person; a ConfigError can quote a long value from the file.
MAX_RESULT_LINE_CHARS = 1000
UTF8_BOM = b"\xef\xbb\xbf"
EX_OK, EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = 0, 73, 75, 78

log = logging.getLogger("mta_lite_board.usbstick")


class Outcome(enum.Enum):
    APPLIED = ("OK", EX_OK, logging.INFO)
    UNCHANGED = ("OK", EX_OK, logging.INFO)
    NOTHING = ("NOTHING", EX_OK, logging.INFO)
    IGNORED = ("", EX_OK, logging.INFO)                 # not our stick: nothing written to it
    REJECTED = ("ERROR", EX_CONFIG, logging.WARNING)
    READ_ERROR = ("", EX_TEMPFAIL, logging.ERROR)       # nothing written to it either
    INSTALL_FAILED = ("ERROR", EX_CANTCREAT, logging.ERROR)

    def __init__(self, word: str, exit_code: int, level: int) -> None:
        self.word, self.exit_code, self.level = word, exit_code, level


@dataclass(frozen=True)
class StickResult:
    outcome: Outcome
    message: str                    # one line without a secret: the log's and RESULT.TXT's
    generation: int | None = None   # installed now (APPLIED, UNCHANGED)
    digest: str | None = None
    result_written: bool = False

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


class Action(enum.Enum):
    APPLY = "apply"
    ROLLBACK = "rollback"
    NOTHING = "nothing"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Plan:
    action: Action
    size: int = 0                       # bytes to read (APPLY, ROLLBACK)
    error: ConfigError | None = None    # REFUSE
    hint: str = ""                      # NOTHING


# ------------------------------------------------------------------ deciding, pure

def find(listing: Listing, name: str) -> Entry | None:
    """The one entry called `name`; two are a damaged (or crafted) directory: refused."""
    found = [entry for entry in listing.entries if entry.is_named(name)]
    if len(found) > 1:
        raise ConfigError(STICK, "", f"{len(found)} entries named {name} in the top folder "
                          "(a damaged file system? check the stick on a PC)")
    return found[0] if found else None


def plan(listing: Listing) -> Plan:
    """What to do with a stick whose top folder is `listing`."""
    if not listing.complete:
        return _refuse(STICK, f"the top folder lists more than {MAX_LISTING_BYTES // 1024} KiB of names "
                       f"(too many files); use a stick with only {CONFIG_NAME} on it")
    try:
        config, rollback = find(listing, CONFIG_NAME), find(listing, ROLLBACK_NAME)
    except ConfigError as exc:
        return Plan(Action.REFUSE, error=exc)
    if config and rollback:
        return _refuse(STICK, f"holds both {CONFIG_NAME} and {ROLLBACK_NAME}; keep only one of them")
    if config:
        return _file_plan(config, Action.APPLY, SOURCE, configgen.MAX_CONFIG_BYTES)
    if rollback:
        return _file_plan(rollback, Action.ROLLBACK, ROLLBACK_SOURCE, MAX_ROLLBACK_BYTES)
    return Plan(Action.NOTHING, hint=_near_miss(listing))


def _file_plan(entry: Entry, action: Action, source: str, limit: int) -> Plan:
    if entry.is_dir:
        return _refuse(source, "is a folder, not a file")
    if entry.size > limit:
        return _refuse(source, f"{entry.size} bytes is over the {limit}-byte limit for this file")
    return Plan(action, size=entry.size)


def _refuse(source: str, problem: str) -> Plan:
    return Plan(Action.REFUSE, error=ConfigError(source, "", problem))


def _near_miss(listing: Listing) -> str:
    """A name that was probably meant to be ours (an editor's hidden ".txt" extension)."""
    for entry in listing.entries:
        folded = entry.name.casefold()
        if folded.startswith(("mta-lite", "rollback")) and not entry.is_named(RESULT_NAME):
            return f" (found {shown(entry.name, 60)}: rename it)"
    return ""


def decode_config(data: bytes) -> bytes:
    """The candidate's bytes as they are installed: UTF-8 without a byte-order mark."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(SOURCE, "", f"not UTF-8 at byte {exc.start} (save the file as UTF-8)") from None
    return data


def generation_number(data: bytes, kept: list[configgen.Generation]) -> int:
    """The generation ROLLBACK.TXT names; ConfigError listing the kept ones otherwise."""
    text = data.removeprefix(UTF8_BOM).decode("ascii", "replace").strip()
    if text.isdecimal() and text.isascii() and len(text) <= 6:
        return int(text)
    names = ", ".join(f"{g.number} (installed)" if g.current else str(g.number) for g in kept) or "none"
    raise ConfigError(ROLLBACK_SOURCE, "", f"write the number of the generation to install into it; kept: {names}")


def format_result(result: StickResult, when: float) -> bytes:
    """RESULT.TXT: the outcome line and the time, CRLF."""
    line = result.message
    if len(line) > MAX_RESULT_LINE_CHARS:
        line = line[:MAX_RESULT_LINE_CHARS] + "..."
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    return f"{line}\r\n{stamp}\r\n".encode("utf-8")


def _applied(applied: configgen.ApplyResult, note: str = "") -> StickResult:
    outcome = Outcome.APPLIED if applied.changed else Outcome.UNCHANGED
    suffix = note if applied.changed else ", no change"
    return StickResult(outcome, f"OK {applied.describe()}{suffix}",
                       applied.generation, applied.digest)


def _rejected(exc: ConfigError) -> StickResult:
    return StickResult(Outcome.REJECTED, f"ERROR {exc}")


# ------------------------------------------------------------------ doing

def provision_from_stick(device: str, config_path: str, runner: Runner | None = None,
                         now: Callable[[], float] = time.time) -> StickResult:
    """Read the stick at `device`, act on it, write RESULT.TXT, log the outcome (see the
    module docstring)."""
    runner = runner or MtoolsRunner()
    try:
        listing = list_root(runner, device)
    except (StickReadError, ListingError) as exc:
        return _report(device, StickResult(Outcome.READ_ERROR, f"stick not read, nothing changed: {exc}"))
    if listing.label != LABEL:
        label = "no label" if listing.label is None else f"label {shown(listing.label, 40)!r}"
        return _report(device, StickResult(Outcome.IGNORED, f"{label}, not {LABEL}: stick ignored"))
    result = _carry_out(runner, device, config_path, plan(listing))
    if result.outcome is not Outcome.READ_ERROR:
        result = replace(result, result_written=_write_result(runner, device, format_result(result, now())))
    return _report(device, result)


def _carry_out(runner: Runner, device: str, config_path: str, todo: Plan) -> StickResult:
    try:
        if todo.action is Action.REFUSE:
            raise todo.error
        if todo.action is Action.APPLY:
            data = decode_config(read_file(runner, device, CONFIG_NAME, todo.size))
            return _applied(configgen.apply_config(config_path, data, SOURCE))
        if todo.action is Action.ROLLBACK:
            data = read_file(runner, device, ROLLBACK_NAME, todo.size)
            number = generation_number(data, configgen.generations(config_path))
            return _applied(configgen.rollback(config_path, number), f", rolled back to generation {number}")
    except StickReadError as exc:
        return StickResult(Outcome.READ_ERROR, f"stick not read, nothing changed: {exc}")
    except ConfigError as exc:
        return _rejected(exc)
    except RecursionError:          # tomllib recurses per nesting level: '[' * 30000 fits in 64 KiB
        return _rejected(ConfigError(SOURCE, "", "not valid TOML: nested too deeply"))
    except OSError as exc:          # the box's side: config directory not writable, disk full
        return StickResult(Outcome.INSTALL_FAILED, f"ERROR could not install the config on the box: "
                           f"{exc.strerror or type(exc).__name__} (the config in use is unchanged)")
    return StickResult(Outcome.NOTHING, f"NOTHING to do: no {CONFIG_NAME} or {ROLLBACK_NAME} "
                       f"in the top folder of the stick{todo.hint}")


def _write_result(runner: Runner, device: str, text: bytes) -> bool:
    try:
        write_file(runner, device, RESULT_NAME, text)
    except StickWriteError as exc:
        log.warning("%s: %s not written (the outcome stands): %s", shown(device), RESULT_NAME, exc)
        return False
    return True


def _report(device: str, result: StickResult) -> StickResult:
    log.log(result.outcome.level, "%s: %s", shown(device), result.message)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m board.usbstick",
                                     description="Install mta-lite.toml from a stick labelled MTACONFIG.")
    parser.add_argument("device", help="the stick's block device (or a FAT image file)")
    parser.add_argument("--config", default=os.environ.get("MTA_LITE_CONFIG", DEFAULT_CONFIG),
                        help="the config file to replace (default $MTA_LITE_CONFIG or %(default)s)")
    args = parser.parse_args(argv)
    maillog.setup_logging()
    return provision_from_stick(args.device, args.config).exit_code


if __name__ == "__main__":
    sys.exit(main())
