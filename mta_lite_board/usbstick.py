"""usbstick — install a config from a USB stick labelled MTACONFIG, and say on the stick what happened.

    python -m mta_lite_board.usbstick DEVICE [--config FILE] [--log-file FILE] [--relay-command CMD]
    provision_from_stick(device, config_path) -> StickResult      (udev + systemd run it on insertion)

What the stick may hold, in its top folder (names are case-insensitive, as FAT's are):
    mta-lite.toml   the new config, at most configgen.MAX_CONFIG_BYTES of UTF-8 (a leading
                    byte-order mark is dropped). Installed once (board/stickimport.py): a file
                    that is a kept generation already (its "********" placeholders filled from
                    it) is not installed again; anything else is validated completely and
                    installed with configgen.apply_config() as "usb:MTACONFIG/mta-lite.toml".
                    Afterwards its passwords and tokens are replaced by "********" on the stick
                    unless its [provision] table says scrub_secrets = false.
    ROLLBACK.TXT    the number of a kept generation, e.g. "6": installs that generation
                    (configgen.rollback). Empty or anything else: an error that lists the
                    generations kept. A number, not "the previous one": a stick left plugged
                    in is read again at every boot, and must not flip between two configs.
    EXPORT          any file of that name (an empty one will do; it is never read): the box
                    writes mta-lite-report.txt and mta-lite-report.json (board/report.py),
                    after acting on a config or ROLLBACK.TXT if there is one.
    RESULT.TXT      written by the box: one line "OK generation N installed (config DIGEST)"
                    ("OK mta-lite.toml already installed (generation N, ...)", "..., rolled
                    back to generation M"), "ERROR <problem>" or "NOTHING to do: ...", a line
                    for each note (the passwords scrubbed, or still on the stick, the report
                    written), then the time (UTC). CRLF, for any PC's editor.
A stick with both mta-lite.toml and ROLLBACK.TXT is refused. Secrets travel inline in
mta-lite.toml (`password = "..."`) or are on the box already: a `password_file` is resolved
against the box's config directory, exactly as the relay resolves it, and no other file is
ever copied from the stick.

Exit status: 0 installed, no change, nothing to do, report written, or not an MTACONFIG
stick (ignored); 78 (EX_CONFIG) the stick's content was refused; 75 (EX_TEMPFAIL) the stick
could not be read (pulled, hung, damaged); 73 (EX_CANTCREAT) the box could not write the
config, or the report could not be written to the stick.

Guarantees: nothing changes on the box unless the whole file was read (size-checked against
its directory entry) and validated (C1, C3); a stick that is pulled, hangs or lies gives one
log line and exit 75, never a partial install. Every run logs one line for its outcome, and
one more if RESULT.TXT could not be written; that never changes the outcome.
SECURITY: the stick is untrusted media: it is never mounted (mtools reads it, see
board/mtools.py), every read is bounded, and nothing from it reaches a log or RESULT.TXT
except escaped, shortened names and labels. No error shown contains a password (configgen's
errors never do, and file contents are never shown). The only bytes written to the stick are
RESULT.TXT, the scrubbed config (and zeros over what it held before), and the report, which
holds no secret and no message content (board/report.py).
Must never: write to a stick that is not labelled MTACONFIG, or to one it could not read;
crash on what a stick holds; log or write a secret.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

from mta_lite import maillog

from mta_lite.config import generations as configgen
from mta_lite.errors import ConfigError

from mta_lite_board.logsource import default_source
from mta_lite_board.mtools import (MAX_LISTING_BYTES, Entry, Listing, ListingError, MtoolsRunner, Runner, StickReadError,
                                   StickWriteError, list_root, read_file, shown, write_file)
from mta_lite_board.relaycli import DEFAULT_COMMAND, RelayCli
from mta_lite_board.report import Diagnostics
from mta_lite_board.stickimport import UTF8_BOM, Imported, import_config

LABEL = "MTACONFIG"
CONFIG_NAME = "mta-lite.toml"
ROLLBACK_NAME = "ROLLBACK.TXT"
RESULT_NAME = "RESULT.TXT"
EXPORT_NAME = "EXPORT"
REPORT_TEXT_NAME = "mta-lite-report.txt"
REPORT_JSON_NAME = "mta-lite-report.json"
STICK = f"usb:{LABEL}"
SOURCE = f"{STICK}/{CONFIG_NAME}"
ROLLBACK_SOURCE = f"{STICK}/{ROLLBACK_NAME}"
DEFAULT_CONFIG = "/etc/mta-lite/mta-lite.toml"
# A generation number is six digits (configgen names them NNNNNN.toml); a little room for
# blanks and line ends that an editor adds.
MAX_ROLLBACK_BYTES = 64
# RESULT.TXT is read by a person; a ConfigError can quote a long value from the file.
MAX_RESULT_LINE_CHARS = 1000
EX_OK, EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = 0, 73, 75, 78

log = logging.getLogger("mta_lite_board.usbstick")


class Outcome(enum.Enum):
    # The first field only keeps the members apart: members with equal values would be one
    # member under two names (Outcome.UNCHANGED would be Outcome.APPLIED).
    APPLIED = ("applied", "OK", EX_OK, logging.INFO)
    UNCHANGED = ("unchanged", "OK", EX_OK, logging.INFO)
    SUPERSEDED = ("superseded", "NOTHING", EX_OK, logging.INFO)     # a kept generation a newer one replaced
    EXPORTED = ("exported", "OK", EX_OK, logging.INFO)
    NOTHING = ("nothing", "NOTHING", EX_OK, logging.INFO)
    IGNORED = ("ignored", "", EX_OK, logging.INFO)                  # not our stick: nothing written to it
    REJECTED = ("rejected", "ERROR", EX_CONFIG, logging.WARNING)
    READ_ERROR = ("read_error", "", EX_TEMPFAIL, logging.ERROR)     # nothing written to it either
    INSTALL_FAILED = ("install_failed", "ERROR", EX_CANTCREAT, logging.ERROR)
    EXPORT_FAILED = ("export_failed", "ERROR", EX_CANTCREAT, logging.ERROR)

    def __init__(self, key: str, word: str, exit_code: int, level: int) -> None:
        self.word, self.exit_code, self.level = word, exit_code, level


@dataclass(frozen=True)
class StickResult:
    outcome: Outcome
    message: str                    # one line without a secret: the log's and RESULT.TXT's
    generation: int | None = None   # installed now (APPLIED, UNCHANGED)
    digest: str | None = None
    result_written: bool = False
    notes: tuple[str, ...] = ()     # more lines for RESULT.TXT and the log: scrubbing, the report

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
    export: bool = False                # EXPORT is there: write the report too


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
        config, rollback, export = (find(listing, name) for name in (CONFIG_NAME, ROLLBACK_NAME, EXPORT_NAME))
    except ConfigError as exc:
        return Plan(Action.REFUSE, error=exc)
    wanted = export is not None and not export.is_dir
    if config and rollback:
        return _refuse(STICK, f"holds both {CONFIG_NAME} and {ROLLBACK_NAME}; keep only one of them")
    if config:
        return replace(_file_plan(config, Action.APPLY, SOURCE, configgen.MAX_CONFIG_BYTES), export=wanted)
    if rollback:
        return replace(_file_plan(rollback, Action.ROLLBACK, ROLLBACK_SOURCE, MAX_ROLLBACK_BYTES), export=wanted)
    return Plan(Action.NOTHING, hint="" if wanted else _near_miss(listing), export=wanted)


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
        if folded.startswith(("mta-lite", "rollback", "export")) and not _ours(entry):
            return f" (found {shown(entry.name, 60)}: rename it)"
    return ""


def _ours(entry: Entry) -> bool:
    return any(entry.is_named(name) for name in (RESULT_NAME, REPORT_TEXT_NAME, REPORT_JSON_NAME))


def copies(listing: Listing) -> list[str]:
    """Other files that look like a copy of the config (an editor's backup, macOS's ._ file):
    they may hold the password too, and the box does not touch them."""
    return [shown(entry.name, 60) for entry in listing.entries
            if "mta-lite" in entry.name.casefold() and not entry.is_dir
            and not entry.is_named(CONFIG_NAME) and not _ours(entry)]


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
    """RESULT.TXT: the outcome line, a line per note, and the time, CRLF."""
    lines = [line if len(line) <= MAX_RESULT_LINE_CHARS else line[:MAX_RESULT_LINE_CHARS] + "..."
             for line in (result.message, *result.notes)]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    return "".join(f"{line}\r\n" for line in [*lines, stamp]).encode("utf-8")


def _applied(applied: configgen.ApplyResult, note: str = "") -> StickResult:
    outcome = Outcome.APPLIED if applied.changed else Outcome.UNCHANGED
    suffix = note if applied.changed else ", no change"
    return StickResult(outcome, f"OK {applied.describe()}{suffix}",
                       applied.generation, applied.digest)


def _rejected(exc: ConfigError) -> StickResult:
    return StickResult(Outcome.REJECTED, f"ERROR {exc}")


def _imported(imported: Imported, listing: Listing) -> StickResult:
    outcome = {"applied": Outcome.APPLIED, "already": Outcome.UNCHANGED, "superseded": Outcome.SUPERSEDED}
    notes = imported.notes + tuple(f"WARNING: {name} on the stick may hold a password too: delete it"
                                   for name in copies(listing))
    return StickResult(outcome[imported.state], imported.message, imported.generation, imported.digest,
                       notes=notes)


# ------------------------------------------------------------------ doing

def provision_from_stick(device: str, config_path: str, runner: Runner | None = None,
                         now: Callable[[], float] = time.time,
                         diagnostics: Diagnostics | None = None) -> StickResult:
    """Read the stick at `device`, act on it, write RESULT.TXT, log the outcome (see the
    module docstring). `diagnostics` makes the report for EXPORT (default: the relay's
    command line for `config_path`, and the journal)."""
    runner = runner or MtoolsRunner()
    try:
        listing = list_root(runner, device)
    except (StickReadError, ListingError) as exc:
        return _report(device, StickResult(Outcome.READ_ERROR, f"stick not read, nothing changed: {exc}"))
    if listing.label != LABEL:
        label = "no label" if listing.label is None else f"label {shown(listing.label, 40)!r}"
        return _report(device, StickResult(Outcome.IGNORED, f"{label}, not {LABEL}: stick ignored"))
    todo = plan(listing)
    result = _carry_out(runner, device, config_path, todo, listing)
    if todo.export and result.outcome is not Outcome.READ_ERROR:
        result = _export(runner, device, result, diagnostics or default_diagnostics(config_path))
    if result.outcome is not Outcome.READ_ERROR:
        result = replace(result, result_written=write_result(runner, device, format_result(result, now())))
    return _report(device, result)


def _carry_out(runner: Runner, device: str, config_path: str, todo: Plan, listing: Listing) -> StickResult:
    try:
        if todo.action is Action.REFUSE:
            raise todo.error
        if todo.action is Action.APPLY:
            raw = read_file(runner, device, CONFIG_NAME, todo.size)
            imported = import_config(runner, device, config_path, decode_config(raw), raw.startswith(UTF8_BOM),
                                     CONFIG_NAME, SOURCE)
            return _imported(imported, listing)
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
    if todo.export:
        return StickResult(Outcome.EXPORTED, "")
    return StickResult(Outcome.NOTHING, f"NOTHING to do: no {CONFIG_NAME}, {ROLLBACK_NAME} or {EXPORT_NAME} "
                       f"in the top folder of the stick{todo.hint}")


def _export(runner: Runner, device: str, result: StickResult, diagnostics: Diagnostics) -> StickResult:
    """Write the report; alone on the stick its line is RESULT.TXT's first, else a note."""
    report = diagnostics.build()
    try:
        write_file(runner, device, REPORT_TEXT_NAME, report.text.encode("ascii"))
        write_file(runner, device, REPORT_JSON_NAME, report.json.encode("ascii"))
    except StickWriteError as exc:
        line = f"ERROR diagnostics not written to the stick: {exc}"
        if result.outcome is Outcome.EXPORTED:
            return StickResult(Outcome.EXPORT_FAILED, line)
        return replace(result, notes=result.notes + (line,))
    line = f"OK diagnostics written to {REPORT_TEXT_NAME} and {REPORT_JSON_NAME} (no password in them)"
    if result.outcome is Outcome.EXPORTED:
        return replace(result, message=line)
    return replace(result, notes=result.notes + (line,))


