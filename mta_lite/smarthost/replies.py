"""replies — what a smarthost's answer, or the lack of one, means: our Reply, log line and DSN text.

Pure: no I/O, no clock, no configuration read; every function can be tested with plain values.
A reply the server gave is kept as it said it (550, 5.1.1, "<bob@example.org>: User unknown
(in reply to RCPT TO command)": str(reply) is Postfix's `host X said:` text) and maps to a
status (sent, deferred, bounced). A failure without a reply (DNS, connect, TLS, timeout,
lost connection) gets a transient Reply worded like Postfix's smtp(8) ("connect to
host[ip]:port: Connection refused"). Reply.enhanced is the dsn=; our own verdicts use code
451 (transient) or 55x (permanent). A Step names one step of the conversation both ways
Postfix does: "while receiving the initial server greeting" for a failure without a reply,
"(at the initial greeting)" or "(in reply to EHLO command)" for a refusal; callers pass
the step under way explicitly.

Guarantees: a recipient is sent only on a 2xx; only a 5xx is permanent (status_of). Every
failure without a reply is transient: a timeout or a lost connection after the final dot is
an unknown outcome, "deferred ... message may be sent more than once", never a bounce (G3).
soften() turns a set-up refusal into its 4xx twin (Postfix's soft bounce). An unverified
certificate (S3) and a refused login (S5) are transient, 4.7.5 and 4.7.8.
SECURITY: a smarthost's text is untrusted. clean_text() is the one place in smarthost/ that
makes it printable: control characters replaced, lines joined, length capped and every form
of the account's password masked, before it may go into a Reply, a log line or a DSN.
Must never: return a Reply carrying a password, an AUTH payload or raw exception text.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from typing import NamedTuple

from mta_lite.config.values import mask
from mta_lite.reply import Reply
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT

# A hostile or chatty smarthost must not fill log lines, queue files and DSNs with its text;
# Postfix also truncates server replies it records. 400 characters keep every real reply.
MAX_SERVER_TEXT_CHARS = 400
# How far along __cause__/__context__ we look for the real reason behind an exception.
MAX_CAUSE_DEPTH = 8

LOCAL_TRANSIENT_CODE = 451      # our own "try again later" verdicts

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_WHITESPACE = re.compile(r"\s+")


class Step(NamedTuple):
    """One step of the conversation, named for a failure without a reply and for a refusal."""

    doing: str      # Postfix's "... timed out while <doing>"
    where: str      # Postfix's "... (<where>)" after a server's refusal


GREETING = Step("receiving the initial server greeting", "at the initial greeting")
EHLO = Step("performing the EHLO handshake", "in reply to EHLO command")
STARTTLS = Step("performing the STARTTLS handshake", "in reply to STARTTLS command")
AUTH = Step("performing SASL authentication", "in reply to AUTH command")
MAIL = Step("sending MAIL FROM", "in reply to MAIL FROM command")
RCPT = Step("sending RCPT TO", "in reply to RCPT TO command")
# Once the content is on its way the outcome of a failure is unknown: the words say so (G3).
DATA = Step("sending message content -- message may be sent more than once", "in reply to end of DATA command")


# ---------------------------------------------------------------- the server's text

def clean_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """A server's text made safe to record: one line, printable, capped, secrets masked."""
    text = mask(text, secrets)
    text = text.encode("utf-8", "replace").decode("utf-8")    # lone surrogates -> "?"
    text = CONTROL_CHARS.sub("?", _WHITESPACE.sub(" ", text)).strip()
    text = mask(text, secrets)
    if len(text) > MAX_SERVER_TEXT_CHARS:
        text = text[:MAX_SERVER_TEXT_CHARS] + "..."
    return text


# ---------------------------------------------------------------- server replies

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
    """A reply that makes no sense at this point: transient, the connection is abandoned."""
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


# ---------------------------------------------------------------- TLS and AUTH (S3, S5)

def auth_failed(code: int, message: str, relay: str, secrets: tuple[str, ...]) -> Reply:
    """A refused login, always transient (S5): `SASL authentication failed; server X said:
    535 5.7.8 ...`, softened to 435 4.7.8 as Postfix's smtp_sasl_auth_soft_bounce does."""
    text = clean_text(message, secrets)
    reply = Reply(code, enhanced_of(code, text),
                  f"SASL authentication failed; server {relay} said: {code} {text}")
    return soften(reply)


def no_sasl_mechanism(relay: str, offered: list[str], wanted: str = "PLAIN or LOGIN") -> Reply:
    names = clean_text(" ".join(offered).upper()) or "none"
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.0",
                 f"host {relay} offers no SASL mechanism mta-lite can use ({wanted}); offered: {names}")


def token_failure(provider: str, reason: str, refused: bool) -> Reply:
    """No access token (OAuth2): refused by the provider (the account pauses as for a refused
    login, S5) or the token endpoint unreachable, slow or garbled (4.4.2: the account pauses
    like one whose smarthost is down, then one probe). Never permanent."""
    text = f"token refresh failed: {clean_text(reason)} ([oauth.{provider}])"
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.8" if refused else "4.4.2", text)


def token_refused(code: int, message: str, relay: str, words: str, secrets: tuple[str, ...]) -> Reply:
    """The smarthost refused our token (S5, softened like auth_failed): its reply and, in plain
    words, what its 334 challenge said (`the token is invalid or expired (status 401, ...)`)."""
    text = clean_text(message, secrets)
    said = f"{code} {text}" + (f"; {clean_text(words, secrets)}" if words else "")
    return soften(Reply(code, enhanced_of(code, text), f"token refused: server {relay} said: {said}"))


def starttls_missing(relay: str) -> Reply:
    """S3: the smarthost stopped offering STARTTLS; no AUTH is sent and the mail waits."""
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.5",
                 f"TLS is required, but host {relay} does not offer STARTTLS")


def auth_needs_tls(relay: str) -> Reply:
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.5",
                 f"refusing to send credentials to {relay} without TLS")


def ca_file_unusable(ca_file: str, exc: BaseException) -> Reply:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
    return Reply(LOCAL_TRANSIENT_CODE, "4.7.5", f"cannot load CA file {ca_file or '(system store)'}: {reason}")


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


def failure_reply(exc: BaseException, relay: str, doing: str) -> Reply:
    """A conversation that failed without a usable reply while `doing` (a Step's doing, Postfix's
    words for the step under way): TLS, timeout or lost connection. Always transient."""
    verify = find_cause(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        reason = clean_text(getattr(verify, "verify_message", "") or "verification failed")
        return Reply(LOCAL_TRANSIENT_CODE, "4.7.5", f"Server certificate not verified: {relay}: {reason}")
    tls = find_cause(exc, ssl.SSLError)
    if tls is not None:
        reason = clean_text(getattr(tls, "reason", None) or "handshake failure")
        return Reply(LOCAL_TRANSIENT_CODE, "4.7.5", f"Cannot start TLS: handshake failure with {relay}: {reason}")
    if find_cause(exc, TimeoutError) is not None:
        return Reply(LOCAL_TRANSIENT_CODE, "4.4.2", f"conversation with {relay} timed out while {doing}")
    return Reply(LOCAL_TRANSIENT_CODE, "4.4.2", f"lost connection with {relay} while {doing}")
