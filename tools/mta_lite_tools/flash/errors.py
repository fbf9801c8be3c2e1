"""errors — what stops mta-lite-flash, and the exit status each one gives.

Every error the flash tool raises on purpose is a FlashError (under mta-lite's MtaLiteError
root and the matching stdlib class) that carries its exit status from sysexits.h, as the rest
of mta-lite uses them. Messages are one line that says what is wrong and what to do.
Must never: carry a password (config problems are the box's own ConfigError, which never does).
"""

from __future__ import annotations

from mta_lite.errors import MtaLiteError

EX_OK = 0
EX_USAGE = 64           # the command line is wrong
EX_DATAERR = 65         # the image or its bmap is corrupt, truncated or inconsistent
EX_NOINPUT = 66         # the image, bmap or config file does not exist or cannot be opened
EX_UNAVAILABLE = 69     # a program or module the tool needs is not installed
EX_CANTCREAT = 73       # the target was refused by a guard or cannot be opened for writing
EX_IOERR = 74           # reading the image, or writing or reading the card, failed
EX_CONFIG = 78          # the config given with --config is invalid (the box's own message)
EX_INTERRUPTED = 130    # Ctrl-C (128 + SIGINT, as a shell reports it)


class FlashError(MtaLiteError):
    """Root of every error mta-lite-flash raises deliberately."""

    exit_code = EX_IOERR


class UsageError(FlashError, ValueError):
    """The command line asks for something that cannot be done."""

    exit_code = EX_USAGE


class ImageError(FlashError, ValueError):
    """The image or its bmap is corrupt, truncated, or they do not agree."""

    exit_code = EX_DATAERR


class InputMissingError(FlashError, FileNotFoundError):
    """The image, the bmap or the config file cannot be opened."""

    exit_code = EX_NOINPUT


class ImageReadError(FlashError, OSError):
    """The image file could not be read (an I/O error on the computer's own disk)."""

    exit_code = EX_IOERR


class ToolMissingError(FlashError, FileNotFoundError):
    """A program (mtools) or Python module (the `flash` extra) is not installed."""

    exit_code = EX_UNAVAILABLE


class TargetRefusedError(FlashError, PermissionError):
    """A guard refused the target, or it cannot be opened for writing; nothing was written."""

    exit_code = EX_CANTCREAT


class CardError(FlashError, OSError):
    """Writing to or reading from the card failed (an I/O error, a card pulled out)."""

    exit_code = EX_IOERR


class VerifyError(CardError):
    """What was read back from the card differs from the image."""


class BootConfigError(CardError):
    """mta-lite.toml could not be put on the card's boot partition, or read back the same."""
