"""engine — postscreen's mini SMTP engine for blocked clients ("enforce"), pure.

Postfix's postscreen_smtpd: talk enough SMTP that a blocked client shows its envelope,
accept nothing. HELO/EHLO and MAIL get 250, every RCPT gets the reply of the failed test
(`550 5.7.1 Service unavailable; client [ip] blocked using <site>`, `550 5.5.1 Protocol
error`, ...), DATA gets 554, QUIT 221. rejected() gives the Postfix-style log line with
sender and recipient for each refused RCPT. The greeting, the line checks, the HTTP-verb
hang-up, RSET, NOOP, QUIT and the error limit are smtpd's (smtpd.conversation); the answers
that differ are postscreen's, as in Postfix.
Guarantees: never answers 2xx to RCPT or 354 to DATA; after `hard_error_limit` errors or
COMMAND_LIMIT commands the only reply left is 421 and the session closes; bare CR/LF, NUL
and HTTP verbs end the session as in the SMTP engine (S2).
SECURITY: faces untrusted input; replies echo nothing the client sent; log fields go
through text.printable().
Must never: accept a message, or write or read anything.
"""

from __future__ import annotations

import re

from mta_lite.reply import (R250_SENDER_OK, R421_TOO_MANY_COMMANDS, R500_BAD_SYNTAX, R500_UNKNOWN, R501_SYNTAX,
                            R502_NOT_IMPLEMENTED, R503_AUTH_DISABLED, R503_NEED_HELO, R503_NEED_MAIL,
                            R554_NO_VALID_RCPT, Reply)
from mta_lite.smtpd.conversation import FORBIDDEN_VERBS, Conversation, MultilineReply, with_host
from mta_lite.text import printable

# Postfix postscreen_command_count_limit = 20: a blocked client has seen enough by then.
COMMAND_LIMIT = 20
_FROM = re.compile(r"FROM:\s*<?([^>\s]*)", re.IGNORECASE)
_TO = re.compile(r"TO:\s*<?([^>\s]*)", re.IGNORECASE)


class EnforceSession(Conversation):
    """One blocked client's conversation. handle_line() returns the Reply to give."""

    def __init__(self, hostname: str, client_ip: str, reject: Reply, hard_error_limit: int) -> None:
        super().__init__(hostname, hard_error_limit)
        self.client_ip, self.reject = client_ip, reject
        self.helo = ""
        self.esmtp = False
        self.sender: str | None = None
        self.recipient = ""
        self.commands = 0

    def handle_line(self, raw: bytes) -> Reply:
        """One command line as received, CRLF included."""
        self.commands += 1
        bad = self.refuse_line(raw)
        if bad is not None:
            return bad
        reply = self._command(raw[:-2].decode("utf-8", "replace"))
        if reply.code >= 400:
            self.error_count += 1
        return reply

    def over_limit(self) -> Reply | None:
        """421 once the error or command limit is reached (checked before each read)."""
        too_many_errors = self.over_error_limit()
        if too_many_errors is not None:
            return too_many_errors
        if self.commands >= COMMAND_LIMIT:
            return self.hang_up(with_host(R421_TOO_MANY_COMMANDS, self.hostname))
        return None

    def handle_overlong(self) -> Reply:
        self.commands += 1
        self.error_count += 1
        return R500_BAD_SYNTAX

    def _command(self, line: str) -> Reply:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        self.last_verb = verb
        if verb in FORBIDDEN_VERBS:
            return self.forbidden()
        handler = getattr(self, f"cmd_{verb}", None) if verb.isalpha() else None
        return handler(arg) if handler else R500_UNKNOWN

    def cmd_HELO(self, arg: str) -> Reply:
        self.helo, self.esmtp = printable(arg.strip()), False
        return Reply(250, "", self.hostname) if arg.strip() else R501_SYNTAX

    def cmd_EHLO(self, arg: str) -> Reply:
        if not arg.strip():
            return R501_SYNTAX
        self.helo, self.esmtp = printable(arg.strip()), True
        lines = (self.hostname, "ENHANCEDSTATUSCODES", "8BITMIME")
        return MultilineReply(250, "", self.hostname, lines)

    def cmd_MAIL(self, arg: str) -> Reply:
        if not self.helo:
            return R503_NEED_HELO
        match = _FROM.match(arg)
        if not match:
            return R501_SYNTAX
        self.sender = printable(match.group(1))
        return R250_SENDER_OK

    def cmd_RCPT(self, arg: str) -> Reply:
        if self.sender is None:
            return R503_NEED_MAIL
        match = _TO.match(arg)
        if not match:
            return R501_SYNTAX
        self.recipient = printable(match.group(1))
        return self.reject

    def cmd_DATA(self, arg: str) -> Reply:
        return R554_NO_VALID_RCPT if self.sender is not None else R503_NEED_MAIL

    def reset(self) -> None:
        self.sender = None

    def cmd_RSET(self, arg: str) -> Reply:
        # Postfix's postscreen takes RSET with any arguments, where its smtpd wants none (501).
        return super().cmd_RSET("")

    def cmd_STARTTLS(self, arg: str) -> Reply:
        return R502_NOT_IMPLEMENTED

    def cmd_AUTH(self, arg: str) -> Reply:
        return R503_AUTH_DISABLED

    def rejected(self) -> str:
        """`NOQUEUE: reject: RCPT from [ip]: 550 ...; from=<a> to=<b> proto=ESMTP helo=<h>`."""
        proto = "ESMTP" if self.esmtp else "SMTP"
        return (f"NOQUEUE: reject: RCPT from [{self.client_ip}]: {self.reject}; from=<{self.sender or ''}> "
                f"to=<{self.recipient}> proto={proto} helo=<{self.helo}>")
