"""reply — SMTP replies with enhanced status codes, and every reply mta-lite sends.

A Reply is plain data: code, enhanced status code (RFC 3463) and text. Handlers return
Replies; only the listener turns them into bytes. Reply texts never carry exception text
or anything a peer sent us unchecked (only parsed, validated addresses).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str = ""
    text: str = ""

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> "Reply":
        return Reply(self.code, self.enhanced, text)

    def prefixed(self, prefix: str) -> "Reply":
        """The same reply with `prefix: ` before its text, e.g. an address."""
        return Reply(self.code, self.enhanced, f"{prefix}: {self.text}")

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    def to_bytes(self, lines: list[str] | None = None) -> bytes:
        """Wire form; `lines` gives a multi-line reply (EHLO), enhanced code on the first only."""
        if not lines:
            return (str(self) + "\r\n").encode("utf-8")
        out = [f"{self.code}-{line}" for line in lines[:-1]]
        out.append(f"{self.code} {lines[-1]}")
        return ("\r\n".join(out) + "\r\n").encode("utf-8")


# 2xx
R221_BYE = Reply(221, "2.0.0", "Bye")
R235_AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
R250_OK = Reply(250, "2.0.0", "Ok")
R250_SENDER_OK = Reply(250, "2.1.0", "Ok")
R250_RCPT_OK = Reply(250, "2.1.5", "Ok")
R252_VRFY = Reply(252, "2.0.0", "Send some mail, I'll try my best")
R220_STARTTLS = Reply(220, "2.0.0", "Ready to start TLS")
R221_FORBIDDEN = Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye.")
R354_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")

# 4xx
R421_TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
R421_SHUTDOWN = Reply(421, "4.3.0", "Service shutting down, closing connection")
R421_TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Error: too many connections")
R421_PORTS_BUSY = Reply(421, "4.3.2", "All server ports are busy")
R421_TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
R451_LOCAL_ERROR = Reply(451, "4.3.0", "Error: queue file write error")
# Our own bug, in smtpd or in the smarthost client: try again later (the traceback is logged
# beside it, naming where). The one "try again later" for every internal error.
R451_INTERNAL = Reply(451, "4.3.0", "Error: internal error, please try again later")
R452_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
R452_TOO_MANY_RCPTS = Reply(452, "4.5.3", "Error: too many recipients")

# 5xx
R500_UNKNOWN = Reply(500, "5.5.2", "Error: command not recognized")
R500_LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
R500_BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
R500_BAD_UTF8 = Reply(500, "5.5.2", "Error: bad UTF-8 syntax")
R501_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
R501_BAD_CHARS = Reply(501, "5.5.2", "Syntax error: control characters not allowed")
R501_BAD_ADDRESS = Reply(501, "5.1.7", "Bad sender address syntax")
R501_BAD_RCPT = Reply(501, "5.1.3", "Bad recipient address syntax")
R501_HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO hostname")
R501_EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
R501_MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
R501_RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
R501_SIZE_SYNTAX = Reply(501, "5.5.4", "Bad message size syntax")
R501_BODY_SYNTAX = Reply(501, "5.5.4", "Bad BODY keyword syntax")
R502_NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
R503_NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
R503_NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
R503_NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
R503_NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
R503_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
R503_AUTH_DISABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
R521_BARE_LF = Reply(521, "5.5.2", "Error: bare <LF> received")
R521_BARE_CR = Reply(521, "5.5.2", "Error: bare <CR> received")
R521_NUL = Reply(521, "5.5.2", "Error: NUL character received")
R550_NO_LOCAL = Reply(550, "5.1.1", "Recipient address rejected: local delivery is disabled")
R552_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
R552_LINE_TOO_LONG = Reply(552, "5.3.4", "Error: message line too long")
R553_BAD_RCPT = Reply(553, "5.1.3", "Recipient address rejected: unsupported address form")
R553_BAD_SENDER = Reply(553, "5.1.7", "Sender address rejected: unsupported address form")
R554_RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
R554_SYNC = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
R554_NO_VALID_RCPT = Reply(554, "5.5.1", "Error: no valid recipients")
R554_TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
R555_PARAM = Reply(555, "5.5.4", "Unsupported option")

# postscreen (Postfix's texts; the DNSBL reply names the client and the site: dnsbl_reply())
R421_TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Error: too many commands")
R521_PROTOCOL_ERROR = Reply(521, "5.5.1", "Protocol error")
R550_PROTOCOL_ERROR = Reply(550, "5.5.1", "Protocol error")
R521_DENYLISTED = Reply(521, "5.3.2", "Service currently unavailable")
R550_DENYLISTED = Reply(550, "5.3.2", "Service currently unavailable")


def dnsbl_reply(code: int, client_ip: str, site: str) -> Reply:
    """`550 5.7.1 Service unavailable; client [ip] blocked using <site>` (or 521 for drop)."""
    return Reply(code, "5.7.1", f"Service unavailable; client [{client_ip}] blocked using {site}")

# submission and sender ownership (RFC 4954 texts; the 553 as Postfix's reject_sender_login_mismatch)
R421_AUTH_FAILURES = Reply(421, "4.7.0", "Error: too many authentication failures")
R501_AUTH_BASE64 = Reply(501, "5.5.2", "Cannot Base64-decode Client responses")
R501_AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
R501_AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism")
R503_AUTH_DONE = Reply(503, "5.5.1", "Error: already authenticated")
R504_AUTH_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
R530_AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
R535_AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
R538_ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")


def sender_not_owned(sender: str, owner: str) -> Reply:
    """`553 5.7.1 <sender>: Sender address rejected: not owned by user alice` (or client [ip])."""
    return Reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not owned by {owner}")
