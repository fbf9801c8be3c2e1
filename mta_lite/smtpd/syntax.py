"""syntax — the arguments of the session's commands, parsed, pure.

helo_error() checks a HELO/EHLO name, path_argument() splits `FROM:<path> params` and
`TO:<path> params`, mail_params() reads the MAIL FROM parameters this server offers (SIZE,
BODY, SMTPUTF8). Each returns the reply for a malformed argument, so the session's state
machine only decides what a well-formed command means.
Guarantees: a HELO name that passes has no control character and fits MAX_HELO_BYTES; a
parameter this server did not advertise is refused (555), never ignored.
SECURITY: parses untrusted input; never raises on any str.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mta_lite.envelope import parse_esmtp_params, split_path_and_params
from mta_lite.errors import AddressError
from mta_lite.reply import (R501_BAD_CHARS, R501_BODY_SYNTAX, R501_EHLO_SYNTAX, R501_HELO_SYNTAX,
                            R501_SIZE_SYNTAX, R501_SYNTAX, R552_TOO_BIG, R555_PARAM, Reply)
from mta_lite.smtpd.received import MAX_HELO_BYTES

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FROM = re.compile(r"FROM:\s*(.*)\Z", re.IGNORECASE | re.DOTALL)
_TO = re.compile(r"TO:\s*(.*)\Z", re.IGNORECASE | re.DOTALL)
_DIGITS = re.compile(r"[0-9]{1,20}\Z")


@dataclass
class MailParams:
    """What the MAIL FROM parameters asked for."""

    smtputf8: bool = False
    body: str = "7BIT"


def helo_error(name: str, esmtp: bool) -> Reply | None:
    """501 for an empty, over-long or control-character HELO/EHLO name; None if it will do."""
    if not name or len(name.encode("utf-8")) > MAX_HELO_BYTES:
        return R501_EHLO_SYNTAX if esmtp else R501_HELO_SYNTAX
    if _CONTROL.search(name):
        return R501_BAD_CHARS
    return None


def path_argument(arg: str, keyword: str) -> tuple[str, str] | None:
    """(path, parameter text) of `FROM:<path> params` or `TO:<path> params`; None without
    the keyword. The path is not checked here: envelope.parse_path() does that."""
    match = (_FROM if keyword == "FROM" else _TO).match(arg)
    if not match:
        return None
    return split_path_and_params(match.group(1))


def mail_params(text: str, esmtp: bool, size_limit_bytes: int, smtputf8_offered: bool) -> MailParams | Reply:
    """The MAIL FROM parameters, or the reply refusing them."""
    result = MailParams()
    if not text:
        return result
    if not esmtp:
        return R555_PARAM              # parameters need EHLO (RFC 5321 section 4.1.1.11)
    try:
        params = parse_esmtp_params(text)
    except AddressError:
        return R501_SYNTAX
    for key, value in params.items():
        if key == "SIZE":
            if not _DIGITS.match(value):
                return R501_SIZE_SYNTAX
            if int(value) > size_limit_bytes:
                return R552_TOO_BIG
        elif key == "BODY":
            if value.upper() not in ("7BIT", "8BITMIME"):
                return R501_BODY_SYNTAX
            result.body = value.upper()
        elif key == "SMTPUTF8" and smtputf8_offered and not value:
            result.smtputf8 = True
        else:
            return R555_PARAM
    return result
