"""bounce — non-delivery notifications (RFC 3464 DSNs), built as bytes; who gets them (G6).

    multipart/report; report-type=delivery-status
      1 text/plain               the human text, from a string.Template (bounce.txt)
      2 message/delivery-status  Reporting-MTA, Arrival-Date, one block per failed recipient
      3 text/rfc822-headers      the returned message's headers, never its body

Pure: no I/O, no clock; the template arrives as text and the time as an argument.
Guarantees (G6): choose_notice() never addresses a notice for a message with the null
sender; a failed notice goes to the postmaster once (a "double bounce") and a failed
postmaster notice is dropped, so bounces never loop. The DSN has CRLF line endings, lines
under 998 octets, and no text from a peer can add a header or a MIME part (replies are
flattened to one line, the boundary is chosen to be absent from the returned headers).
Must never: include the returned message's body; raise on an owner's template with a
misspelt placeholder (safe_substitute leaves it as it is).
"""

from __future__ import annotations

import hashlib
import quopri
import re
import string
from dataclasses import dataclass
from datetime import datetime, timezone

from mta_lite.reply import Reply

ACTION_FAILED, ACTION_DELAYED = "failed", "delayed"
NOTICE_SENDER, NOTICE_POSTMASTER, NOTICE_NONE = "sender", "postmaster", "none"
SUBJECT_SENDER = "Undelivered Mail Returned to Sender"
SUBJECT_POSTMASTER = "Postmaster Copy: Undelivered Mail"
# Postfix returns at most bounce_size_limit (50 kB) of a message; only headers here, and
# 64 KiB holds any sane header block while a hostile one cannot make a huge DSN.
MAX_RETURNED_HEADER_BYTES = 64 * 1024
# RFC 5322 section 2.1.1: lines at most 998 octets; leave room for the field name.
MAX_FIELD_CHARS = 900
MAX_BOUNDARY_BASE_CHARS = 50
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SMTP_REPLY = re.compile(r"[2-5]\d\d[ -]")


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient's line in a DSN."""

    recipient: str
    status: str                 # enhanced status code, "5.1.1"
    reason: str                 # for people: "host smtp.isp.example said: 550 5.1.1 no such user"
    diagnostic: str = ""        # the smarthost's reply as it said it, or our own text
    remote_mta: str = ""        # smarthost host name, "" when none was reached
    action: str = ACTION_FAILED


@dataclass(frozen=True)
class Notice:
    """Who gets the notice for a failed message, and why (logged when nobody does)."""

    to: str
    kind: str
    why: str = ""


@dataclass(frozen=True)
class DsnRequest:
    hostname: str
    queue_id: str
    sender: str                 # the returned message's envelope sender
    to: str                     # the notice's recipient
    arrival: float
    now: float
    failed: tuple[FailedRecipient, ...]
    kind: str = NOTICE_SENDER
    admin_address: str = ""
    note: str = ""              # an extra first paragraph (postmaster copies, unqualified senders)


def status_of(reply: Reply) -> str:
    """The enhanced status code of a reply, or the class default (RFC 3463) if it has none."""
    if _ENHANCED.match(reply.enhanced or ""):
        return reply.enhanced
    return f"{reply.code // 100}.0.0" if 200 <= reply.code < 600 else "5.0.0"


def remote_mta_of(relay: str) -> str:
    """Postfix's relay= "host[ip]:port" -> "host"; "none" (no smarthost reached) -> ""."""
    host = relay.partition("[")[0].strip()
    return "" if host in ("", "none") else host


def failed_from_reply(recipient: str, reply: Reply, relay: str) -> FailedRecipient:
    remote = remote_mta_of(relay)
    said = f"host {remote} said: {reply}" if remote else str(reply)
    return FailedRecipient(recipient, status_of(reply), said, str(reply), remote)


def choose_notice(sender: str, is_bounce: bool, recipients, admin_address: str) -> Notice:
    """G6: the sender gets the DSN; a failed DSN goes to the postmaster once; never a loop."""
    if is_bounce:
        admin = admin_address.lower()
        if any(r.lower() == admin for r in recipients):
            return Notice("", NOTICE_NONE, "undeliverable postmaster notification discarded")
        return Notice(admin_address, NOTICE_POSTMASTER, "double bounce")
    if sender == "":
        return Notice("", NOTICE_NONE, "message has the null sender")
    if "@" not in sender:
        return Notice(admin_address, NOTICE_SENDER, f"unqualified sender <{sender}>")
    return Notice(sender, NOTICE_SENDER)


def _encodable(text: str) -> str:
    """Lone surrogates (a peer's undecodable bytes) become "?" instead of failing the DSN."""
    return text.encode("utf-8", "replace").decode("utf-8")


def one_line(text: str) -> str:
    """Peer text made safe for a header field: control characters flattened, length capped."""
    return _encodable(_CONTROL.sub(" ", text)).strip()[:MAX_FIELD_CHARS]


