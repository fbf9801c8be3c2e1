"""session — the SMTP server state machine, pure: command line in, Reply out.

Session.handle_line() takes one command line as received (ending in CRLF) and returns the
Reply to give (or, for AUTH, an AuthRequest); it never touches a socket, a file or a clock.
The SMTP engine (engine.py) owns all I/O: it streams DATA, asks envelope() for the
envelope to queue, and reports the outcome back with end_data(). A SessionContext carries
everything the session may know about its world, including an injected free_bytes() for
the storage check at MAIL FROM (G5). What it shares with postscreen's mini engine
(greeting, line checks, RSET, NOOP, QUIT, the error limit) is in conversation.py; the
parsing of command arguments is in syntax.py.
Guarantees: only clients in mynetworks, or clients logged in on a submission listener
(auth.py), get a recipient accepted (S1); a submission listener takes no MAIL before AUTH
(530); a sender the client or login does not own is refused at MAIL FROM (policy.py, S4);
every recipient that reaches envelope() went through envelope.parse_path(); unqualified
recipients and those at localhost or at our own hostname are rewritten to the admin address; after
hard_error_limit errors the only reply left is 421. received_header() builds a Received:
line that contains no CR, LF or control character whatever the peer sent.
SECURITY: faces untrusted input. Replies echo peer data only as parsed, validated
addresses; log text made from peer data is passed through text.printable().
Must never: accept a recipient from outside mynetworks (unless logged in), log an AUTH
response, or write or read anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable

from mta_lite.config.schema import Config, Listen
from mta_lite.envelope import Envelope, domain_of, parse_path
from mta_lite.errors import AddressError
from mta_lite.identity import LOCAL_DOMAINS
from mta_lite.reply import (R220_STARTTLS, R250_RCPT_OK, R250_SENDER_OK, R252_VRFY, R354_DATA, R452_STORAGE,
                            R452_TOO_MANY_RCPTS, R500_BAD_SYNTAX, R500_BAD_UTF8, R500_LINE_TOO_LONG, R500_UNKNOWN,
                            R501_BAD_ADDRESS, R501_BAD_RCPT, R501_MAIL_SYNTAX, R501_RCPT_SYNTAX, R501_SYNTAX,
                            R502_NOT_IMPLEMENTED, R503_IN_TRANSACTION, R503_NEED_HELO, R503_NEED_MAIL,
                            R503_NEED_RCPT, R503_NESTED_MAIL, R521_BARE_LF, R530_AUTH_REQUIRED, R550_NO_LOCAL,
                            R554_NO_VALID_RCPT, R554_RELAY_DENIED, R554_TLS_ACTIVE, R555_PARAM, Reply)
from mta_lite.smtpd.auth import AuthRequest, AuthResult, SessionAuth
from mta_lite.smtpd.conversation import FORBIDDEN_VERBS, Conversation, MultilineReply
from mta_lite.smtpd.policy import SenderPolicy
from mta_lite.smtpd.received import received_header
from mta_lite.smtpd.syntax import helo_error, mail_params, path_argument
from mta_lite.text import printable

# G5: refuse MAIL FROM when free space < reserve + 1.5 x the message size limit, so one
# more maximal message plus its queue file overhead always fits.
FREE_SPACE_FACTOR = 1.5
COMMANDS = ("HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "QUIT")
_STATS_ORDER = tuple(c.lower() for c in COMMANDS) + ("unknown",)


@dataclass(frozen=True)
class SessionContext:
    """What a session knows about its world; built once per connection."""

    hostname: str
    client_ip: str
    in_mynetworks: bool
    admin_address: str
    size_limit_bytes: int
    recipient_limit: int
    hard_error_limit: int
    free_bytes: Callable[[], int]
    reserve_bytes: int = 0
    starttls_available: bool = False
    tls_active: bool = False
    smtputf8: bool = True
    auth: str = "none"                  # "required": submission listener (AUTH before MAIL)
    normalize_bare_lf: bool = False     # S2: LAN client, listener bare_newline = "normalize"
    policy: SenderPolicy | None = None  # who may use which sender (S4); None: anyone

    @classmethod
    def from_config(cls, cfg: Config, client_ip: str, free_bytes: Callable[[], int],
                    starttls_available: bool = False, listen: Listen | None = None) -> "SessionContext":
        in_mynetworks = cfg.in_mynetworks(client_ip)
        return cls(hostname=cfg.hostname, client_ip=client_ip,
                   in_mynetworks=in_mynetworks, admin_address=cfg.admin_address,
                   size_limit_bytes=cfg.message_size_limit,
                   recipient_limit=cfg.smtpd.recipient_limit,
                   hard_error_limit=cfg.smtpd.hard_error_limit, free_bytes=free_bytes,
                   reserve_bytes=cfg.queue.reserve_bytes, starttls_available=starttls_available,
                   tls_active=listen is not None and listen.tls == "implicit",
                   auth=listen.auth if listen is not None else "none", policy=SenderPolicy.from_config(cfg),
                   normalize_bare_lf=in_mynetworks and normalizes(listen))


def normalizes(listen: Listen | None) -> bool:
    """S2: does this listener take LAN clients' bare LF as CRLF? Never on a submission
    listener: its clients come from anywhere, and Postfix's own default there is strict too."""
    listen = listen or Listen("127.0.0.1", 25)
    return listen.bare_newline == "normalize" and listen.auth != "required"


