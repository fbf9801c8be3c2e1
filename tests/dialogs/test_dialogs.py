"""Dialog tests: SMTP transcripts (tests/dialogs/*.txt) against a real Listener on 127.0.0.1:0.

Transcript syntax, one item per line (blank lines and `#` comments are ignored):
  @set KEY VALUE    before the first exchange: mynetworks (comma list), message_size_limit,
                    recipient_limit, hard_error_limit, timeout_s, max_connections,
                    free (bytes the fake spool reports), spool_fail (begin|write|commit|crash),
                    tls (on: STARTTLS with a trustme certificate), tls_min_version (TLSv1, ...),
                    bare_newline (normalize, the default, or reject: the listener's S2 mode)
  -> BYTES          send BYTES in one write; escapes like \\r\\n \\x00 are decoded
  ->xN BYTES        send BYTES repeated N times in one write
  <- PREFIX         read one reply line; it must start with PREFIX
  <* PREFIX         read a whole multi-line reply; its last line must start with PREFIX
  @starttls         do the client side of the TLS handshake
  @closed           the server must close the connection (EOF, no more bytes)
  @queued N         exactly N messages were committed to the spool
  @contains BYTES   the last committed message contains BYTES (escapes decoded)
  @recipients A,B   the last committed message has exactly these recipients
  @crlf_only        the last committed message has no bare LF, bare CR or NUL (S2)
  @log TEXT         a line logged by mta_lite.smtpd contains TEXT (awaited, with a timeout)
After every transcript: the listener still greets a new client, and no tmp file is left.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import re
import smtplib
import ssl
from pathlib import Path

import pytest
import trustme

from mta_lite.config.schema import Listen
from mta_lite.smtpd.dotreader import MAX_DATA_LINE_BYTES
from mta_lite.smtpd.listener import Listener
from mta_lite.smtpd.stream import READ_CHUNK_BYTES, SmtpStream

from tests.support.dialogs import ADMIN, HOSTNAME, FakeSpool, make_config

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
DIALOGS = sorted(Path(__file__).parent.glob("*.txt"))
READ_TIMEOUT_S = 5.0
# A message with these needs nothing added (headers.py): it is queued exactly as sent.
COMPLETE_HEADERS = b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <t@pc.lan>\r\nFrom: a@example.com\r\n"
SMTPD_SETTINGS = {"recipient_limit", "hard_error_limit", "timeout_s", "max_connections",
                  "max_connections_per_client", "session_limit_s"}


def unescape(text: str) -> bytes:
    return codecs.escape_decode(text.encode("utf-8"))[0]


@pytest.fixture(scope="session")
def tls_setup(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    base = tmp_path_factory.mktemp("tls")
    cert_path, key_path = base / "cert.pem", base / "key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return str(cert_path), str(key_path), client


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.logged = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.logged.set()

    async def wait_for(self, text: str) -> None:
        """Await a log line containing `text` (some are written after the socket closed)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                while not any(text in line for line in self.lines):
                    self.logged.clear()
                    await self.logged.wait()
        except TimeoutError:
            raise AssertionError(f"no log line contains {text!r}: {self.lines}") from None

    def __enter__(self) -> "LogCapture":
        logger = logging.getLogger("mta_lite.smtpd")
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("mta_lite.smtpd")
        logger.removeHandler(self)
        logger.setLevel(self._level)


def build(tmp_path: Path, settings: dict[str, str], tls_setup, **hooks) -> tuple[Listener, FakeSpool]:
    spool = FakeSpool(tmp_path / "spool", free=int(settings.get("free", 10**12)),
                      fail=settings.get("spool_fail", ""))
    bare_newline = settings.get("bare_newline", "normalize")
    listen = Listen("127.0.0.1", 0, bare_newline=bare_newline)
    if settings.get("tls") == "on":
        listen = Listen("127.0.0.1", 0, tls_cert=tls_setup[0], tls_key=tls_setup[1], bare_newline=bare_newline,
                        tls_min_version=settings.get("tls_min_version", "TLSv1.2"))
    smtpd = {k: (float(v) if k.endswith("_s") else int(v)) for k, v in settings.items() if k in SMTPD_SETTINGS}
    cfg = make_config(tmp_path, mynetworks=tuple(settings.get("mynetworks", "127.0.0.0/8").split(",")),
                      message_size_limit=int(settings.get("message_size_limit", 10_240_000)),
                      listen=listen, **smtpd)
    rings = hooks.pop("ring", lambda: None)
    return Listener(cfg, listen, spool, rings, clock=lambda: 1_700_000_000.0, **hooks), spool


