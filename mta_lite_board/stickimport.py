"""stickimport — install the stick's mta-lite.toml once, then take its passwords off the stick.

    imported = import_config(runner, device, config_path, data, bom=False)
    Imported(state="applied" | "already" | "superseded", message, generation, digest, notes)

board/usbstick.py has read the file (bounded, UTF-8, byte-order mark dropped); this decides:

1. [provision] is taken out (board/stickconfig.py); what is left is the config.
2. Import once: if the config, its "********" placeholders filled from a kept generation, is
   that generation as it was given, it is not installed again. The installed one: "already
   installed (generation N)". An older one: a generation installed since has replaced it
   (over the console, or from another stick), and a stick left in over a reboot must not undo
   that: nothing is installed, and RESULT.TXT says how to go back to it on purpose.
3. Otherwise its placeholders are filled from the config in use and it is installed through
   configgen.apply_config (C1), as a new generation (C2).
4. Scrub: in every one of these cases, unless [provision] scrub_secrets = false, each password
   and token still in clear in the stick's file is replaced by "********" and the file
   written back, the same file otherwise (board/stickconfig.py says how; a byte-order mark
   stays); the clusters it held before are overwritten (board/fatwipe.py). A write-protected
   stick keeps its file, and the notes say that the password is still on it.

Guarantees: the box's config changes only in step 3 and only through configgen; a failed
scrub never changes the outcome, it adds a note. Notes and messages never hold a secret.
Must never: install "********" as a password, or say a stick is clean when it may not be.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mta_lite.config import generations as configgen
from mta_lite.config.schema import MASK

from mta_lite_board.fatwipe import rewrite_wiping
from mta_lite_board.mtools import Runner, StickWriteError
from mta_lite_board.stickconfig import StickConfig, box_secrets

UTF8_BOM = b"\xef\xbb\xbf"

SCRUBBED = (f"the passwords in {{name}} were replaced by {MASK} (the box keeps them); the file can be "
            "plugged in again, or edited and used again, as it is")
SCRUB_OFF = ("{name} still holds the password in clear ([provision] scrub_secrets = false): delete it "
             "from the stick when you are done")
NOT_WRITTEN = ("WARNING: {name} could not be rewritten ({problem}): the password is still on the stick "
               "in clear; delete the file on a PC")
NOT_WIPED = (f"WARNING: the passwords in {{name}} were replaced by {MASK}, but what the file held before "
             "could not be overwritten on the stick ({problem}): recovery tools may still find the "
             "password there; format the stick on a PC")


@dataclass(frozen=True)
class Imported:
    state: str                      # "applied", "already" or "superseded"
    message: str                    # RESULT.TXT's first line
    generation: int | None = None   # installed now
    digest: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def import_config(runner: Runner, device: str, config_path: str, data: bytes, bom: bool, name: str,
                  source: str) -> Imported:
    """Steps 1 to 4 of the module docstring for the stick file `name` holding `data`;
    ConfigError (refused), OSError (the box's side) as configgen raises them."""
    stick = StickConfig.parse(data.decode("utf-8"), source)
    kept = configgen.generations(config_path)
    known = stick.match(kept)
    if known is not None and known.current:
        imported = Imported("already", f"OK {name} already installed (generation {known.number}, "
                            f"config {known.digest}): nothing changed", known.number, known.digest)
    elif known is not None:
        imported = Imported("superseded", _superseded(name, known, kept))
    else:
        text = stick.install_text(box_secrets(config_path))
        applied = configgen.apply_config(config_path, text.encode("utf-8"), source)
        state, message = ("applied", f"OK {applied.describe()}") if applied.changed else \
            ("already", f"OK {name} already installed (generation {applied.generation}, "
                        f"config {applied.digest}): nothing changed")
        imported = Imported(state, message, applied.generation, applied.digest)
    return Imported(imported.state, imported.message, imported.generation, imported.digest,
                    scrub(runner, device, stick, bom, name))


def _superseded(name: str, known: configgen.Generation, kept: list[configgen.Generation]) -> str:
    current = next((gen for gen in kept if gen.current), None)
    now = f"generation {current.number} is installed" if current else "the config was edited on the box"
    return (f"NOTHING to do: {name} was installed before, as generation {known.number}, and has been "
            f"replaced since ({now}); it is not installed again. To go back to it, put a ROLLBACK.TXT "
            f"holding {known.number} on the stick instead")


def scrub(runner: Runner, device: str, stick: StickConfig, bom: bool, name: str) -> tuple[str, ...]:
    """Step 4: the notes for RESULT.TXT (none when the file holds no secret in clear)."""
    scrubbed = stick.scrubbed()
    if scrubbed is None:
        return ()
    if not stick.scrub_secrets:
        return (SCRUB_OFF.format(name=name),)
    data = (UTF8_BOM if bom else b"") + scrubbed.encode("utf-8")
    try:
        wiped = rewrite_wiping(runner, device, name, data)
    except StickWriteError as exc:
        return (NOT_WRITTEN.format(name=name, problem=_short(str(exc))),)
    if not wiped.complete:
        return (NOT_WIPED.format(name=name, problem=_short(wiped.problem)),)
    kept = "" if stick.edited_in_place else " (its comments could not be kept)"
    return (SCRUBBED.format(name=name) + kept,)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
