"""received — the Received: trace header mta-lite puts on top of every message it queues, pure.

received_header() builds the RFC 5321 section 4.4 trace field from the HELO name, the
client address, our hostname, the queue ID, the protocol name (RFC 3848 / RFC 6531) and,
when there is exactly one, the recipient. The date is an argument: no clock is read here.
Guarantees: the result is CRLF-terminated, folded with TAB, every line under RFC 5322's
998 octets, and contains no CR, LF or control character whatever the inputs were.
SECURITY: the HELO name and the recipient come from the peer. Each is reduced to printable
characters without comment or angle-bracket syntax, so no value can end the field early
or start a header line of its own.
Must never: copy peer text into the header unfiltered.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

# RFC 5321 section 4.5.3.1.2: a domain is at most 255 octets. Capping the HELO name also
# keeps the Received: line well under RFC 5322's 998-octet line limit.
MAX_HELO_BYTES = 255
# RFC 5321 section 4.5.3.1.3: a path is at most 256 octets.
MAX_PATH_CHARS = 256


def _header_token(text: str, limit: int) -> str:
    """A HELO name or hostname as one header token: printable ASCII, no comment syntax."""
    return "".join(c if c.isascii() and c.isprintable() and c not in ' ()<>;\\"' else "?"
                   for c in text[:limit]) or "unknown"


def received_header(*, helo: str, client_ip: str, hostname: str, queue_id: str, protocol: str,
                    recipient: str | None, date: datetime) -> bytes:
    """The Received: trace field (RFC 5321 section 4.4), folded, CRLF-terminated.

    Every peer-supplied part is reduced to printable characters without CR, LF or
    comment/angle syntax, so no value can end the field or add a header line.
    """
    lines = [f"Received: from {_header_token(helo, MAX_HELO_BYTES)} "
             f"(unknown [{_header_token(client_ip, 64)}])",
             f"\tby {_header_token(hostname, 255)} (mta-lite) with {_header_token(protocol, 16)}"
             f" id {_header_token(queue_id, 64)}"]
    when = format_datetime(date)
    if recipient:
        safe = "".join(c if c.isprintable() and c not in "<>;\\" else "?" for c in recipient[:MAX_PATH_CHARS])
        lines.append(f"\tfor <{safe}>; {when}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{when}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
