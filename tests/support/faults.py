"""Peers and helpers for the fault and attack suite (imported by tests/faults/*).

    LoopThread       an asyncio event loop in a daemon thread, for servers the daemon under
                     test talks to while the test thread drives clients
    RawSmarthost     a scripted SMTP smarthost on asyncio streams that records the exact bytes
                     of every command and of every DATA stream (smtp-sink strips CRs), and can
                     be silent, refuse one recipient, reset the connection in DATA, or be
                     switched from refusing to accepting while the daemon runs
    TlsSmarthost     aiosmtpd (STARTTLS or none, AUTH with a checking authenticator) recording
                     messages and every AUTH attempt
    Pki              certificates made with `cryptography`: a CA, and leaves that are valid,
                     for the wrong host, expired, not yet valid, or self-signed
    RawClient        a socket client that sends exact bytes and reads SMTP replies

Guarantees: every server listens on 127.0.0.1 port 0 and is closed by its context manager;
waits poll against a deadline (tests/support/waiting.py wait_until), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.smtp import SMTP as AiosmtpdSMTP, AuthResult, LoginPassword

from tests.support.relay import PASSWORD
from tests.support.waiting import wait_until

SMARTHOST_USER = "office@example.test"


# ------------------------------------------------------------------ event loop thread

class LoopThread:
    """An event loop running in a daemon thread; call() runs a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fault-peers", daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:       # servers closed their connections: most handlers end by themselves
                await asyncio.wait(tasks, timeout=2)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            self.call(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# ------------------------------------------------------------------ raw recording smarthost

@dataclass
class Transaction:
    """One message as the smarthost got it: `wire` is DATA exactly as sent (dot-stuffed,
    without the final `.CRLF`), `content` the same un-stuffed."""

    mail_from: bytes
    rcpts: list[bytes]
    wire: bytes

    @property
    def content(self) -> bytes:
        return b"".join(line[1:] if line.startswith(b".") else line
                        for line in self.wire.splitlines(keepends=True))


class RawSmarthost:
    """A scripted SMTP peer; attributes may be changed from the test thread at any time.

    greet=False: accepts TCP and never says a word (a silent smarthost).
    rcpt_replies: {b"addr": b"550 5.1.1 ...\\r\\n"} for single recipients; replies: {verb: line}.
    data_reset_after: close with RST after this many DATA bytes (a reset mid-DATA).
    tls: offer STARTTLS with this server context, and AUTH PLAIN (checked against
    SMARTHOST_USER/PASSWORD, recorded in `auth` as (user, inside TLS)) once TLS is on;
    inject: plaintext sent right behind the 220 to STARTTLS, in the same write (the
    STARTTLS response injection of CVE-2011-1430 against clients).
    """

    def __init__(self, loop: LoopThread, *, ehlo: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 50000000"),
                 greet: bool = True, tls: ssl.SSLContext | None = None, inject: bytes = b"") -> None:
        self.loop, self.ehlo, self.greet = loop, list(ehlo), greet
        self.tls, self.inject = tls, inject
        self.auth: list[tuple[str, bool]] = []
        self.replies: dict[str, bytes] = {}
        self.rcpt_replies: dict[bytes, bytes] = {}
        self.data_reset_after: int | None = None
        self.lines: list[bytes] = []
        self.transactions: list[Transaction] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def __enter__(self) -> "RawSmarthost":
        self._server = self.loop.call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()        # handlers see the end of input and return
        self.loop.call(close())

    # -------------------------------------------------------------- observations
    def messages(self) -> list[Transaction]:
        with self._lock:
            return list(self.transactions)

    def saw(self, verb: bytes) -> bool:
        with self._lock:
            return any(line.upper().startswith(verb) for line in self.lines)

    def wait_messages(self, n: int, timeout: float = 30.0) -> list[Transaction]:
        return wait_until(lambda: (got := self.messages()) and len(got) >= n and got, timeout,
                          what=f"{n} messages at the raw smarthost")

    # -------------------------------------------------------------- protocol
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        self._writers.add(writer)
        try:
            if not self.greet:
                await reader.read()         # never a word; wait until the client gives up
                return
            writer.write(b"220 raw.test ESMTP\r\n")
            await self._dialog(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _dialog(self, reader, writer) -> None:
        mail, rcpts, tls_on = b"", [], False
        while line := await reader.readline():
            with self._lock:
                self.lines.append(line)
            verb = line.split(b" ")[0].split(b":")[0].strip().upper().decode("ascii", "replace")
            if verb in self.replies:
                writer.write(self.replies[verb])
            elif verb == "STARTTLS" and self.tls is not None and not tls_on:
                writer.write(b"220 2.0.0 Ready to start TLS\r\n" + self.inject)
                await writer.drain()
                await writer.start_tls(self.tls)
                tls_on = True
                continue
            elif verb == "AUTH":
                writer.write(self._auth(line, tls_on))
            elif verb in ("EHLO", "HELO"):
                extra = ["STARTTLS"] if self.tls is not None and not tls_on else []
                extra += ["AUTH PLAIN"] if tls_on else []
                names = ["raw.test", *self.ehlo, *extra]
                writer.write("".join(f"250{'-' if i < len(names) - 1 else ' '}{n}\r\n"
                                     for i, n in enumerate(names)).encode())
            elif verb == "MAIL":
                mail, rcpts = line[10:].strip(), []
                writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == "RCPT":
                address = line[8:].strip().split(b" ")[0].strip(b"<>")
                reply = self.rcpt_replies.get(address, b"250 2.1.5 Ok\r\n")
                if reply.startswith(b"250"):
                    rcpts.append(address)
                writer.write(reply)
            elif verb == "DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                await writer.drain()
                if not await self._data(reader, writer, mail, rcpts):
                    return
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()

    def _auth(self, line: bytes, tls_on: bool) -> bytes:
        words = line.split()
        try:
            _, user, password = base64.b64decode(words[2]).decode().split("\0")
        except (IndexError, ValueError):
            return b"501 5.5.4 AUTH PLAIN with an initial response only\r\n"
        with self._lock:
            self.auth.append((user, tls_on))
        if tls_on and user == SMARTHOST_USER and password == PASSWORD:
            return b"235 2.7.0 Authentication successful\r\n"
        return b"535 5.7.8 Authentication credentials invalid\r\n"

    async def _data(self, reader, writer, mail: bytes, rcpts: list[bytes]) -> bool:
        wire = bytearray()          # bytes += would copy a big message once per line
        while (line := await reader.readline()) != b".\r\n":
            if not line:
                return False
            wire += line
            if self.data_reset_after is not None and len(wire) >= self.data_reset_after:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()       # RST: the connection dies mid-DATA
                return False
        with self._lock:
            self.transactions.append(Transaction(mail, list(rcpts), bytes(wire)))
        writer.write(self.replies.get("END", b"250 2.0.0 Ok: queued as RAW\r\n"))
        return True


# ------------------------------------------------------------------ aiosmtpd with TLS and AUTH

@dataclass
class TlsSmarthost:
    """aiosmtpd smarthost: STARTTLS when `tls` is a context (None: no STARTTLS offered, AUTH
    then offered in clear), AUTH PLAIN/LOGIN checked against SMARTHOST_USER/PASSWORD."""

    loop: LoopThread
    tls: ssl.SSLContext | None = None
    auth_ok: bool = True
    messages: list = field(default_factory=list)
    auth_attempts: list = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: object = None
    _protocols: list = field(default_factory=list)

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.auth_attempts.append((mechanism, auth_data.login.decode(), session.ssl is not None))
            ok = self.auth_ok and auth_data.login.decode() == SMARTHOST_USER and auth_data.password.decode() == PASSWORD
        else:
            self.auth_attempts.append((mechanism, "?", session.ssl is not None))
            ok = False
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued as TLS1"

    def __enter__(self) -> "TlsSmarthost":
        def factory():
            self.connections += 1
            protocol = AiosmtpdSMTP(self, hostname="localhost", tls_context=self.tls,
                                    require_starttls=self.tls is not None, auth_require_tls=self.tls is not None,
                                    authenticator=self.authenticate, loop=self.loop.loop)
            self._protocols.append(protocol)
            return protocol

        async def start():
            return await self.loop.loop.create_server(factory, "127.0.0.1", 0)
        self._server = self.loop.call(start())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            for protocol in self._protocols:      # idle pooled connections of the daemon
                if protocol.transport is not None:
                    protocol.transport.close()
        self.loop.call(close())


# ------------------------------------------------------------------ certificates

class Pki:
    """A test CA and server certificates with chosen names and validity windows."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.x509, self.hashes, self.ec, self.NameOID = x509, hashes, ec, NameOID
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mta-lite fault test CA")])
        self.ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                        .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                        .not_valid_before(now - datetime.timedelta(days=30))
                        .not_valid_after(now + datetime.timedelta(days=3650))
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                     key_encipherment=False, data_encipherment=False,
                                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                     encipher_only=False, decipher_only=False), critical=True)
                        .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                                       critical=False)
                        .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = str(self.dir / "ca.pem")
        Path(self.ca_file).write_bytes(self._pem(self.ca_cert))

    def _pem(self, cert) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding
        return cert.public_bytes(Encoding.PEM)

    def server_context(self, name: str, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                       not_before_days: float = -1, not_after_days: float = 365,
                       self_signed: bool = False) -> ssl.SSLContext:
        """A server SSLContext for a leaf valid from now+not_before_days to now+not_after_days."""
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
        x509, NameOID = self.x509, self.NameOID
        key = self.ec.generate_private_key(self.ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        sans = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        issuer_key = key if self_signed else self.ca_key
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(subject if self_signed else self.ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + datetime.timedelta(days=not_before_days))
                   .not_valid_after(now + datetime.timedelta(days=not_after_days))
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        cert = builder.sign(issuer_key, self.hashes.SHA256())
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(self._pem(cert))
        key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert_path), str(key_path))
        return context


# ------------------------------------------------------------------ raw SMTP client

class RawClient:
    """Exact bytes to the daemon; replies read line by line."""

    def __init__(self, port: int, timeout: float = 10.0, source: str = "127.0.0.1") -> None:
        # Any 127.x.y.z works as a source on Linux: a client "outside" mynetworks is one
        # whose loopback source address the config leaves out.
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all lines of a multi-line one); b"" at EOF."""
        lines = b""
        while True:
            line = self.file.readline(4096)
            lines += line
            if not line or line[3:4] != b"-":
                return lines

    def command(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the server closed the connection (EOF) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while self.file.readline(4096):
                pass
        except (TimeoutError, socket.timeout):
            return False
        except OSError:
            return True
        return True


def smtp_transaction(port: int, *, helo: bytes = b"EHLO pc.lan.test", sender: bytes = b"scanner@lan.test",
                     rcpts: tuple[bytes, ...] = (b"ops@remote.example",), body: bytes = b"Subject: t\r\n\r\nhi\r\n",
                     source: str = "127.0.0.1") -> list[bytes]:
    """One whole transaction with exact bytes; returns the reply to each step (stops early on
    a refusal at MAIL or when no recipient was accepted)."""
    out = []
    with RawClient(port, source=source) as client:
        out.append(client.reply())
        out.append(client.command(helo + b"\r\n"))
        out.append(client.command(b"MAIL FROM:<" + sender + b">\r\n"))
        if not out[-1].startswith(b"250"):
            return out
        for rcpt in rcpts:
            out.append(client.command(b"RCPT TO:<" + rcpt + b">\r\n"))
        if not any(r.startswith(b"250") for r in out[3:]):
            return out
        out.append(client.command(b"DATA\r\n"))
        if out[-1].startswith(b"354"):
            out.append(client.command(body + b".\r\n"))
        client.send(b"QUIT\r\n")
    return out


def message_id(content: bytes) -> str | None:
    match = re.search(rb"^Message-ID:\s*(<[^>\r\n]*>)", content, re.M | re.I)
    return match.group(1).decode() if match else None


def elapsed(start: float) -> float:
    return time.monotonic() - start