@dataclass
class _Transaction:
    sender: str
    smtputf8: bool = False
    body: str = "7BIT"
    recipients: list[str] = field(default_factory=list)


class Session(Conversation):
    """One SMTP conversation. Handlers return a Reply and never write anywhere."""

    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx.hostname, ctx.hard_error_limit)
        self.ctx = ctx
        self.helo: str | None = None
        self.esmtp = False             # EHLO answered: PIPELINING was advertised
        self.tx: _Transaction | None = None
        self.in_data = False           # 354 given; the engine streams the content
        self.starttls_pending = False  # 220 to STARTTLS given; the engine starts TLS
        self.auth = SessionAuth(ctx.client_ip)
        self.normalize_bare_lf = ctx.normalize_bare_lf
        self._stats: dict[str, list[int]] = {}
        self._log_from = ""
        self._log_to = ""

    # ------------------------------------------------------------ input

    def handle_line(self, raw: bytes) -> Reply | AuthRequest:
        """One command line as received, CRLF included. An AuthRequest instead of a Reply:
        the client sent its credentials; the engine has them checked, then auth_checked()."""
        raw = self.take_line(raw)
        bad = self.refuse_line(raw)
        if bad is not None:
            self.last_verb = "UNKNOWN"
            return bad
        try:
            text = raw[:-2].decode("utf-8")
        except UnicodeDecodeError:
            self.last_verb = "UNKNOWN"
            return self._record("unknown", R500_BAD_UTF8)
        if self.auth.in_exchange:      # a response to a 334, not a command (never logged: S3)
            self.last_verb = "AUTH"
            outcome = self.auth.respond(raw[:-2])
            return outcome if isinstance(outcome, AuthRequest) else self._record("auth", outcome)
        return self.handle(text)

    def handle(self, line: str) -> Reply | AuthRequest:
        """One decoded command line without its CRLF."""
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        self.last_verb = verb if verb in COMMANDS else "UNKNOWN"
        if not line:
            return self._record("unknown", R500_BAD_SYNTAX)
        if verb in FORBIDDEN_VERBS or not (line[0].isascii() and line[0].isalpha()):
            return self.forbidden()
        if verb not in COMMANDS:
            return self._record("unknown", R500_UNKNOWN)
        outcome = getattr(self, f"cmd_{verb}")(arg)
        if outcome is R354_DATA or isinstance(outcome, AuthRequest):
            return outcome             # counted when the data ends or the check is done
        return self._record(verb.lower(), outcome)

    def handle_overlong(self, tail: bytes) -> Reply:
        """A command line over the limit was discarded; `tail` is its last bytes."""
        self.last_verb = "UNKNOWN"
        self.auth.cancel()
        if not self.take_line(tail).endswith(b"\r\n"):
            return self.hang_up(R521_BARE_LF)
        self.error_count += 1
        return R500_LINE_TOO_LONG

    def _record(self, name: str, reply: Reply) -> Reply:
        ok_total = self._stats.setdefault(name, [0, 0])
        ok_total[1] += 1
        if reply.code < 400:
            ok_total[0] += 1
        elif reply != R452_TOO_MANY_RCPTS:
            # RFC 5321 section 4.5.3.1.10: 452 for the recipient limit is flow control,
            # the client is expected to send the rest later; it is not a client error.
            self.error_count += 1
        return reply

    # ------------------------------------------------------------ commands

    def cmd_HELO(self, arg: str) -> Reply:
        return self._greet(arg, esmtp=False)

    def cmd_EHLO(self, arg: str) -> Reply:
        return self._greet(arg, esmtp=True)

    def _greet(self, arg: str, esmtp: bool) -> Reply:
        name = arg.strip()
        refusal = helo_error(name, esmtp)
        if refusal is not None:
            return refusal
        self.helo, self.esmtp, self.tx = name, esmtp, None
        host = self.ctx.hostname
        if not esmtp:
            return Reply(250, "", host)
        lines = [host, "PIPELINING", f"SIZE {self.ctx.size_limit_bytes}"]
        if self.ctx.starttls_available and not self.ctx.tls_active:
            lines.append("STARTTLS")
        if (mechanisms := self.auth.advertised(self.ctx)) is not None:
            lines.append(mechanisms)
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME"]
        if self.ctx.smtputf8:
            lines.append("SMTPUTF8")
        return MultilineReply(250, "", host, tuple(lines))

    def cmd_MAIL(self, arg: str) -> Reply:
        if self.helo is None:
            return R503_NEED_HELO
        if self.tx is not None:
            return R503_NESTED_MAIL
        if self.ctx.auth == "required" and self.auth.user is None:
            return R530_AUTH_REQUIRED
        argument = path_argument(arg, "FROM")
        if argument is None:
            return R501_MAIL_SYNTAX
        path, param_text = argument
        self._log_from, self._log_to = printable(path.strip("<>")), ""
        params = mail_params(param_text, self.esmtp, self.ctx.size_limit_bytes, self.ctx.smtputf8)
        if isinstance(params, Reply):
            return params
        try:
            sender = parse_path(path, sender=True, smtputf8=params.smtputf8)
        except AddressError as exc:
            return exc.reply or R501_BAD_ADDRESS
        if sender and "@" not in sender:
            # Postfix append_at_myorigin: a relayed envelope sender needs a domain.
            sender = f"{sender}@{self.ctx.hostname.lower()}"
        refusal = self.ctx.policy and self.ctx.policy.refusal(sender, self.ctx.client_ip, self.auth.user)
        if refusal:
            return refusal
        storage = self._storage_check()
        if storage is not None:
            return storage
        self.tx = _Transaction(sender, params.smtputf8, params.body)
        return R250_SENDER_OK

    def _storage_check(self) -> Reply | None:
        need = self.ctx.reserve_bytes + FREE_SPACE_FACTOR * self.ctx.size_limit_bytes
        try:
            free = self.ctx.free_bytes()
        except OSError:
            return R452_STORAGE        # cannot tell: refuse for now rather than risk it
        return R452_STORAGE if free < need else None

    def cmd_RCPT(self, arg: str) -> Reply:
        if self.tx is None:
            return R503_NEED_MAIL
        argument = path_argument(arg, "TO")
        if argument is None:
            return R501_RCPT_SYNTAX
        path, param_text = argument
        self._log_to = printable(path.strip("<>"))
        if param_text:
            return R555_PARAM
        try:
            rcpt = parse_path(path, sender=False, smtputf8=self.tx.smtputf8)
        except AddressError as exc:
            return exc.reply or R501_BAD_RCPT
        if len(self.tx.recipients) >= self.ctx.recipient_limit:
            return R452_TOO_MANY_RCPTS
        if not (self.ctx.in_mynetworks or self.auth.user):
            return R554_RELAY_DENIED.prefixed(f"<{rcpt}>")
        target = self._rewrite_local(rcpt)
        if isinstance(target, Reply):
            return target
        if target not in self.tx.recipients:
            self.tx.recipients.append(target)
        return R250_RCPT_OK

    def _rewrite_local(self, rcpt: str) -> str | Reply:
        """This box delivers nothing locally: mail for root, root@localhost, ... goes to the admin."""
        local_domains = LOCAL_DOMAINS + (self.ctx.hostname.lower(),)
        if "@" in rcpt and domain_of(rcpt) not in local_domains:
            return rcpt
        if not self.ctx.admin_address:
            return R550_NO_LOCAL.prefixed(f"<{rcpt}>")
        return self.ctx.admin_address

    def cmd_DATA(self, arg: str) -> Reply:
        if arg.strip():
            return R501_SYNTAX
        if self.tx is None:
            return R503_NEED_RCPT
        if not self.tx.recipients:
            return R554_NO_VALID_RCPT
        self.in_data = True
        return R354_DATA

    def reset(self) -> None:
        """RSET: the transaction goes; the HELO name and the login stay."""
        self.tx = None

    def cmd_VRFY(self, arg: str) -> Reply:
        return R252_VRFY if arg.strip() else R501_SYNTAX

    def cmd_AUTH(self, arg: str) -> Reply | AuthRequest:
        outcome = self.auth.command(arg, self.ctx, self.helo is not None and self.esmtp, self.tx is not None)
        if isinstance(outcome, Reply) and outcome.code == 421:
            self.closing = True
        return outcome

    def auth_checked(self, result: AuthResult) -> Reply:
        """The engine's answer to an AuthRequest: the reply to give the client."""
        reply = self.auth.settle(result, self.ctx.hostname)
        if reply.code == 421:
            self.closing = True
        return self._record("auth", reply)

    def cmd_STARTTLS(self, arg: str) -> Reply:
        if arg.strip():
            return R501_SYNTAX
        if self.ctx.tls_active:
            return R554_TLS_ACTIVE
        if not self.ctx.starttls_available:
            return R502_NOT_IMPLEMENTED
        if self.tx is not None:
            return R503_IN_TRANSACTION
        self.starttls_pending = True
        return R220_STARTTLS

    # ------------------------------------------------------------ for the engine

    @property
    def pipelining_advertised(self) -> bool:
        return self.esmtp

    @property
    def completes_headers(self) -> bool:
        """Add a missing Date:, Message-ID:, From: (headers.py)? Only for our own clients,
        as Postfix's local_header_rewrite_clients: LAN devices and logged-in users."""
        return self.ctx.in_mynetworks or self.auth.user is not None

    def tls_started(self) -> None:
        """RFC 3207 section 4.2: after the handshake the client starts over with EHLO."""
        self.ctx = replace(self.ctx, tls_active=True)
        self.helo, self.esmtp, self.tx, self.starttls_pending = None, False, None, False
        self.auth = SessionAuth(self.ctx.client_ip)

    def envelope(self) -> Envelope:
        if self.tx is None:
            raise ValueError("envelope() outside a mail transaction")
        return Envelope(sender=self.tx.sender, recipients=list(self.tx.recipients),
                        client_address=self.ctx.client_ip, client_helo=self.helo or "",
                        smtputf8=self.tx.smtputf8, body=self.tx.body, sasl_username=self.auth.user or "")

    def end_data(self, reply: Reply, close: bool = False) -> Reply:
        """Record the outcome of DATA (queued or not) and end the transaction."""
        self.in_data, self.tx = False, None
        self.closing = self.closing or close
        return self._record("data", reply)

    @property
    def protocol(self) -> str:
        """RFC 3848 / RFC 6531 protocol name for the Received: line."""
        tls = ("S" if self.ctx.tls_active else "") + ("A" if self.auth.user else "")
        if self.tx is not None and self.tx.smtputf8:
            return "UTF8SMTP" + tls
        return "ESMTP" + tls if self.esmtp or tls else "SMTP"

    def received_header(self, queue_id: str, date: datetime) -> bytes:
        rcpts = self.tx.recipients if self.tx is not None else []
        return received_header(helo=self.helo or "", client_ip=self.ctx.client_ip,
                               hostname=self.ctx.hostname, queue_id=queue_id,
                               protocol=self.protocol,
                               recipient=rcpts[0] if len(rcpts) == 1 else None, date=date)

    def reject_log(self, reply: Reply) -> str:
        """`RCPT from [ip]: 554 ...; from=<a> to=<b> proto=ESMTP helo=<h>` (Postfix style)."""
        to = f" to=<{self._log_to}>" if self.last_verb == "RCPT" else ""
        return (f"{self.last_verb} from [{self.ctx.client_ip}]: {printable(str(reply))}; "
                f"from=<{self._log_from}>{to} proto={self.protocol} helo=<{printable(self.helo or '')}>")

    def command_stats(self) -> str:
        """`ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4` as Postfix logs at disconnect."""
        parts, ok_sum, total_sum = [], 0, 0
        for name in _STATS_ORDER:
            if name in self._stats:
                ok, total = self._stats[name]
                parts.append(f"{name}={ok}" if ok == total else f"{name}={ok}/{total}")
                ok_sum, total_sum = ok_sum + ok, total_sum + total
        parts.append(f"commands={ok_sum}" if ok_sum == total_sum else f"commands={ok_sum}/{total_sum}")
        return " ".join(parts)
