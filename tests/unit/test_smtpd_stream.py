"""SmtpStream's timeouts on a real loopback TCP connection: a read that has to wait and a
drain to a client that does not read end in TimeoutError; input already there is read and
replies that fit the socket are sent without waiting for anything."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mta_lite.reply import Reply
from mta_lite.smtpd.stream import SmtpStream

TIMEOUT_S = 0.3


async def _pair():
    """(SmtpStream of the server side, the client's raw socket)."""
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname()[:2])
    client.setblocking(False)
    reader, writer = await accepted
    server.close()
    return SmtpStream(reader, writer, TIMEOUT_S), client


def test_pipelined_lines_are_read_and_replies_sent():
    async def main():
        stream, client = await _pair()
        client.sendall(b"NOOP\r\nRSET\r\n")
        lines = [await stream.read_line(), await stream.read_line()]
        stream.queue(Reply(250, "2.0.0 Ok"))
        await stream.flush()
        await asyncio.sleep(0.05)
        sent = client.recv(100)
        client.close()
        return lines, sent
    lines, sent = asyncio.run(main())
    assert lines == [(b"NOOP\r\n", False), (b"RSET\r\n", False)]
    assert sent == b"250 2.0.0 Ok\r\n"


def test_a_silent_client_times_out_the_read():
    async def main():
        stream, client = await _pair()
        try:
            with pytest.raises(TimeoutError):
                await stream.read_line()
        finally:
            client.close()
    asyncio.run(main())


def test_a_client_that_does_not_read_times_out_the_drain():
    async def main():
        stream, client = await _pair()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            with pytest.raises(TimeoutError):
                for _ in range(10_000):         # far more than the socket buffers hold
                    stream.queue(Reply(250, "2.0.0 " + "x" * 1000))
                    await stream.flush()
        finally:
            client.close()
    asyncio.run(main())
