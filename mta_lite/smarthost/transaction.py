"""transaction — one mail transaction to a smarthost: MAIL FROM, RCPT TO, DATA.

Transaction.run() sends MAIL FROM with the parameters esmtp.plan_mail() chose, RCPT TO for
each recipient and DATA on a session the pool opened, and returns a DeliveryResult. What
each reply or failure means is decided in replies.py.

Guarantees: a recipient is sent only on a 2xx reply to end of DATA. Only a 5xx reply to
MAIL FROM, RCPT TO or end of DATA, or a message the server can never take (SMTPUTF8
missing, over its SIZE), is permanent. Every failure without a reply (timeout, lost
connection, TLS, DNS) is transient: an unknown outcome is never a bounce (G3). A 5xx
refusal during session set-up (greeting, EHLO, STARTTLS, AUTH) is softened to its 4xx twin
(Postfix's soft bounce, smtp_sasl_auth_soft_bounce for AUTH), so a misbehaving smarthost
cannot bounce the queue and the reply agrees with the deferral. No DATA without a recipient.
SECURITY: a smarthost's reply text is untrusted: it goes through replies.clean_text (control
characters replaced, lines joined, length capped, every form of the account's password
masked) before it may go into a Reply, a log line or a bounce.
Must never: return a Reply carrying a password, an AUTH payload or raw exception text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiosmtplib.errors import SMTPDataError, SMTPResponseException

from mta_lite.reply import Reply
from mta_lite.smarthost.esmtp import plan_mail, unsafe_address, unsafe_recipient
from mta_lite.smarthost.replies import failure_reply, is_valid_code, protocol_error, reply_for, status_of
from mta_lite.smarthost.result import SENT, DeliveryResult, RecipientResult

if TYPE_CHECKING:
    from mta_lite.smarthost.client import Session

# The end-of-DATA wait grows with the message, so that a slow home uplink (about
# 128 kbit/s) does not turn a big message into a timeout and a duplicate (G3).
MIN_UPLOAD_BYTES_PER_S = 16 * 1024


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