def default_diagnostics(config_path: str, log_file: str | None = None,
                        relay_command: tuple[str, ...] = DEFAULT_COMMAND) -> Diagnostics:
    relay = RelayCli(config_path, relay_command)
    return Diagnostics(config_path, relay, default_source(log_file, relay.children))


def write_result(runner: Runner, device: str, text: bytes, name: str = RESULT_NAME) -> bool:
    """Write the result file (the stick's RESULT.TXT, or first boot's on the boot partition);
    False if it could not be written: the outcome stands either way."""
    try:
        write_file(runner, device, name, text)
    except StickWriteError as exc:
        log.warning("%s: %s not written (the outcome stands): %s", shown(device), name, exc)
        return False
    return True


def _report(device: str, result: StickResult) -> StickResult:
    log.log(result.outcome.level, "%s: %s", shown(device), " / ".join((result.message, *result.notes)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mta_lite_board.usbstick",
                                     description="Install mta-lite.toml from a stick labelled MTACONFIG.")
    parser.add_argument("device", help="the stick's block device (or a FAT image file)")
    parser.add_argument("--config", default=os.environ.get("MTA_LITE_CONFIG", DEFAULT_CONFIG),
                        help="the config file to replace (default $MTA_LITE_CONFIG or %(default)s)")
    parser.add_argument("--log-file", help="for EXPORT: read the relay's log from this file, not the journal")
    parser.add_argument("--relay-command", help="for EXPORT: the relay's command line "
                                                "(default: this Python's -m mta_lite.cli)")
    args = parser.parse_args(argv)
    maillog.setup_logging()
    command = tuple(shlex.split(args.relay_command)) if args.relay_command else DEFAULT_COMMAND
    diagnostics = default_diagnostics(args.config, args.log_file, command)
    return provision_from_stick(args.device, args.config, diagnostics=diagnostics).exit_code


if __name__ == "__main__":
    sys.exit(main())
