"""DATA from the queue file in chunks: the encoder, the facts, the file checks, flow control.

esmtp.DataEncoder must put on the wire exactly what esmtp.data_bytes() (pinned to aiosmtplib
in test_smarthost_aiosmtplib.py) does, whatever the chunk boundaries; esmtp.Scan must find
the same SIZE=/8BITMIME/SMTPUTF8 facts; smarthost.content.Content and qmgr.outbound must
refuse a queue file that changed after it was verified; and the stream must wait for the
transport to drain, so a big message never sits whole in the send buffer.
Peers: a loopback TCP server that reads only when told (flow control), otherwise none.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from hypothesis import given, settings, strategies as st

from aiosmtplib.protocol import SMTPProtocol
from mta_lite.config.schema import Relay, Route, Secret
from mta_lite.envelope import Envelope
from mta_lite.errors import QueueFileChangedError
from mta_lite.identity import Identity, Rewrite
from mta_lite.qmgr import outbound
from mta_lite.qmgr.resolve import Outgoing
from mta_lite.qmgr.rewrite import rewrite_message
from mta_lite.queue import Spool
from mta_lite.smarthost import transaction as tx
from mta_lite.smarthost.content import Content
from mta_lite.smarthost.esmtp import DataEncoder, Scan, data_bytes, facts_of
from mta_lite.smarthost.result import DEFER
from tests.support.bigmsg import big_message
from tests.unit.test_smarthost_transaction import FakeProtocol, FakeSMTP, RecordingConnection

ROUTE = Route(Relay(name="sink", host="127.0.0.1", timeout_s=10.0), "sink", Secret(""))


def encoded(content: bytes, size: int) -> bytes:
    encoder = DataEncoder()
    out = [encoder.feed(content[i:i + size]) for i in range(0, len(content), size)]
    return b"".join(out) + encoder.end()


def scanned(content: bytes, size: int):
    scan = Scan()
    for i in range(0, len(content), size):
        scan.feed(content[i:i + size])
    return scan.facts()


_pieces = st.sampled_from([b"a", b"\xc3\xa9", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n\r\n",
                           b"\n.", b"\r.", b"Subject: x", b"x" * 70])
_messy = st.lists(_pieces, max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_messy, st.binary(max_size=120)))
def test_chunked_encoder_equals_data_bytes_for_every_chunk_size(content):
    whole = data_bytes(content)
    assert data_bytes(content, facts_of(content).crlf_only) == whole    # the facts' hint changes nothing
    for size in range(1, len(content) + 2):
        assert encoded(content, size) == whole, size


@settings(max_examples=300, deadline=None)
@given(st.one_of(_messy, st.binary(max_size=120)))
def test_scan_in_chunks_finds_the_facts_of_the_whole_message(content):
    facts = facts_of(content)
    for size in range(1, len(content) + 2):
        assert scanned(content, size) == facts, size


@pytest.mark.parametrize("chunks, wire", [
    ([b"a\r", b"\nb\r\n"], b"a\r\nb\r\n.\r\n"),                 # CR | LF: one line end, not two
    ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),              # CRLF | "." starts a line
    ([b"a\r", b"\n.b\r\n"], b"a\r\n..b\r\n.\r\n"),              # CR | LF "."
    ([b".", b"\r\n"], b"..\r\n.\r\n"),                           # the first byte is a dot
    ([b"a\r", b"b"], b"a\r\nb\r\n.\r\n"),                        # a bare CR at the end of a chunk
    ([b"a\r"], b"a\r\n.\r\n"),                                   # ... and at the end of the message
    ([b"a\n", b".\n"], b"a\r\n..\r\n.\r\n"),                     # bare LFs, a dot line after one
    ([b"x.", b"y\r\n"], b"x.y\r\n.\r\n"),                        # a dot inside a line is not stuffed
    ([], b"\r\n.\r\n"),                                          # empty: one empty line, as aiosmtplib
])
def test_encoder_boundaries(chunks, wire):
    encoder = DataEncoder()
    assert b"".join(encoder.feed(c) for c in chunks) + encoder.end() == wire == data_bytes(b"".join(chunks))


def test_scan_finds_8bit_headers_only_before_the_blank_line():
    body_8bit = b"Subject: x\r\n\r\nd\xc3\xa9j\xc3\xa0\r\n"
    head_8bit = b"Subject: d\xc3\xa9j\xc3\xa0\r\n\r\nx\r\n"
    for content, headers_ascii in ((body_8bit, True), (head_8bit, False)):
        for size in (1, 2, 3, 13, 14, 15):
            facts = scanned(content, size)
            assert (facts.isascii, facts.headers_ascii) == (False, headers_ascii)


# ---------------------------------------------------------------- the queue file

def _queued(tmp_path, content: bytes):
    spool = Spool(str(tmp_path / "spool")).ensure()
    writer = spool.begin(Envelope("scanner@lan.test", ["bob@remote.example"], "127.0.0.1", "scanner"))
    writer.write(content)
    return spool.read("incoming", writer.commit())


def test_small_message_is_read_at_once_big_one_stays_in_the_file(tmp_path):
    out = Outgoing("scanner@lan.test", ROUTE)
    small, big = b"Subject: s\r\n\r\nhi\r\n", big_message(outbound.FAST_PATH_BYTES + 100_000)
    with open((entry := _queued(tmp_path / "a", small)).path, "rb") as handle:
        content = outbound.content_for(handle, entry, out)
        assert content.in_memory and content.head == small
    with open((entry := _queued(tmp_path / "b", big)).path, "rb") as handle:
        content = outbound.content_for(handle, entry, out)
        assert not content.in_memory and content.head == b"" and content.size == len(big)
        assert max(len(piece) for piece in content.pieces()) <= 64 * 1024
        assert content.whole() == big and content.facts() == facts_of(big)


@pytest.mark.parametrize("with_from", [True, False])
def test_big_message_with_a_rewrite_reads_only_its_header_section_again(tmp_path, with_from):
    identity = Identity("office@example.com", "Office")
    out = Outgoing("office@example.com", ROUTE, Rewrite(identity, "scanner"))
    big = big_message(2 * outbound.FAST_PATH_BYTES)
    if not with_from:
        big = big.split(b"\r\n", 1)[1]
    entry = _queued(tmp_path, big)
    with open(entry.path, "rb") as handle:
        content = outbound.content_for(handle, entry, out)
        assert not content.in_memory and len(content.head) < 1024        # the header section only
        assert content.whole() == rewrite_message(big, identity) != big
        assert b"From: Office <office@example.com>\r\n" in content.head


def test_a_header_section_longer_than_head_bytes_is_rewritten_whole(tmp_path):
    identity = Identity("office@example.com")
    out = Outgoing("office@example.com", ROUTE, Rewrite(identity, "scanner"))
    big = b"".join(b"X-Long: %d\r\n" % i for i in range(10_000)) + big_message(outbound.FAST_PATH_BYTES)
    entry = _queued(tmp_path, big)
    with open(entry.path, "rb") as handle:
        content = outbound.content_for(handle, entry, out)
        assert content.in_memory and content.whole() == rewrite_message(big, identity)


def test_a_queue_file_that_changed_after_verification_is_refused(tmp_path):
    out = Outgoing("scanner@lan.test", ROUTE)
    entry = _queued(tmp_path, big_message(outbound.FAST_PATH_BYTES + 1000))
    with open(entry.path, "ab") as grow:
        grow.write(b"more")
    with open(entry.path, "rb") as handle, pytest.raises(QueueFileChangedError, match="changed since it was verified"):
        outbound.content_for(handle, entry, out)


def test_content_stops_when_the_file_shrinks_while_it_is_sent(tmp_path):
    big = big_message(outbound.FAST_PATH_BYTES + 200_000)
    entry = _queued(tmp_path, big)
    with open(entry.path, "rb") as handle:
        content = outbound.content_for(handle, entry, Outgoing("scanner@lan.test", ROUTE))
        pieces = content.pieces()
        next(pieces)
        os.truncate(entry.path, entry.content_offset + 100_000)
        with pytest.raises(QueueFileChangedError):
            list(pieces)
        with pytest.raises(QueueFileChangedError):
            content.facts()


# ---------------------------------------------------------------- flow control

def test_aiosmtplib_protocol_has_the_drain_the_stream_awaits():
    assert callable(getattr(SMTPProtocol, "_drain_helper", None))
    assert SMTPProtocol.pause_writing is not asyncio.Protocol.pause_writing


def test_stream_waits_for_the_peer_and_sends_exactly_data_bytes(tmp_path):
    """A peer that does not read: the stream must stop with little buffered, not queue the
    whole message in the transport; once the peer reads, it gets data_bytes() exactly."""
    big = big_message(8 * 1024 * 1024)
    entry = _queued(tmp_path, big)

    async def run() -> tuple[int, bool, bytes]:
        reading, finished = asyncio.Event(), asyncio.Event()
        received = bytearray()

        async def peer(reader, writer):
            await reading.wait()
            while chunk := await reader.read(1 << 20):
                received.extend(chunk)
            writer.close()
            finished.set()

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)     # no autotuning
        listener.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(peer, sock=listener)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(lambda: SMTPProtocol(loop=loop),
                                                           *listener.getsockname())
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        with open(entry.path, "rb") as handle:
            content = outbound.content_for(handle, entry, Outgoing("scanner@lan.test", ROUTE))
            task = asyncio.create_task(tx._stream(protocol, content))
            await asyncio.sleep(1.0)
            buffered, waiting = transport.get_write_buffer_size(), not task.done()
            reading.set()
            await task
        transport.close()                       # after what is buffered: the peer reads to EOF
        await asyncio.wait_for(finished.wait(), 60)
        server.close()
        await server.wait_closed()
        return buffered, waiting, bytes(received)

    buffered, waiting, received = asyncio.run(run())
    assert waiting, "the whole message went into the send buffer without waiting for the peer"
    assert buffered < 1024 * 1024
    assert received == data_bytes(big)


# ---------------------------------------------------------------- the transaction

def _transact(smtp, content: Content):
    conn = RecordingConnection(smtp, ROUTE, "127.0.0.1[127.0.0.1]:25")
    result = asyncio.run(tx.Transaction(conn, "scanner@lan.test", ["bob@remote.example"], content, False).run())
    return result, conn


def test_a_file_changed_before_mail_from_defers_and_sends_nothing(tmp_path):
    entry = _queued(tmp_path, big_message(outbound.FAST_PATH_BYTES + 1000))
    with open(entry.path, "rb") as handle:
        content = outbound.content_for(handle, entry, Outgoing("scanner@lan.test", ROUTE))
        os.truncate(entry.path, entry.content_offset + 10)
        smtp = FakeSMTP()
        result, conn = _transact(smtp, content)
    reply = result.recipients[0].reply
    assert result.recipients[0].status == DEFER and (reply.code, reply.enhanced) == (451, "4.3.0")
    assert "changed since it was verified" in reply.text
    assert smtp.sent == [] and conn.alive


class _TruncatingSMTP(FakeSMTP):
    """Truncates the queue file when DATA is sent: the content changes under the stream."""

    def __init__(self, path: str, keep: int) -> None:
        super().__init__()
        self.path, self.keep = path, keep

    @property
    def protocol(self):
        smtp = self

        class Protocol(FakeProtocol):
            async def execute_command(self, *args, timeout=None):
                os.truncate(smtp.path, smtp.keep)
                return await super().execute_command(*args, timeout=timeout)

            async def _drain_helper(self):
                return None
        return Protocol(self) if self.is_connected else None


def test_a_file_changed_during_data_aborts_before_the_final_dot(tmp_path):
    entry = _queued(tmp_path, big_message(outbound.FAST_PATH_BYTES + 1000))
    with open(entry.path, "rb") as handle:
        content = outbound.content_for(handle, entry, Outgoing("scanner@lan.test", ROUTE))
        smtp = _TruncatingSMTP(entry.path, entry.content_offset + 10)
        result, conn = _transact(smtp, content)
    reply = result.recipients[0].reply
    assert result.recipients[0].status == DEFER and reply.code == 451 and "queue file" in reply.text
    assert not smtp.wire.endswith(b"\r\n.\r\n") and not conn.alive
