"""text — untrusted text made safe to print, pure.

printable() is the one way mta-lite turns text it did not write (a client's HELO name or
address, a pregreeter's bytes, a server's reply) into one log field or one reply line.
Guarantees: the result has no control character, no line break of any kind (CR, LF, NEL,
U+2028) and no lone surrogate, so it can neither split a log line nor forge a second one,
and it is at most `limit` characters long.
Must never: raise on any str, however it was decoded.
"""

from __future__ import annotations

# Longest piece of peer text we put into one log field: enough for any address (RFC 5321
# allows 256 octets for a path) in most cases, short enough that a hostile peer cannot
# flood the log through one field.
MAX_FIELD_CHARS = 200


def printable(text: str, limit: int | None = MAX_FIELD_CHARS, *, escape: bool = False) -> str:
    """`text` as one safe field of at most `limit` characters (None: no limit).

    Each character that is not printable becomes "?", which keeps the field readable. With
    escape=True the text is first written out as ASCII with backslash escapes (`\\r\\n`,
    `\\x00`, `\\xe9`, a backslash doubled), so the log shows exactly what was sent, at the
    cost of length; the limit then applies to the escaped form.
    """
    if escape:
        text = text.encode("unicode_escape").decode("ascii")
    if limit is not None:
        text = text[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)