def rfc5322_date(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")


def header_block(content: bytes, limit: int = MAX_RETURNED_HEADER_BYTES) -> bytes:
    """The header section of a message (up to the empty line), cut at a line end if too long."""
    if content.startswith(b"\r\n"):
        return b""
    end = content.find(b"\r\n\r\n")
    block = content if end < 0 else content[: end + 2]
    if len(block) > limit:
        block = block[: block.rfind(b"\r\n", 0, limit) + 2]
    if block and not block.endswith(b"\r\n"):
        block += b"\r\n"
    return block


def render_text(template: str, req: DsnRequest) -> str:
    """The human part: the template with $recipients, $reason, $hostname, $queue_id... filled in."""
    reasons = list(dict.fromkeys(one_line(f.reason) for f in req.failed))
    fields = {
        "recipients": "\n".join(f"    <{f.recipient}>: {one_line(f.reason)}" for f in req.failed),
        "reason": "\n".join(reasons),
        "hostname": req.hostname,
        "queue_id": req.queue_id,
        "sender": req.sender or "<>",
        "arrival": rfc5322_date(req.arrival),
        "admin": req.admin_address or f"postmaster@{req.hostname}",
    }
    text = string.Template(template).safe_substitute(fields)
    return _encodable(f"{req.note}\n\n{text}" if req.note else text)


def _crlf(text: str) -> str:
    return "\r\n".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def _human_part(text: str) -> bytes:
    """text/plain, 7bit when ASCII; else quoted-printable so no 8BITMIME is needed for it."""
    head = "Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n"
    if text.isascii():
        return (head + "Content-Transfer-Encoding: 7bit\r\n\r\n" + _crlf(text)).encode("ascii")
    body = quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8")).decode("ascii")
    return (head + "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + _crlf(body)).encode("ascii")


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"   # RFC 6533 section 3


def _recipient_block(f: FailedRecipient) -> list[str]:
    lines = [f"Final-Recipient: {_address_type(f.recipient)}; {one_line(f.recipient)}",
             f"Action: {f.action}", f"Status: {f.status}"]
    if f.remote_mta:
        lines.append(f"Remote-MTA: dns; {one_line(f.remote_mta)}")
    if f.diagnostic:
        kind = "smtp" if _SMTP_REPLY.match(f.diagnostic) else "X-mta-lite"
        lines.append(f"Diagnostic-Code: {kind}; {one_line(f.diagnostic)}")
    return lines


def _status_part(req: DsnRequest) -> bytes:
    lines = [f"Reporting-MTA: dns; {req.hostname}", f"X-Queue-ID: {req.queue_id}",
             f"X-Original-Sender: {_address_type(req.sender)}; {one_line(req.sender)}",
             f"Arrival-Date: {rfc5322_date(req.arrival)}"]
    for failed in req.failed:
        lines += [""] + _recipient_block(failed)
    body = "\r\n".join(lines) + "\r\n"
    kind = "message/delivery-status" if body.isascii() else "message/global-delivery-status"
    head = f"Content-Description: Delivery report\r\nContent-Type: {kind}\r\n\r\n"
    return (head + body).encode("utf-8")


def _headers_part(headers: bytes) -> bytes:
    kind = "text/rfc822-headers" if headers.isascii() else "message/global-headers"
    head = f"Content-Description: Undelivered Message Headers\r\nContent-Type: {kind}\r\n\r\n"
    return head.encode("ascii") + headers


def _boundary(req: DsnRequest, parts: list[bytes]) -> str:
    """RFC 2046 section 5.1.1: at most 70 characters, absent from every part. A digest of the
    parts cannot appear inside them (that would need a sha256 fixed point), so a returned
    header crafted to contain our boundary cannot split the report."""
    digest = hashlib.sha256(b"".join(parts)).hexdigest()[:16]
    return f"{req.queue_id}.{int(req.now)}/{req.hostname}"[:MAX_BOUNDARY_BASE_CHARS] + "=" + digest


def _top_headers(req: DsnRequest, boundary: str, eight_bit: bool) -> str:
    subject = SUBJECT_POSTMASTER if req.kind == NOTICE_POSTMASTER else SUBJECT_SENDER
    stamp = datetime.fromtimestamp(req.now, timezone.utc).strftime("%Y%m%d%H%M%S.%f")
    return "\r\n".join([
        f"From: Mail Delivery System <MAILER-DAEMON@{req.hostname}>",
        f"To: <{one_line(req.to)}>",
        f"Subject: {subject}",
        f"Date: {rfc5322_date(req.now)}",
        f"Message-ID: <{stamp}.{req.queue_id}@{req.hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]) + "\r\n\r\n"


def build_dsn(req: DsnRequest, original: bytes, template: str) -> bytes:
    """The whole notice as bytes with CRLF line endings; `original` is the returned message."""
    parts = [_human_part(render_text(template, req)), _status_part(req),
             _headers_part(header_block(original))]
    boundary = _boundary(req, parts)
    eight_bit = not all(part.isascii() for part in parts)
    out = [_top_headers(req, boundary, eight_bit).encode("utf-8"),
           b"This is a MIME-encapsulated message.\r\n"]
    for part in parts:
        out.append(f"\r\n--{boundary}\r\n".encode("utf-8"))
        out.append(part if part.endswith(b"\r\n") else part + b"\r\n")
    out.append(f"\r\n--{boundary}--\r\n".encode("utf-8"))
    return b"".join(out)
