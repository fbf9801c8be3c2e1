"""Unit tests for mta_lite.smarthost.transaction: one Transaction driven by a scripted fake
aiosmtplib (no sockets)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

from aiosmtplib.errors import SMTPDataError, SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.response import SMTPResponse
from mta_lite.config.schema import Relay, Route, Secret
from mta_lite.reply import Reply
from mta_lite.smarthost import transaction as tx
from mta_lite.smarthost.connection import Connection
from mta_lite.smarthost.replies import status_of
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT

RELAY = "smtp.isp.example[192.0.2.1]:587"
PASSWORD = "hunter2-Secret"
EXT = {"size": "10240000", "8bitmime": "", "pipelining": ""}


# ---------------------------------------------------------------- one transaction, scripted

class FakeProtocol:
    """Stands in for aiosmtplib's SMTPProtocol for DATA: an SMTPDataError outcome is the reply
    to DATA itself (no 354); anything else is the outcome of the final dot."""

    def __init__(self, smtp: FakeSMTP) -> None:
        self.smtp = smtp

    async def execute_command(self, *args: bytes, timeout: float | None = None) -> SMTPResponse:
        self.smtp.sent.append(b" ".join(args))
        outcome = self.smtp.data_outcome
        if isinstance(outcome, SMTPDataError):
            return SMTPResponse(outcome.code, outcome.message)
        return SMTPResponse(354, "go ahead")

    def write(self, data: bytes) -> None:
        self.smtp.wire += data

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        outcome = self.smtp.data_outcome
        if isinstance(outcome, BaseException):
            self.smtp.is_connected = False      # timeouts and disconnects close, as aiosmtplib does
            raise outcome
        return SMTPResponse(*outcome)


class FakeSMTP:
    """Stands in for aiosmtplib.SMTP: scripted replies per verb, records what was sent."""

    def __init__(self, script: dict[bytes, list] | None = None, data=(250, "2.0.0 Ok: queued as X"),
                 extensions: dict[str, str] | None = None) -> None:
        self.script, self.data_outcome = script or {}, data
        self.esmtp_extensions = EXT if extensions is None else extensions
        self.sent: list[bytes] = []
        self.wire = b""                         # what went out after the 354
        self.is_connected = True

    async def execute_command(self, *args: bytes) -> SMTPResponse:
        self.sent.append(b" ".join(args))
        outcome = self.script.get(args[0], []).pop(0) if self.script.get(args[0]) else (250, "2.0.0 Ok")
        if isinstance(outcome, BaseException):
            self.is_connected = False
            raise outcome
        if outcome[0] == 421:
            self.is_connected = False       # as aiosmtplib does
        return SMTPResponse(*outcome)

    @property
    def protocol(self) -> FakeProtocol | None:
        return FakeProtocol(self) if self.is_connected else None

    def close(self) -> None:
        self.is_connected = False


class RecordingConnection(Connection):
    """The real Connection, noting the deadline of every step it runs."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.timeouts: list[float | None] = []

    async def run(self, step, timeout_s=None):
        self.timeouts.append(timeout_s)
        return await super().run(step, timeout_s)


def transact(smtp: FakeSMTP, recipients: list[str], content: bytes = b"Subject: x\r\n\r\nx\r\n"):
    route = Route(Relay(name="isp", host="smtp.isp.example", timeout_s=10.0), "alice", Secret(PASSWORD))
    conn = RecordingConnection(smtp, route, RELAY)
    result = asyncio.run(tx.Transaction(conn, "a@lan.test", recipients, content, False).run())
    return result, conn


def verbs(smtp: FakeSMTP) -> list[bytes]:
    return [line.split(b" ")[0] for line in smtp.sent]


def test_transaction_all_accepted_all_sent():
    smtp = FakeSMTP()
    result, conn = transact(smtp, ["b@x.org", "c@x.org"])
    assert [r.status for r in result.recipients] == [SENT, SENT]
    assert verbs(smtp) == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]
    assert smtp.sent[0] == b"MAIL FROM:<a@lan.test> SIZE=17"
    assert smtp.wire == b"Subject: x\r\n\r\nx\r\n.\r\n"
    assert conn.alive and result.relay == RELAY


def test_transaction_data_is_dot_stuffed_and_ends_with_the_final_dot():
    smtp = FakeSMTP()
    result, _ = transact(smtp, ["b@x.org"], b".first\r\nmid\r\n.\r\n..x")
    assert [r.status for r in result.recipients] == [SENT]
    assert smtp.wire == b"..first\r\nmid\r\n..\r\n...x\r\n.\r\n"


def test_transaction_2xx_other_than_250_after_the_dot_is_not_a_delivery():
    smtp = FakeSMTP(data=(251, "2.0.0 odd"))
    result, conn = transact(smtp, ["b@x.org"])
    assert [r.status for r in result.recipients] == [DEFER] and not conn.alive


