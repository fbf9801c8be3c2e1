"""conversation — what every SMTP server conversation here has in common, pure.

Conversation is the base of smtpd's session.Session and of postscreen's mini engine
(postscreen.engine.EnforceSession): the 220 greeting, the line checks (S2), the hang-up
on HTTP verbs, RSET, NOOP and QUIT, and the 421 once the hard error limit is reached.
Each subclass adds its own commands and keeps its own answers where Postfix's smtpd and
postscreen answer differently.
Guarantees: a command line with NUL, bare LF or bare CR, an HTTP verb, QUIT and the error
limit all set `closing`; the engine hangs up after sending that reply. Only where
`normalize_bare_lf` is set (LAN clients, S2; Postfix 3.9 `smtpd_forbid_bare_newline =
normalize`) is a line ended by a bare LF taken as ended by CRLF; bare CR and NUL never are.
SECURITY: faces untrusted input; no reply here echoes anything the client sent.
Must never: read, write or log anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from mta_lite.reply import (R221_BYE, R221_FORBIDDEN, R250_OK, R421_TOO_MANY_ERRORS, R501_SYNTAX, R521_BARE_CR,
                            R521_BARE_LF, R521_NUL, Reply)

# Postfix smtpd_forbidden_commands: HTTP verbs mean a cross-protocol attack; hang up.
FORBIDDEN_VERBS = frozenset({"CONNECT", "GET", "POST"})


@dataclass(frozen=True)
class MultilineReply(Reply):
    """A multi-line reply (EHLO): `lines` on the wire, the first line as `text`."""

    lines: tuple[str, ...] = ()

    def to_bytes(self, lines: list[str] | None = None) -> bytes:
        return super().to_bytes(lines or list(self.lines))


def with_host(reply: Reply, hostname: str) -> Reply:
    """`421 4.4.2 host Error: ...`: 421 replies name the server (RFC 5321 section 3.8)."""
    return reply.with_text(f"{hostname} {reply.text}")


def normalize_line(raw: bytes) -> bytes:
    """A command line ended by a bare LF, ended by CRLF instead; any other line unchanged.
    Only the line's own terminator changes: a CR or LF inside it is still refused later."""
    if raw.endswith(b"\n") and not raw.endswith(b"\r\n"):
        return raw[:-1] + b"\r\n"
    return raw


def line_error(raw: bytes) -> Reply | None:
    """521 for a command line with NUL, bare LF or bare CR (S2); None when it is clean."""
    if b"\0" in raw:
        return R521_NUL
    if not raw.endswith(b"\r\n") or b"\n" in raw[:-1]:
        return R521_BARE_LF
    if b"\r" in raw[:-2]:
        return R521_BARE_CR
    return None


class Conversation:
    """One client's conversation with a server of ours; handlers return a Reply."""

    def __init__(self, hostname: str, hard_error_limit: int) -> None:
        self.hostname = hostname
        self.hard_error_limit = hard_error_limit
        self.error_count = 0
        self.closing = False           # the engine hangs up after sending the reply
        self.last_verb = "CONNECT"
        self.normalize_bare_lf = False  # take a bare LF line end as CRLF (S2: LAN clients only)
        self.bare_lf_seen = False      # normalize: the client ended some line with a bare LF
        self.bare_lf_logged = False    # the engine logged that (once per session)

    def greeting(self) -> Reply:
        return Reply(220, "", f"{self.hostname} ESMTP")

    def hang_up(self, reply: Reply) -> Reply:
        """`reply` is the last one the client gets."""
        self.closing = True
        return reply

    def take_line(self, raw: bytes) -> bytes:
        """The line as the session reads it: normalized where allowed (noting that it was)."""
        if not self.normalize_bare_lf:
            return raw
        line = normalize_line(raw)
        self.bare_lf_seen = self.bare_lf_seen or line is not raw
        return line

    def refuse_line(self, raw: bytes) -> Reply | None:
        """521 and hang up for a line with NUL, bare LF or bare CR (S2); None when it is clean."""
        bad = line_error(raw)
        return None if bad is None else self.hang_up(bad)

    def forbidden(self) -> Reply:
        """An HTTP verb (FORBIDDEN_VERBS): 221 and hang up, as Postfix does."""
        return self.hang_up(R221_FORBIDDEN)

    def over_error_limit(self) -> Reply | None:
        """421 once hard_error_limit errors were made (checked before each command)."""
        if self.error_count < self.hard_error_limit:
            return None
        return self.hang_up(with_host(R421_TOO_MANY_ERRORS, self.hostname))

    def reset(self) -> None:
        """Forget the mail transaction in progress (RSET)."""
        raise NotImplementedError

    def cmd_RSET(self, arg: str) -> Reply:
        if arg.strip():
            return R501_SYNTAX
        self.reset()
        return R250_OK

    def cmd_NOOP(self, arg: str) -> Reply:
        return R250_OK

    def cmd_QUIT(self, arg: str) -> Reply:
        return self.hang_up(R221_BYE)
