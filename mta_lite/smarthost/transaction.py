"""transaction — one mail transaction on an open connection: MAIL FROM, RCPT TO, DATA.

Transaction(conn, sender, recipients, content, smtputf8).run() sends MAIL FROM with the
parameters esmtp.plan_mail() chose, RCPT TO for each recipient and DATA, and returns a
DeliveryResult with one RecipientResult per recipient; what each reply means is decided in
replies.py. `content` is bytes or a content.Content: a message in memory is written after
the 354 at once (esmtp.data_bytes); one whose rest lies in its queue file is sent in chunks
(esmtp.DataEncoder), each write awaiting the transport's drain (flow control), so the
memory a big message takes is a chunk and the transport's buffer, not the message. Each
command is sent with the Step it is (MAIL, RCPT, DATA), so a failure is worded for the
command under way.

Guarantees (G3): a recipient is sent only on a 2xx reply to end of DATA. Only a 5xx reply to
MAIL FROM, RCPT TO or end of DATA, or a message the server can never take (SMTPUTF8
missing, over its SIZE), is permanent. A timeout or a lost connection once DATA has started
is an unknown outcome: deferred, "message may be sent more than once", never a bounce. No
DATA without an accepted recipient. The wait after the final dot grows with the message, so
a slow uplink does not turn a big message into a timeout and a duplicate. A connection that
failed, or got a reply that makes no sense, is aborted and never pooled again. On a
connection the pool reused without RSET (Connection.unverified), no usable reply to MAIL
FROM, or a 421, makes the transaction `stale`: the server hung up while the connection was
idle, nothing of the message was sent, and the pool runs it again on a fresh connection.
Must never: share a connection with another transaction; bounce a recipient whose fate is
unknown; send a declared-8bit MIME part to a server without 8BITMIME (downgrade.py makes
it quoted-printable, as Postfix does: the one case that reads a big message whole); end
DATA with the final dot when the queue file could not be read to its end (a changed file:
the connection is aborted, the message deferred); put the account's password or an AUTH
payload into a Reply (the server's texts go through replies.clean_text with the
connection's secrets).
"""

from __future__ import annotations

from typing import Awaitable, TypeVar

from aiosmtplib.errors import SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.response import SMTPResponse

from mta_lite.errors import QueueFileChangedError
from mta_lite.reply import Reply
from mta_lite.smarthost.connection import REUSE_CHECK_TIMEOUT_S, Connection
from mta_lite.smarthost.content import Content
from mta_lite.smarthost.downgrade import to_7bit
from mta_lite.smarthost.esmtp import (ContentFacts, DataEncoder, data_bytes, plan_mail, unsafe_address,
                                      unsafe_recipient)
from mta_lite.smarthost.replies import (DATA, MAIL, RCPT, Step, failure_reply, is_valid_code,
                                        protocol_error, reply_for, status_of)
from mta_lite.smarthost.result import SENT, DeliveryResult, RecipientResult

# The end-of-DATA wait grows with the message, so that a slow home uplink (about
# 128 kbit/s) does not turn a big message into a timeout and a duplicate (G3).
MIN_UPLOAD_BYTES_PER_S = 16 * 1024

T = TypeVar("T")