def test_transaction_no_recipient_accepted_sends_rset_not_data():
    smtp = FakeSMTP({b"RCPT": [(550, "5.1.1 no"), (450, "4.2.0 later")]})
    result, conn = transact(smtp, ["b@x.org", "c@x.org"])
    assert [r.status for r in result.recipients] == [BOUNCE, DEFER]
    assert verbs(smtp) == [b"MAIL", b"RCPT", b"RCPT", b"RSET"]
    assert conn.alive


def test_transaction_421_at_rcpt_defers_everyone_still_pending():
    smtp = FakeSMTP({b"RCPT": [(250, "ok"), (421, "4.3.2 shutting down"), (250, "ok")]})
    result, conn = transact(smtp, ["b@x.org", "c@x.org", "d@x.org"])
    assert [r.status for r in result.recipients] == [DEFER, DEFER, DEFER]
    assert all(r.reply.code == 421 for r in result.recipients)
    assert verbs(smtp) == [b"MAIL", b"RCPT", b"RCPT"] and not conn.alive


@pytest.mark.parametrize("verb, where", [(b"MAIL", "in reply to MAIL FROM command"),
                                          (b"RCPT", "in reply to RCPT TO command")])
def test_transaction_unreadable_reply_is_worded_for_the_command_it_answered(verb, where):
    """A reply aiosmtplib cannot parse, during the transaction, names that command (it used
    to say "in reply to AUTH command", the end of the handshake)."""
    smtp = FakeSMTP({verb: [SMTPResponseException(-1, "Malformed SMTP response line: b'2x0 ok'")]})
    result, conn = transact(smtp, ["b@x.org"])
    assert [r.status for r in result.recipients] == [DEFER] and not conn.alive
    assert where in result.recipients[0].reply.text and "AUTH" not in result.recipients[0].reply.text


def test_transaction_3xx_at_rcpt_is_a_protocol_error_never_sent():
    smtp = FakeSMTP({b"RCPT": [(354, "go ahead")]})
    result, conn = transact(smtp, ["b@x.org"])
    assert [r.status for r in result.recipients] == [DEFER]
    assert result.recipients[0].reply.enhanced == "4.5.0"
    assert b"DATA" not in smtp.sent and not conn.alive


def test_transaction_250_instead_of_354_is_not_a_delivery():
    smtp = FakeSMTP(data=SMTPDataError(250, "2.0.0 Ok"))   # the reply to DATA itself: no 354
    result, conn = transact(smtp, ["b@x.org"])
    assert [r.status for r in result.recipients] == [DEFER] and not conn.alive


def test_transaction_unsafe_recipient_bounces_without_going_on_the_wire():
    smtp = FakeSMTP()
    result, _ = transact(smtp, ["bad>@x.org", "b@x.org"])
    assert [r.status for r in result.recipients] == [BOUNCE, SENT]
    assert result.recipients[0].reply.enhanced == "5.1.3"
    assert not any(b"bad" in line for line in smtp.sent)


def test_transaction_data_timeout_grows_with_the_message():
    content = b"x" * 100_000 + b"\r\n"
    _, conn = transact(FakeSMTP(), ["b@x.org"], content)
    assert conn.timeouts == [None, None, pytest.approx(10.0 + len(content) / tx.MIN_UPLOAD_BYTES_PER_S)]


_RCPT = st.sampled_from([(250, "ok"), (251, "ok"), (450, "4.2.0 busy"), (452, "4.5.3 many"),
                         (550, "5.1.1 unknown"), (553, "5.1.3 bad")])
_DATA = st.sampled_from([(250, "2.0.0 ok"), (451, "4.3.0 later"), (552, "5.3.4 big"), (554, "5.6.0 no"),
                         SMTPReadTimeoutError("timed out"), SMTPServerDisconnected("Connection lost")])


@settings(max_examples=150, deadline=None)
@given(st.lists(_RCPT, min_size=1, max_size=5), _DATA)
def test_transaction_bounces_only_on_a_5xx_and_unknown_outcomes_defer(rcpt_replies, data):
    smtp = FakeSMTP({b"RCPT": list(rcpt_replies)}, data=data)
    recipients = [f"r{i}@x.org" for i in range(len(rcpt_replies))]
    result, _ = transact(smtp, recipients)
    assert [r.recipient for r in result.recipients] == recipients
    for (code, _text), outcome in zip(rcpt_replies, result.recipients):
        if code >= 500:
            assert outcome.status == BOUNCE and outcome.reply.code == code
        elif code >= 400:
            assert outcome.status == DEFER
        elif isinstance(data, BaseException):
            assert outcome.status == DEFER and "may be sent more than once" in outcome.reply.text
        else:
            assert outcome.status == status_of(Reply(data[0])) and outcome.reply.code == data[0]
