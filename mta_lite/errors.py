"""errors — the MtaLiteError hierarchy.

Every error mta-lite raises on purpose derives from MtaLiteError and from the matching
stdlib class, so callers can catch either. Messages are written for the person who has to
act on them. An exception message must never contain a secret (password, AUTH payload).
"""

from mta_lite.text import printable


class MtaLiteError(Exception):
    """Root of every error mta-lite raises deliberately."""


class ConfigError(MtaLiteError, ValueError):
    """The configuration is invalid; the message names file, key, value and a hint."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = path, key, problem
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(_one_line(where + problem))


def _one_line(text: str) -> str:
    """Keys, file names and values come from the file: a newline in one (a TOML key may be
    "\\n") must not split the one-line error or forge a second line in a log."""
    return printable(text, None, escape=not text.isprintable())


class PreflightError(MtaLiteError, ValueError):
    """`mta-lite check` found problems; each line names path, user and fix."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("; ".join(lines))


class AddressError(MtaLiteError, ValueError):
    """An envelope address is malformed or not acceptable; carries the SMTP reply to give."""

    def __init__(self, message: str, reply=None) -> None:
        super().__init__(message)
        self.reply = reply


class SpoolError(MtaLiteError, OSError):
    """The queue could not store or read a message; the message was not accepted."""


class CorruptQueueFileError(SpoolError):
    """A queue file failed validation (version, structure, end marker or checksum)."""


class QueueFileChangedError(SpoolError):
    """A queue file read again for sending is not the size it had when it was verified."""


class QueueIdError(MtaLiteError, LookupError):
    """No message with that queue ID is in the queue."""


class DeliveryError(MtaLiteError, RuntimeError):
    """Delivery to a smarthost failed; carries a DeliveryResult with its permanence."""


class TokenError(MtaLiteError, RuntimeError):
    """No access token could be had from an OAuth2 token endpoint. `refused`: the provider
    said no (invalid_grant, invalid_client...): new credentials or a new login are needed;
    otherwise the endpoint was unreachable, slow or answered garbage, and a later try may
    work. The message is plain words and never carries a token or a client secret."""

    def __init__(self, message: str, refused: bool = False, code: str = "") -> None:
        super().__init__(message)
        self.refused = refused
        self.code = code            # the provider's OAuth error code, if it gave one
