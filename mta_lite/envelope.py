"""envelope — envelope addresses and parameters: parsing and normalisation, pure.

Guarantees: an address that leaves parse_path() is a plain `local@domain` (or "" for the
null sender) with a lower-cased domain, no control characters, no source route, no
address literal, no percent hack, no bang path and no quoted local part that hides an `@`.
SECURITY: this module sees untrusted bytes from the network; it never evaluates them, only
matches them against a strict grammar (RFC 5321 section 4.1.2, narrowed).
Must never: accept what it cannot classify. When in doubt, reject.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field

from mta_lite.errors import AddressError
from mta_lite.reply import R501_BAD_CHARS, R553_BAD_RCPT, R553_BAD_SENDER, Reply

# RFC 5321 section 4.5.3.1: local part 64 octets, domain 255, path 256 including brackets.
MAX_LOCAL_BYTES = 64
MAX_DOMAIN_BYTES = 255
MAX_PATH_BYTES = 256

# C0, DEL and the C1 controls (U+0080-U+009F, e.g. U+0085 NEL): the UTF-8 atoms below allow
# any non-ASCII character, so the C1 range must be refused here (S2: 501 5.5.2).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 5322 atext without the characters used for routing hacks ('%' and '!').
_ATOM_ASCII = r"[A-Za-z0-9#$&'*+/=?^_`{|}~-]+"
_DOT_ATOM_ASCII = re.compile(rf"{_ATOM_ASCII}(?:\.{_ATOM_ASCII})*\Z")
_ATOM_UTF8 = r"(?:[A-Za-z0-9#$&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_DOT_ATOM_UTF8 = re.compile(rf"{_ATOM_UTF8}(?:\.{_ATOM_UTF8})*\Z")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_LABEL_ASCII = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_LABEL_UTF8 = re.compile(r"(?:[a-z0-9]|[^\x00-\x7f])(?:(?:[a-z0-9-]|[^\x00-\x7f]){0,61}(?:[a-z0-9]|[^\x00-\x7f]))?\Z")


@dataclass(frozen=True)
class Envelope:
    """The SMTP envelope of one message as accepted: its fields, their types and defaults.

    This is the one schema of a message's envelope. The queue file stores these fields
    (queue/queuefile.py: StoredEnvelope adds the arrival time and the bounce flag, QueueEntry
    the queue ID and where the content lies); the writer, the reader and its validation
    derive from it. A new field is declared here, with its default, and named in
    queuefile.ADDED_LATER, so that files written before it existed stay valid.
    """

    sender: str
    recipients: list[str] = field(default_factory=list)
    client_address: str = ""
    client_helo: str = ""
    smtputf8: bool = False
    body: str = "7BIT"
    sasl_username: str = ""         # the submission login, as Postfix records it; "" if none


def _reject(text: str, reply: Reply, address: str) -> AddressError:
    return AddressError(text, reply.prefixed(f"<{address}>") if address else reply)


def strip_brackets(raw: str) -> str:
    """`<a@b>` -> `a@b`; a bare address without brackets is accepted as it is."""
    raw = raw.strip()
    if raw.startswith("<") and raw.endswith(">"):
        return raw[1:-1]
    if "<" in raw or ">" in raw or " " in raw:
        raise AddressError("malformed path", None)
    return raw


def _valid_domain(domain: str, smtputf8: bool) -> bool:
    if not domain or len(domain.encode("utf-8")) > MAX_DOMAIN_BYTES:
        return False
    label = _LABEL_UTF8 if smtputf8 else _LABEL_ASCII
    return all(label.match(part) for part in domain.split("."))


def _valid_local(local: str, smtputf8: bool) -> bool:
    if not local or len(local.encode("utf-8")) > MAX_LOCAL_BYTES:
        return False
    if local.startswith('"'):
        # A quoted local part may not smuggle routing characters (S1).
        return bool(_QUOTED.match(local)) and not any(c in local for c in "@%!")
    atom = _DOT_ATOM_UTF8 if smtputf8 else _DOT_ATOM_ASCII
    return bool(atom.match(local))


def parse_path(raw: str, *, sender: bool, smtputf8: bool = False) -> str:
    """Parse the path of MAIL FROM (sender=True) or RCPT TO; return `local@domain` or "".

    Raises AddressError carrying the reply to send. Unqualified names (no `@`) are returned
    as they are, lower-cased domain aside; the caller decides what they mean.
    """
    bad = R553_BAD_SENDER if sender else R553_BAD_RCPT
    if _CONTROL.search(raw):
        raise AddressError("control character in address", R501_BAD_CHARS)
    if not smtputf8 and any(ord(c) > 0x7F for c in raw):
        raise _reject("8-bit address without SMTPUTF8", bad, "")
    try:
        addr = strip_brackets(raw)
    except AddressError:
        raise _reject("malformed path", bad, "") from None
    if addr == "":
        if sender:
            return ""
        raise AddressError("empty recipient", bad)
    if len(addr.encode("utf-8")) + 2 > MAX_PATH_BYTES or addr.startswith("@"):
        raise _reject("source route or overlong path", bad, addr)
    local, at, domain = addr.rpartition("@")
    if not at:
        local, domain = addr, ""
    if domain.startswith("["):
        raise _reject("address literal", bad, addr)
    domain = domain.lower()
    if not _valid_local(local, smtputf8) or (at and not _valid_domain(domain, smtputf8)):
        raise _reject("bad address syntax", bad, addr)
    return f"{local}@{domain}" if at else local


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def lookup_key(address: str) -> str:
    """Case-insensitive key for table lookups (sender routing, rewriting)."""
    return address.lower()


def parse_esmtp_params(text: str) -> dict[str, str]:
    """`SIZE=100 BODY=8BITMIME SMTPUTF8` -> {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": ""}."""
    params: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        if not key.replace("-", "").isalnum():
            raise AddressError("bad parameter", None)
        params[key.upper()] = value
    return params


def split_path_and_params(arg: str) -> tuple[str, str]:
    """`<a@b> SIZE=1` -> ("<a@b>", "SIZE=1"). A quoted local part may contain spaces."""
    arg = arg.strip()
    if arg.startswith("<"):
        end = _closing_bracket(arg)
        if end < 0:
            return arg, ""
        return arg[: end + 1], arg[end + 1 :].strip()
    path, _, rest = arg.partition(" ")
    return path, rest.strip()


def _closing_bracket(arg: str) -> int:
    quoted = False
    escaped = False
    for i, ch in enumerate(arg):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    return -1


def client_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as the kernel reports it ("%scope" dropped, IPv4-mapped IPv6 as
    IPv4), or None for anything that is not an address."""
    if ":" not in text:
        # The kernel's dotted quad, parsed in C: ip_address() spends four times as long on
        # it, per connection. inet_pton takes exactly what ip_address does (four decimal
        # octets, no leading zeros) and refuses the rest, which then go the long way.
        try:
            return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
        except OSError:
            pass
    try:
        addr = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr
