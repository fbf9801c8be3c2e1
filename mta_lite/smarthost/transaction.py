"""transaction — one mail transaction to a smarthost, and what each reply or failure means.

Transaction.run() sends MAIL FROM, RCPT TO for each recipient and DATA on a session the
pool opened, and returns a DeliveryResult. The pure functions below turn a smarthost's reply
into a Reply as the server said it (550, 5.1.1, "<bob@example.org>: User unknown (in reply
to RCPT TO command)": str(reply) is Postfix's `host X said:` text) and into a status
(sent, deferred, bounced); turn DNS, connect, TLS and timeout failures into transient
Replies worded like Postfix's smtp(8) ("connect to host[ip]:port: Connection refused");
and choose the MAIL FROM parameters (SIZE, BODY=8BITMIME, SMTPUTF8). Reply.enhanced is the
dsn=; our own verdicts use code 451 (transient) or 55x (permanent).

Guarantees: a recipient is sent only on a 2xx reply to end of DATA. Only a 5xx reply to
MAIL FROM, RCPT TO or end of DATA, or a message the server can never take (SMTPUTF8
missing, over its SIZE), is permanent. Every failure without a reply (timeout, lost
connection, TLS, DNS) is transient: an unknown outcome is never a bounce (G3). A 5xx
refusal during session set-up (greeting, EHLO, STARTTLS, AUTH) is softened to its 4xx twin
(Postfix's soft bounce, smtp_sasl_auth_soft_bounce for AUTH), so a misbehaving smarthost
cannot bounce the queue and the reply agrees with the deferral. No DATA without a recipient.
SECURITY: a smarthost's reply text is untrusted: control characters are replaced, lines
joined, length capped, and every form of the account's password masked before it may go
into a Reply, a log line or a bounce.
Must never: return a Reply carrying a password, an AUTH payload or raw exception text.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiosmtplib.errors import SMTPDataError, SMTPResponseException

from mta_lite.config.schema import MASK
from mta_lite.reply import Reply
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT, DeliveryResult, RecipientResult

if TYPE_CHECKING:
    from mta_lite.smarthost.client import Session

# A hostile or chatty smarthost must not fill log lines, queue files and DSNs with its text;
# Postfix also truncates server replies it records. 400 characters keep every real reply.
MAX_SERVER_TEXT_CHARS = 400
# The end-of-DATA wait grows with the message, so that a slow home uplink (about
# 128 kbit/s) does not turn a big message into a timeout and a duplicate (G3).
MIN_UPLOAD_BYTES_PER_S = 16 * 1024
# How far along __cause__/__context__ we look for the real reason behind an exception.
MAX_CAUSE_DEPTH = 8

LOCAL_TRANSIENT_CODE = 451      # our own "try again later" verdicts
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\]|\\.)*"')
_UNSAFE_OUTSIDE_QUOTES = re.compile(r'[\s<>"]')
# The same line-ending rule aiosmtplib applies before it sends DATA, so SIZE= matches the
# octets on the wire (RFC 1870 section 3: CRLFs counted, dot-stuffing not).
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")


@dataclass(frozen=True)
class MailPlan:
    """The MAIL FROM parameters for one transaction and how addresses are encoded."""

    options: tuple[str, ...]
    encoding: str               # "utf-8" when SMTPUTF8 is used, else "ascii"


# ---------------------------------------------------------------- server replies

def clean_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """A server's text made safe to record: one line, printable, capped, secrets masked."""
    text = _mask(text, secrets)
    text = text.encode("utf-8", "replace").decode("utf-8")    # lone surrogates -> "?"
    text = _CONTROL.sub("?", _WHITESPACE.sub(" ", text)).strip()
    text = _mask(text, secrets)
    if len(text) > MAX_SERVER_TEXT_CHARS:
        text = text[:MAX_SERVER_TEXT_CHARS] + "..."
    return text


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def enhanced_of(code: int, text: str) -> str:
    """The enhanced status code the server gave, with the class of the reply code (RFC 3463)."""
    klass = str(code // 100) if code // 100 in (2, 4, 5) else "4"
    match = _ENHANCED.match(text)
    if not match:
        return f"{klass}.0.0"
    return f"{klass}.{match.group(2)}.{match.group(3)}"


def server_reply(code: int, message: str, where: str, secrets: tuple[str, ...] = ()) -> Reply:
    """The server's reply as it said it: its code, its enhanced code (class fixed) and its
    text; a refusal gets Postfix's `(in reply to RCPT TO command)` after the text."""
    text = clean_text(message, secrets)
    enhanced = enhanced_of(code, text)
    text = _ENHANCED.sub("", text, count=1).lstrip()
    if 200 <= code < 300:
        return Reply(code, enhanced, text)
    return Reply(code, enhanced, f"{text} ({where})" if text else f"({where})")


def is_valid_code(code: int) -> bool:
    """Replies a transaction command may get; anything else (1xx, 3xx) is a protocol error."""
    return 200 <= code < 300 or 400 <= code < 600


def protocol_error(code: int, message: str, where: str, secrets: tuple[str, ...] = ()) -> Reply:
    """A reply that makes no sense at this point: transient, the session is abandoned."""
    said = clean_text(f"{code} {message}", secrets)
    return Reply(LOCAL_TRANSIENT_CODE, "4.5.0", f"protocol error: unexpected reply {said!r} ({where})")


def reply_for(code: int, message: str, where: str, secrets: tuple[str, ...] = ()) -> Reply:
    """server_reply() for a code a command may get, protocol_error() for any other."""
    if is_valid_code(code):
        return server_reply(code, message, where, secrets)
    return protocol_error(code, message, where, secrets)


def status_of(reply: Reply) -> str:
    """2xx sent, 5xx bounced, everything else deferred: only a 5xx is ever permanent."""
    if 200 <= reply.code < 300:
        return SENT
    if 500 <= reply.code < 600:
        return BOUNCE
    return DEFER


def soften(reply: Reply) -> Reply:
    """A 5xx turned into its 4xx twin (Postfix soft_bounce): used where a bounce is wrong."""
    if reply.code < 500:
        return reply
    enhanced = "4" + reply.enhanced[1:] if reply.enhanced else "4.0.0"
    return Reply(reply.code - 100, enhanced, reply.text)


def auth_failed(code: int, message: str, relay: str, secrets: tuple[str, ...]) -> Reply:
    """A refused login, always transient (S5): `SASL authentication failed; server X said:
    535 5.7.8 ...`, softened to 435 4.7.8 as Postfix's smtp_sasl_auth_soft_bounce does."""
    text = clean_text(message, secrets)
    reply = Reply(code, enhanced_of(code, text),
                  f"SASL authentication failed; server {relay} said: {code} {text}")
    return soften(reply)


def no_sasl_mechanism(relay: str, offered: list[str]) -> Reply:
    names = clean_text(" ".join(offered).upper()) or "none"
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.0",
                 f"host {relay} offers no SASL mechanism mta-lite can use (PLAIN or LOGIN); offered: {names}")


def starttls_missing(relay: str) -> Reply:
    """S3: the smarthost stopped offering STARTTLS; no AUTH is sent and the mail waits."""
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.5",
                 f"TLS is required, but host {relay} does not offer STARTTLS")


def auth_needs_tls(relay: str) -> Reply:
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.5",
                 f"refusing to send credentials to {relay} without TLS")


# ---------------------------------------------------------------- failures without a reply

def relay_label(host: str, ip: str, port: int) -> str:
    """Postfix's relay= field: `smtp.isp.example[192.0.2.1]:587`."""
    return f"{host}[{ip}]:{port}"


def find_cause(exc: BaseException | None, kind: type) -> BaseException | None:
    """The exception itself or the first of its causes that is a `kind`."""
    for _ in range(MAX_CAUSE_DEPTH):
        if exc is None:
            return None
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _os_reason(exc: BaseException | None) -> str:
    if find_cause(exc, TimeoutError) is not None:
        return "Connection timed out"
    found = find_cause(exc, OSError)
    if found is not None and getattr(found, "errno", None):
        return os.strerror(found.errno)
    return "connection failed"


def dns_failure(host: str, exc: BaseException | None) -> Reply:
    if isinstance(exc, socket.gaierror) and exc.strerror:
        reason = exc.strerror
    elif find_cause(exc, TimeoutError) is not None:
        reason = "lookup timed out"
    else:
        reason = "no address found"
    return Reply(LOCAL_TRANSIENT_CODE, "4.4.3",
                 f"Host or domain name not found. Name service error for name={host}: {reason}")


def connect_failure(host: str, ip: str, port: int, exc: BaseException | None) -> Reply:
    """`connect to host[ip]:port: Connection refused`, as Postfix says it."""
    return Reply(LOCAL_TRANSIENT_CODE, "4.4.1", f"connect to {relay_label(host, ip, port)}: {_os_reason(exc)}")


def ca_file_unusable(ca_file: str, exc: BaseException) -> Reply:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.5", f"cannot load CA file {ca_file or '(system store)'}: {reason}")


def failure_reply(exc: BaseException, relay: str, stage: str) -> Reply:
    """A session that failed without a usable reply: TLS, timeout or lost connection. Transient."""
    verify = find_cause(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        reason = clean_text(getattr(verify, "verify_message", "") or "verification failed")
        return Reply(LOCAL_TRANSIENT_CODE, "4.7.5", f"Server certificate not verified: {relay}: {reason}")
    tls = find_cause(exc, ssl.SSLError)
    if tls is not None:
        reason = clean_text(getattr(tls, "reason", None) or "handshake failure")
        return Reply(LOCAL_TRANSIENT_CODE, "4.7.5", f"Cannot start TLS: handshake failure with {relay}: {reason}")
    if find_cause(exc, TimeoutError) is not None:
        return Reply(LOCAL_TRANSIENT_CODE, "4.4.2", f"conversation with {relay} timed out while {stage}")
    return Reply(LOCAL_TRANSIENT_CODE, "4.4.2", f"lost connection with {relay} while {stage}")


# ---------------------------------------------------------------- MAIL FROM

def wire_size(content: bytes) -> int:
    """Octets of the message as sent in DATA: CRLF line endings, final CRLF, no dot-stuffing."""
    crlf = content.count(b"\r\n")
    if crlf == content.count(b"\n") == content.count(b"\r"):
        # Queued mail is CRLF already (smtpd refuses bare CR/LF, sendmail normalises):
        # counting is much cheaper than rewriting a copy of the message.
        return len(content) + (0 if content.endswith(b"\r\n") else 2)
    normalised = _LINE_END.sub(b"\r\n", content)
    return len(normalised) + (0 if normalised.endswith(b"\r\n") else 2)


def unsafe_address(address: str) -> bool:
    """True if the address cannot go on a command line as it is (never true for parsed mail)."""
    if _CONTROL.search(address):
        return True
    return bool(_UNSAFE_OUTSIDE_QUOTES.search(_QUOTED_LOCAL.sub("", address, count=1)))


def _size_limit(extensions: dict[str, str]) -> int:
    value = extensions.get("size", "").strip()
    return int(value) if value.isdigit() else 0


def plan_mail(extensions: dict[str, str], sender: str, recipients: list[str], content: bytes,
              smtputf8: bool, relay: str) -> MailPlan | Reply:
    """MAIL FROM parameters for the server's EHLO extensions, or the permanent Reply for a
    message this server can never take (Postfix: 5.6.7 for SMTPUTF8, 5.3.4 for SIZE)."""
    if unsafe_address(sender):
        return Reply(553, "5.1.7", f"<{clean_text(sender)}>: Sender address rejected: unsupported address form")
    utf8_addresses = not all(address.isascii() for address in [sender, *recipients])
    headers = content.split(b"\r\n\r\n", 1)[0]
    needs_utf8 = utf8_addresses or (smtputf8 and not headers.isascii())
    offers_utf8 = "smtputf8" in extensions
    if needs_utf8 and not offers_utf8:
        return Reply(554, "5.6.7", f"SMTPUTF8 is required, but was not offered by host {relay}")
    size, limit = wire_size(content), _size_limit(extensions)
    if limit and size > limit:
        return Reply(552, "5.3.4", f"message size {size} exceeds size limit {limit} of server {relay}")
    options = []
    if "size" in extensions:
        options.append(f"SIZE={size}")
    if not content.isascii() and "8bitmime" in extensions:
        options.append("BODY=8BITMIME")
    use_utf8 = (smtputf8 or utf8_addresses) and offers_utf8
    if use_utf8:
        options.append("SMTPUTF8")
    return MailPlan(tuple(options), "utf-8" if use_utf8 else "ascii")


def unsafe_recipient(recipient: str) -> Reply:
    return Reply(553, "5.1.3", f"<{clean_text(recipient)}>: Recipient address rejected: unsupported address form")


# ---------------------------------------------------------------- the transaction

class _ProtocolError(Exception):
    """The server answered with a code that makes no sense here; the session is abandoned."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class Transaction:
    """MAIL FROM, RCPT TO for each recipient, DATA: one message on one session."""

    def __init__(self, session: Session, sender: str, recipients: list[str], content: bytes,
                 smtputf8: bool) -> None:
        self.s = session
        self.sender, self.recipients, self.content, self.smtputf8 = sender, recipients, content, smtputf8
        self.results: list[RecipientResult | None] = [None] * len(recipients)   # None: pending

    async def run(self) -> DeliveryResult:
        try:
            await self._dialog()
        except _ProtocolError as exc:
            self.s.abort()
            self._settle(exc.reply)
        except SMTPResponseException as exc:    # aiosmtplib: a malformed or oversized reply
            self.s.abort()
            self._settle(refusal(self.s, exc))
        except OSError as exc:      # aiosmtplib's timeouts and lost connections are OSErrors
            self.s.abort()
            self._settle(failure_reply(exc, self.s.relay, self.s.stage))
        return DeliveryResult(self.s.relay, tuple(self.results))

    def _settle(self, reply: Reply) -> None:
        """Every recipient still pending gets this reply and the status it means."""
        status = status_of(reply)
        for i, result in enumerate(self.results):
            if result is None:
                self.results[i] = RecipientResult(self.recipients[i], status, reply)

    async def _dialog(self) -> None:
        plan = plan_mail(self.s.smtp.esmtp_extensions, self.sender, self.recipients,
                         self.content, self.smtputf8, self.s.relay)
        if isinstance(plan, Reply):
            self._settle(plan)
            return
        mail = await self._command("sending MAIL FROM", "in reply to MAIL FROM command",
                                   b"MAIL", b"FROM:" + _path(self.sender, plan.encoding),
                                   *(option.encode("ascii") for option in plan.options))
        if status_of(mail) != SENT:
            self._settle(mail)
        elif not await self._recipients(plan.encoding):
            if self.s.smtp.is_connected:
                await self.s.rset(self.s.timeout_s)     # no DATA without a recipient
            else:
                self.s.abort()
        else:
            self._settle(await self._data())

    async def _recipients(self, encoding: str) -> bool:
        """RCPT TO each recipient; True if any was accepted and the session still stands."""
        accepted = False
        for i, rcpt in enumerate(self.recipients):
            if unsafe_address(rcpt):
                reply = unsafe_recipient(rcpt)
            else:
                reply = await self._command("sending RCPT TO", "in reply to RCPT TO command",
                                            b"RCPT", b"TO:" + _path(rcpt, encoding))
            if status_of(reply) == SENT:
                accepted = True
                continue                        # pending until the end-of-DATA reply
            self.results[i] = RecipientResult(rcpt, status_of(reply), reply)
            if reply.code == 421:               # the server is closing: the rest must wait
                self._settle(reply)
                return False
        return accepted

    async def _data(self) -> Reply:
        s, where = self.s, "in reply to end of DATA command"
        s.stage = "sending message content -- message may be sent more than once"
        timeout = s.timeout_s + len(self.content) / MIN_UPLOAD_BYTES_PER_S
        try:
            response = await s.run(s.smtp.data(self.content), timeout)
        except SMTPDataError as exc:
            # aiosmtplib returns only a 250 to end of DATA; a raised 2xx or 3xx is a reply
            # to DATA itself that was not 354 (so nothing was sent) or a nonsense final reply.
            if exc.code < 400:
                raise _ProtocolError(protocol_error(exc.code, exc.message, where, s.secrets)) from None
            return reply_for(exc.code, exc.message, where, s.secrets)
        return reply_for(response.code, response.message, where, s.secrets)

    async def _command(self, stage: str, where: str, *args: bytes) -> Reply:
        self.s.stage = stage
        response = await self.s.run(self.s.smtp.execute_command(*args))
        reply = reply_for(response.code, response.message, where, self.s.secrets)
        if not is_valid_code(response.code):
            raise _ProtocolError(reply)
        return reply


def refusal(s: Session, exc: SMTPResponseException) -> Reply:
    """The Reply for an error aiosmtplib raised with the server's code and text."""
    return reply_for(exc.code, exc.message, s.where, s.secrets)


def _path(address: str, encoding: str) -> bytes:
    return b"<" + address.encode(encoding) + b">"