async def read_line(reader: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
    return line.decode("utf-8", "replace")


class Dialog:
    def __init__(self, path: Path, tmp_path: Path, tls_setup) -> None:
        self.path, self.tmp_path, self.tls_setup = path, tmp_path, tls_setup
        self.settings: dict[str, str] = {}
        self.steps: list[tuple[int, str, str]] = []
        for number, raw in enumerate(path.read_text().splitlines(), 1):
            if not raw.strip() or raw.startswith("#"):
                continue
            op, _, arg = raw.partition(" ")
            if op == "@set":
                key, _, value = arg.partition(" ")
                self.settings[key] = value
            else:
                self.steps.append((number, op, arg))

    # Hooks for the dialog families (postscreen, submission): how to build the listener,
    # how to connect, and how to show the listener still serves after the transcript.
    def build_listener(self):
        return build(self.tmp_path, self.settings, self.tls_setup)

    async def connect(self, listener):
        return await asyncio.open_connection(*listener.address)

    async def still_up(self, listener) -> None:
        await greets(listener)

    async def run(self, log: LogCapture) -> None:
        listener, spool = self.build_listener()
        self.spool, self.log = spool, log
        await listener.start()
        self.reader, self.writer = await self.connect(listener)
        try:
            for number, op, arg in self.steps:
                try:
                    await self.step(op, arg)
                except AssertionError as exc:
                    raise AssertionError(f"{self.path.name}:{number}: {op} {arg}: {exc}") from None
            self.writer.close()
            await self.still_up(listener)
        finally:
            await listener.close(grace_s=READ_TIMEOUT_S)
        assert spool.tmp_files() == [], f"{self.path.name}: tmp files left behind"

    async def step(self, op: str, arg: str) -> None:
        if op == "->":
            self.writer.write(unescape(arg))
            await self.writer.drain()
        elif op.startswith("->x"):
            self.writer.write(unescape(arg) * int(op[3:]))
            await self.writer.drain()
        elif op == "<-":
            line = await read_line(self.reader)
            assert line.startswith(arg), f"got {line!r}"
        elif op == "<*":
            line = await read_line(self.reader)
            while line[3:4] == "-":
                line = await read_line(self.reader)
            assert line.startswith(arg), f"got {line!r}"
        else:
            await self.check(op, arg)

    async def check(self, op: str, arg: str) -> None:
        if op == "@starttls":
            await self.writer.start_tls(self.tls_setup[2], server_hostname=HOSTNAME)
        elif op == "@closed":
            rest = await asyncio.wait_for(self.reader.read(), READ_TIMEOUT_S)
            assert rest == b"", f"expected EOF, got {rest!r}"
        elif op == "@queued":
            assert len(self.spool.stored) == int(arg), f"{len(self.spool.stored)} queued"
        elif op == "@contains":
            assert unescape(arg) in self.spool.stored[-1].content, self.spool.stored[-1].content[:500]
        elif op == "@recipients":
            assert self.spool.stored[-1].envelope.recipients == arg.split(",")
        elif op == "@crlf_only":
            content = self.spool.stored[-1].content
            assert not BARE.search(content) and b"\0" not in content, content[:500]
        elif op == "@log":
            await self.log.wait_for(arg)
        else:
            raise AssertionError(f"unknown transcript operation {op!r}")


async def greets(listener: Listener) -> None:
    """The listener is still alive: a new client gets the banner."""
    reader, writer = await asyncio.open_connection(*listener.address)
    try:
        assert (await read_line(reader)).startswith(f"220 {HOSTNAME} ESMTP")
    finally:
        writer.close()


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog_transcript_replies_as_written(path: Path, tmp_path: Path, tls_setup) -> None:
    with LogCapture() as log:
        asyncio.run(Dialog(path, tmp_path, tls_setup).run(log))


def test_dialog_directory_has_transcripts() -> None:
    assert len(DIALOGS) >= 20


# ---------------------------------------------------------------- listener behaviour

async def connect(listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection(*listener.address)
    return reader, writer, await read_line(reader)


async def send_mail(reader, writer, body: bytes = b"Subject: t\r\n\r\nhi\r\n") -> str:
    writer.write(b"EHLO c\r\n")
    while (await read_line(reader))[3:4] == "-":
        pass
    writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    for _ in range(3):
        await read_line(reader)
    writer.write(body + b".\r\n")
    return await read_line(reader)


def test_listener_max_connections_reached_replies_421_ports_busy(tmp_path, tls_setup):
    async def main():
        listener, _ = build(tmp_path, {"max_connections": "1"}, tls_setup)
        await listener.start()
        try:
            first = await connect(listener)
            second = await connect(listener)
            assert first[2].startswith("220 ")
            assert second[2].startswith("421 4.3.2 All server ports are busy")
            assert await asyncio.wait_for(second[0].read(), READ_TIMEOUT_S) == b""
            assert listener.snapshot()["refused"] == 1
        finally:
            await listener.close(grace_s=1)
    with LogCapture() as log:
        asyncio.run(main())
    assert any("all server ports busy" in line for line in log.lines)


def test_listener_per_client_limit_reached_replies_421_too_many_connections(tmp_path, tls_setup):
    async def main():
        # A client outside mynetworks: the LAN is exempt, as with Postfix's default.
        listener, _ = build(tmp_path, {"max_connections_per_client": "2", "mynetworks": "10.0.0.0/8"}, tls_setup)
        await listener.start()
        try:
            clients = [await connect(listener) for _ in range(3)]   # held open: all three
            replies = [greeting for _, _, greeting in clients]
            assert [r[:4] for r in replies] == ["220 ", "220 ", "421 "]
            assert replies[2].startswith("421 4.7.0 Error: too many connections")
        finally:
            await listener.close(grace_s=1)
    asyncio.run(main())


def test_listener_per_client_limit_exempts_mynetworks(tmp_path, tls_setup):
    async def main():
        listener, _ = build(tmp_path, {"max_connections_per_client": "2"}, tls_setup)
        await listener.start()
        try:
            clients = [await connect(listener) for _ in range(4)]
            assert [greeting[:4] for _, _, greeting in clients] == ["220 "] * 4
        finally:
            await listener.close(grace_s=1)
    asyncio.run(main())


def test_listener_close_with_idle_session_replies_421_shutdown(tmp_path, tls_setup):
    async def main():
        listener, _ = build(tmp_path, {}, tls_setup)
        await listener.start()
        address = listener.address
        reader, writer, _ = await connect(listener)
        await listener.close(grace_s=1)
        assert (await read_line(reader)).startswith(f"421 4.3.0 {HOSTNAME}")
        assert await asyncio.wait_for(reader.read(), READ_TIMEOUT_S) == b""
        with pytest.raises(OSError):
            await asyncio.open_connection(*address)
    asyncio.run(main())


def test_listener_close_during_data_lets_message_finish(tmp_path, tls_setup):
    async def main():
        listener, spool = build(tmp_path, {}, tls_setup)
        await listener.start()
        reader, writer, _ = await connect(listener)
        writer.write(b"EHLO c\r\n")
        while (await read_line(reader))[3:4] == "-":
            pass
        writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        replies = [await read_line(reader) for _ in range(3)]
        assert replies[2].startswith("354")
        closing = asyncio.create_task(listener.close(grace_s=READ_TIMEOUT_S))
        await asyncio.sleep(0)                 # a yield, not a wait: close() starts
        writer.write(b"Subject: t\r\n\r\nfinished after SIGTERM\r\n.\r\n")
        assert (await read_line(reader)).startswith("250 2.0.0 Ok: queued as")
        assert (await read_line(reader)).startswith("421 4.3.0")
        await closing
        assert len(spool.stored) == 1 and spool.tmp_files() == []
    asyncio.run(main())


def test_listener_unexpected_exception_replies_451_and_keeps_serving(tmp_path, tls_setup):
    async def main():
        listener, _ = build(tmp_path, {"spool_fail": "crash"}, tls_setup)
        await listener.start()
        try:
            reader, writer, _ = await connect(listener)
            writer.write(b"EHLO c\r\n")
            while (await read_line(reader))[3:4] == "-":
                pass
            writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
            replies = [await read_line(reader) for _ in range(3)]
            assert replies[2] == "451 4.3.0 Error: internal error, please try again later\r\n"
            assert await asyncio.wait_for(reader.read(), READ_TIMEOUT_S) == b""
            await greets(listener)
            assert listener.snapshot()["errors"] == 1
        finally:
            await listener.close(grace_s=1)
    with LogCapture() as log:
        asyncio.run(main())
    assert any(line.startswith("session 1: unexpected error") for line in log.lines)


def test_listener_large_message_is_streamed_in_chunks(tmp_path, tls_setup):
    body = COMPLETE_HEADERS + b"Subject: big\r\n\r\n" + b"".join(b"%08d" % i + b"x" * 70 + b"\r\n" for i in range(40_000))

    async def main():
        listener, spool = build(tmp_path, {}, tls_setup)
        await listener.start()
        try:
            reader, writer, _ = await connect(listener)
            assert (await send_mail(reader, writer, body)).startswith("250 ")
        finally:
            await listener.close(grace_s=1)
        return spool
    spool = asyncio.run(main())
    assert len(body) > 3_000_000
    assert spool.stored[0].content.endswith(body)
    # Never the whole message: at most one socket read plus one carried-over partial line.
    assert spool.largest_write <= READ_CHUNK_BYTES + MAX_DATA_LINE_BYTES


def test_listener_ring_runs_after_commit_and_its_failure_is_harmless(tmp_path, tls_setup):
    seen: list[int] = []

    async def main():
        def ring():
            seen.append(len(spool.stored))
            raise RuntimeError("qmgr gone")
        listener, spool = build(tmp_path, {}, tls_setup, ring=ring)
        await listener.start()
        try:
            reader, writer, _ = await connect(listener)
            assert (await send_mail(reader, writer)).startswith("250 2.0.0 Ok: queued as")
            writer.write(b"QUIT\r\n")
            assert (await read_line(reader)).startswith("221 ")
        finally:
            await listener.close(grace_s=1)
        return listener
    listener = asyncio.run(main())
    assert seen == [1]
    assert listener.snapshot()["accepted"] == 1


@pytest.mark.parametrize("admit", [True, False])
def test_listener_pre_greet_decides_whether_banner_is_sent(tmp_path, tls_setup, admit):
    calls: list[str] = []

    async def pre_greet(stream, ip):
        calls.append(ip)
        return admit

    async def main():
        listener, _ = build(tmp_path, {}, tls_setup, pre_greet=pre_greet)
        await listener.start()
        try:
            reader, writer = await asyncio.open_connection(*listener.address)
            data = await asyncio.wait_for(reader.read(), READ_TIMEOUT_S) if not admit else await read_line(reader)
        finally:
            await listener.close(grace_s=1)
        return data
    data = asyncio.run(main())
    assert calls == ["127.0.0.1"]
    assert (data.startswith("220 ") if admit else data == b"")


def test_listener_smtplib_client_relays_message(tmp_path, tls_setup):
    """A real client (stdlib smtplib, with STARTTLS) end to end."""
    def client(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="pc.lan", timeout=READ_TIMEOUT_S) as smtp:
            smtp.starttls(context=tls_setup[2])
            smtp.ehlo("pc.lan")
            smtp.sendmail("cron@pc.lan", ["root", "x@example.org"], COMPLETE_HEADERS + b"Subject: t\r\n\r\n.dot\r\n")

    async def main():
        listener, spool = build(tmp_path, {"tls": "on"}, tls_setup)
        await listener.start()
        try:
            await asyncio.to_thread(client, listener.address[1])
        finally:
            await listener.close(grace_s=1)
        return spool
    spool = asyncio.run(main())
    stored = spool.stored[0]
    assert stored.envelope.recipients == [ADMIN, "x@example.org"]
    assert b"with ESMTPS id " in stored.content
    assert stored.content.endswith(b"Subject: t\r\n\r\n.dot\r\n")


def test_listener_pipelined_replies_are_sent_in_one_flush(tmp_path, tls_setup, monkeypatch):
    """Postfix behaviour: replies are held until the client's pipelined input is used up."""
    flushed: list[bytes] = []
    original = SmtpStream.flush

    async def recording_flush(self):
        if self.out:
            flushed.append(b"".join(self.out))
        await original(self)
    monkeypatch.setattr(SmtpStream, "flush", recording_flush)

    async def main():
        listener, _ = build(tmp_path, {}, tls_setup)
        await listener.start()
        try:
            reader, writer, _ = await connect(listener)
            writer.write(b"EHLO c\r\n")
            while (await read_line(reader))[3:4] == "-":
                pass
            writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
                         b"RCPT TO:<c@example.org>\r\nDATA\r\n")
            assert (await read_line(reader)).startswith("250 ")
        finally:
            await listener.close(grace_s=1)
    asyncio.run(main())
    assert any(f.startswith(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data") for f in flushed)


def test_listener_with_real_spool_commits_a_valid_queue_file(tmp_path, tls_setup):
    """The queue API this listener codes against, as mta_lite.queue.spool implements it."""
    from mta_lite.queue.spool import Spool

    async def main():
        spool = Spool(str(tmp_path / "spool")).ensure()
        cfg = make_config(tmp_path)
        listener = Listener(cfg, cfg.listen[0], spool, lambda: None, clock=lambda: 1_700_000_000.0)
        await listener.start()
        try:
            reader, writer, _ = await connect(listener)
            reply = await send_mail(reader, writer, COMPLETE_HEADERS + b"Subject: real\r\n\r\n..dot\r\n")
        finally:
            await listener.close(grace_s=1)
        return spool, reply, listener
    spool, reply, listener = asyncio.run(main())
    (queue_id,) = spool.list("incoming")
    assert reply == f"250 2.0.0 Ok: queued as {queue_id}\r\n"
    entry = spool.read("incoming", queue_id)
    assert (entry.sender, entry.recipients) == ("a@example.com", ("b@example.org",))
    content = entry.read_content()
    assert content.startswith(b"Received: from c (unknown [127.0.0.1])\r\n")
    assert f" id {queue_id}\r\n".encode() in content and content.endswith(b"Subject: real\r\n\r\n.dot\r\n")
    assert spool.staged() == []
    assert dict(listener.counters.items())["accepted"] == 1


def old_tls_client(tls_setup, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A device that speaks only `version`, with what OpenSSL 3 needs for it (@SECLEVEL=0)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version, allowed", [(ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")])
def test_listener_old_tls_client_is_served_where_allowed_and_refused_by_default(tmp_path, tls_setup, version, allowed):
    """This machine's OpenSSL does TLS 1.0/1.1 at security level 0; the test fails if it cannot."""
    def client(port: int) -> str:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="printer.lan", timeout=READ_TIMEOUT_S) as smtp:
            smtp.starttls(context=old_tls_client(tls_setup, version))
            smtp.sendmail("printer@lan.test", ["x@example.org"], COMPLETE_HEADERS + b"Subject: old\r\n\r\nhi\r\n")
            return smtp.sock.version()

    async def main(settings: dict) -> str:
        listener, spool = build(tmp_path, {"tls": "on", **settings}, tls_setup)
        await listener.start()
        try:
            return await asyncio.to_thread(client, listener.address[1])
        finally:
            await listener.close(grace_s=1)
    with LogCapture() as log:
        assert asyncio.run(main({"tls_min_version": allowed})) == allowed
    assert any(f"TLS established from [127.0.0.1]: {allowed} " in line for line in log.lines)
    with pytest.raises(ssl.SSLError):
        asyncio.run(main({}))