class _Abandoned(Exception):
    """The connection cannot go on: every recipient still pending gets this reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class Transaction:
    """MAIL FROM, RCPT TO for each recipient, DATA: one message on one connection."""

    def __init__(self, conn: Connection, sender: str, recipients: list[str], content: bytes | Content,
                 smtputf8: bool) -> None:
        self.conn = conn
        self.content = content if isinstance(content, Content) else Content.of(content)
        self.sender, self.recipients, self.smtputf8 = sender, recipients, smtputf8
        self.results: list[RecipientResult | None] = [None] * len(recipients)   # None: pending
        self.crlf_only: bool | None = None      # from the message's facts, once known
        self.stale = False                      # see _mail: the pool tries a fresh connection

    async def run(self) -> DeliveryResult:
        try:
            await self._dialog()
        except _Abandoned as exc:
            self.conn.abort()
            self._settle(exc.reply)
        return DeliveryResult(self.conn.relay, tuple(self.results))

    def _settle(self, reply: Reply) -> None:
        """Every recipient still pending gets this reply and the status it means."""
        status = status_of(reply)
        for i, result in enumerate(self.results):
            if result is None:
                self.results[i] = RecipientResult(self.recipients[i], status, reply)

    async def _dialog(self) -> None:
        extensions = self.conn.smtp.esmtp_extensions
        try:
            facts = self._facts(extensions)
        except OSError as exc:                  # nothing sent yet: the connection stays good
            self._settle(_unreadable(exc))
            return
        self.crlf_only = facts.crlf_only
        plan = plan_mail(extensions, self.sender, self.recipients, facts, self.smtputf8, self.conn.relay)
        if isinstance(plan, Reply):
            self._settle(plan)
            return
        self.conn.between_transactions = False
        mail = await self._mail(plan)
        if status_of(mail) != SENT:
            self._settle(mail)
        elif not await self._recipients(plan.encoding):
            if self.conn.smtp.is_connected:                    # no DATA without a recipient
                self.conn.between_transactions = await self.conn.reset_ok(self.conn.timeout_s)
            else:
                self.conn.abort()
        else:
            self._settle(await self._data())

    async def _mail(self, plan) -> Reply:
        """MAIL FROM. On a connection reused without RSET its reply is awaited no longer than
        an RSET's would be, and a server found gone (no usable reply, or 421) makes the
        transaction stale; nothing but MAIL FROM was sent."""
        unverified, self.conn.unverified = self.conn.unverified, False
        timeout_s = min(self.conn.timeout_s, REUSE_CHECK_TIMEOUT_S) if unverified else None
        try:
            reply = await self._command(MAIL, b"MAIL", b"FROM:" + _path(self.sender, plan.encoding),
                                        *(option.encode("ascii") for option in plan.options), timeout_s=timeout_s)
        except _Abandoned:
            self.stale = unverified
            raise
        self.stale = unverified and reply.code == 421
        return reply

    def _facts(self, extensions: dict[str, str]) -> ContentFacts:
        """The message's facts for MAIL FROM; 8-bit MIME parts made quoted-printable first
        for a server without 8BITMIME, as Postfix does (the message whole in memory)."""
        facts = self.content.facts()
        if "8bitmime" not in extensions and not facts.isascii:
            self.content = Content.of(to_7bit(self.content.whole()))
            facts = self.content.facts()
        return facts

    async def _recipients(self, encoding: str) -> bool:
        """RCPT TO each recipient; True if any was accepted and the connection still stands."""
        accepted = False
        for i, rcpt in enumerate(self.recipients):
            if unsafe_address(rcpt):
                reply = unsafe_recipient(rcpt)
            else:
                reply = await self._command(RCPT, b"RCPT", b"TO:" + _path(rcpt, encoding))
            if status_of(reply) == SENT:
                accepted = True
                continue                        # pending until the end-of-DATA reply
            self.results[i] = RecipientResult(rcpt, status_of(reply), reply)
            if reply.code == 421:               # the server is closing: the rest must wait
                self._settle(reply)
                return False
        return accepted

    async def _data(self) -> Reply:
        conn, where = self.conn, DATA.where
        timeout = conn.timeout_s + self.content.size / MIN_UPLOAD_BYTES_PER_S
        try:
            sent, response = await conn.run(self._send_data(), timeout)
        except QueueFileChangedError as exc:    # before the final dot: the server discards it
            raise _Abandoned(_unreadable(exc)) from None
        except (SMTPResponseException, OSError) as exc:
            raise _Abandoned(self._no_usable_reply(DATA, exc)) from None
        if response.code < 400 and response.code != (250 if sent else 354):
            # Only a 250 ends DATA well; any other 2xx or 3xx reply to DATA itself (so
            # nothing was sent) or to the final dot makes no sense.
            raise _Abandoned(protocol_error(response.code, response.message, where, conn.secrets))
        conn.between_transactions = sent and is_valid_code(response.code) and response.code != 421
        return reply_for(response.code, response.message, where, conn.secrets)

    async def _send_data(self) -> tuple[bool, SMTPResponse]:
        """DATA, and on its 354 the encoded message; (message sent, the last reply). The same
        exchange as aiosmtplib's SMTP.data(), whose encoding data_bytes() and DataEncoder
        reproduce more cheaply; the transaction owns the connection, so nothing else writes
        in between."""
        protocol = self.conn.smtp.protocol
        if protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        start = await protocol.execute_command(b"DATA", timeout=None)
        if start.code != 354:
            return False, start
        if self.content.in_memory:
            protocol.write(data_bytes(self.content.head, self.crlf_only))
        else:
            await _stream(protocol, self.content)
        return True, await protocol.read_response(timeout=None)

    async def _command(self, step: Step, *args: bytes, timeout_s: float | None = None) -> Reply:
        response = await self._send(step, self.conn.smtp.execute_command(*args), timeout_s)
        reply = reply_for(response.code, response.message, step.where, self.conn.secrets)
        if not is_valid_code(response.code):
            raise _Abandoned(reply)
        return reply

    async def _send(self, step: Step, op: Awaitable[T], timeout_s: float | None = None) -> T:
        """Await the server's answer to `step`; without a usable one the connection is abandoned."""
        try:
            return await self.conn.run(op, timeout_s)
        except (SMTPResponseException, OSError) as exc:
            raise _Abandoned(self._no_usable_reply(step, exc)) from None

    def _no_usable_reply(self, step: Step, exc: BaseException) -> Reply:
        """A reply aiosmtplib could not read (malformed, oversized), a timeout, a lost connection."""
        if isinstance(exc, SMTPResponseException):      # before OSError: some are both
            return reply_for(exc.code, exc.message, step.where, self.conn.secrets)
        return failure_reply(exc, self.conn.relay, step.doing)


async def _stream(protocol, content: Content) -> None:
    """The message in chunks, each written once the transport has room for it: aiosmtplib's
    SMTPProtocol is asyncio's FlowControlMixin, whose _drain_helper() is what
    StreamWriter.drain() awaits (paused above the transport's high-water mark; raises once
    the connection is lost). tests/unit/test_smarthost_stream.py pins that it exists."""
    encoder = DataEncoder()
    for piece in content.pieces():
        protocol.write(encoder.feed(piece))
        await protocol._drain_helper()
    protocol.write(encoder.end())


def _unreadable(exc: OSError) -> Reply:
    """The queue file could not be read for sending: try again later (the queue manager
    verifies it again then)."""
    return Reply(451, "4.3.0", f"Error: queue file unreadable: {exc}")


def _path(address: str, encoding: str) -> bytes:
    return b"<" + address.encode(encoding) + b">"
