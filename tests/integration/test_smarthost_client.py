"""Integration tests for mta_lite.smarthost (pool, connection, transaction) against real peers on 127.0.0.1.

Peers:
- aiosmtpd's SMTP protocol as a recording smarthost (STARTTLS required, AUTH only inside
  TLS, an authenticator checking username and password), run on the test's own event loop
  with loop.create_server(port 0). aiosmtpd's Controller is not used: its readiness probe
  connects to the configured port (so port 0 cannot work), it runs a second thread, and the
  probe would count as one more connection in the connection-reuse tests.
- RawSmarthost: a scripted SMTP peer on asyncio streams that records the exact bytes it
  reads, for what aiosmtpd cannot do: not offering STARTTLS while offering AUTH, hanging
  or hanging up after the final dot, odd replies.
Certificates come from trustme, for "localhost" and 127.0.0.1; the CA is the relay's ca_file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from dataclasses import dataclass, field

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP, AuthResult, LoginPassword

from mta_lite.config.schema import Relay, Route, Secret
from mta_lite.smarthost.pool import RSET_AFTER_IDLE_S, SmarthostPool
from mta_lite.smarthost.result import BOUNCE, DEFER, SENT

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pa55word"
USERS = {"alice@example.test": PASSWORD, "bob@example.test": "bobs-password"}
SENDER = "scanner@lan.test"
CONTENT = (b"From: scanner@lan.test\r\nTo: bob@example.org\r\nSubject: scan\r\n\r\n"
           b"first line\r\n.hidden\r\n.\r\n..two dots\r\nlast line\r\n")
HELO = "relay.lan.test"
TEST_TIMEOUT_S = 20.0       # a hung test fails instead of hanging the suite


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


# ---------------------------------------------------------------- certificates

@dataclass
class Pki:
    ca_file: str
    server: ssl.SSLContext          # for "localhost" and 127.0.0.1
    wrong_host: ssl.SSLContext      # for other.example only


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(str(ca_file), _server_context(ca.issue_cert("localhost", "127.0.0.1")),
               _server_context(ca.issue_cert("other.example")))


def route(port: int, *, tls: str = "starttls", ca_file: str = "", username: str = "alice@example.test",
          password: str | None = PASSWORD, host: str = "127.0.0.1", timeout_s: float = 5.0) -> Route:
    relay = Relay(name="isp", host=host, port=port, tls=tls, ca_file=ca_file, timeout_s=timeout_s)
    return Route(relay, username, Secret(password) if password is not None else None)


# ---------------------------------------------------------------- aiosmtpd recorder

@dataclass
class Received:
    login: str | None
    peer_port: int
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    content: bytes


@dataclass
class Recorder:
    """aiosmtpd handler: records every message, login attempt and connection."""

    messages: list[Received] = field(default_factory=list)
    auth_attempts: list[tuple[str, bytes]] = field(default_factory=list)
    connections: int = 0
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued as REC1"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.auth_attempts.append((mechanism, auth_data.login))
        ok = USERS.get(auth_data.login.decode()) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        login = session.auth_data.login.decode() if session.auth_data else None
        self.messages.append(Received(login, session.peer[1], envelope.mail_from, list(envelope.mail_options),
                                      list(envelope.rcpt_tos), envelope.original_content))
        return self.data_reply


@contextlib.asynccontextmanager
async def recording_smarthost(recorder: Recorder, *, starttls: ssl.SSLContext | None = None,
                              implicit: ssl.SSLContext | None = None, smtputf8: bool = False):
    loop = asyncio.get_running_loop()
    # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; on an implicit-TLS listener
    # every byte is inside TLS anyway, so AUTH may be offered from the start.
    auth_require_tls = implicit is None

    def factory():
        recorder.connections += 1
        return AiosmtpdSMTP(recorder, hostname="localhost", tls_context=starttls,
                            require_starttls=starttls is not None, auth_require_tls=auth_require_tls,
                            authenticator=recorder.authenticate, enable_SMTPUTF8=smtputf8, loop=loop)

    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=implicit)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


# ---------------------------------------------------------------- raw scripted peer

class RawSmarthost:
    """A scripted SMTP peer recording the exact lines and DATA bytes it reads."""

    def __init__(self, ehlo: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10240000"),
                 replies: dict[str, bytes] | None = None, after_dot: str = "reply", greet: bool = True,
                 greeting: bytes = b"220 raw.test ESMTP\r\n", later: dict[str, bytes] | None = None) -> None:
        self.ehlo, self.replies, self.after_dot, self.greet = ehlo, replies or {}, after_dot, greet
        # Replies on a connection that has carried a message already; b"" hangs up unanswered.
        self.later = later or {}
        self.greeting = greeting
        self.lines: list[bytes] = []
        self.data: list[bytes] = []
        self.connections = 0
        self.release = asyncio.Event()
        self.connected, self.client_hung_up, self.quit_seen = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connected.set()
        if not self.greet:                  # a server that never says hello
            await reader.read()
            self.client_hung_up.set()
            writer.close()
            return
        writer.write(self.greeting)
        first = len(self.data)
        try:
            while line := await reader.readline():
                self.lines.append(line)
                verb = line.split(b" ")[0].strip().upper().decode()
                if len(self.data) > first and verb in self.later:
                    writer.write(self.later[verb])
                    break           # the server's idle timeout: it hangs up
                if not await self._answer(verb, reader, writer):
                    break
                await writer.drain()
        finally:
            writer.close()

    async def _answer(self, verb: str, reader, writer) -> bool:
        if verb in self.replies:
            writer.write(self.replies[verb])
            return not self.replies[verb].startswith(b"421")
        if verb == "EHLO":
            lines = ["raw.test", *self.ehlo]
            writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n"
                                 for i, text in enumerate(lines)).encode())
        elif verb == "DATA":
            writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            await writer.drain()
            return await self._read_data(reader, writer)
        elif verb == "QUIT":
            self.quit_seen.set()
            writer.write(b"221 2.0.0 Bye\r\n")
            return False
        else:
            writer.write(b"250 2.0.0 Ok\r\n")
        return True

    async def _read_data(self, reader, writer) -> bool:
        raw = b""
        while (line := await reader.readline()) and line != b".\r\n":
            raw += line
        self.data.append(raw)
        if self.after_dot == "hang":
            await self.release.wait()
            return False
        if self.after_dot == "hangup":
            return False
        writer.write(self.replies.get("END", b"250 2.0.0 Ok: queued as RAW1\r\n"))
        return True

    def saw(self, verb: bytes) -> bool:
        return any(line.upper().startswith(verb) for line in self.lines)


@contextlib.asynccontextmanager
async def raw_smarthost(peer: RawSmarthost):
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        peer.release.set()
        server.close()


def statuses(result) -> list[str]:
    return [r.status for r in result.recipients]


def plain(port: int, **kwargs) -> Route:
    """A route without TLS or login, for the raw peer."""
    return route(port, tls="none", username="", password=None, **kwargs)


def deliver_once(server, make_route, recipients=("bob@example.org",), content=CONTENT,
                 sender=SENDER, smtputf8=False):
    """Start `server` (an async context manager giving a port), relay one message, close the
    pool. Returns (DeliveryResult, port)."""
    async def scenario():
        async with server as port:
            pool = SmarthostPool(helo_name=HELO)
            try:
                return await pool.deliver(make_route(port), sender, list(recipients), content, smtputf8), port
            finally:
                await pool.close()
    return run(scenario())


# ---------------------------------------------------------------- delivery with TLS + AUTH

def test_starttls_auth_plain_delivers_exact_bytes_and_envelope(pki):
    recorder = Recorder()
    result, port = deliver_once(recording_smarthost(recorder, starttls=pki.server),
                                lambda port: route(port, ca_file=pki.ca_file, host="localhost"),
                                ["bob@example.org", "carol@example.org"])
    assert statuses(result) == [SENT, SENT]
    assert result.relay == f"localhost[127.0.0.1]:{port}"
    assert str(result.recipients[0].reply) == "250 2.0.0 Ok: queued as REC1"
    assert result.auth_failed is False
    [message] = recorder.messages
    assert message.login == "alice@example.test"
    assert recorder.auth_attempts == [("PLAIN", b"alice@example.test")]
    assert message.mail_from == SENDER
    assert message.rcpt_tos == ["bob@example.org", "carol@example.org"]
    assert message.content == CONTENT                   # ".hidden" and "." arrived intact
    assert f"SIZE={len(CONTENT)}" in message.mail_options


def test_implicit_tls_delivers_with_auth(pki):
    recorder = Recorder()
    result, _ = deliver_once(recording_smarthost(recorder, implicit=pki.server),
                             lambda port: route(port, tls="implicit", ca_file=pki.ca_file))
    assert statuses(result) == [SENT]
    assert [m.login for m in recorder.messages] == ["alice@example.test"]
    assert recorder.messages[0].content == CONTENT


# ---------------------------------------------------------------- the pool

def test_two_messages_same_account_reuse_one_connection(pki):
    recorder = Recorder()

    async def scenario():
        async with recording_smarthost(recorder, starttls=pki.server) as port:
            pool = SmarthostPool(helo_name=HELO)
            first = await pool.deliver(route(port, ca_file=pki.ca_file), SENDER, ["bob@example.org"], CONTENT)
            second = await pool.deliver(route(port, ca_file=pki.ca_file), SENDER, ["carol@example.org"], CONTENT)
            await pool.close()
            return first, second

    first, second = run(scenario())
    assert statuses(first) == statuses(second) == [SENT]
    assert recorder.connections == 1
    assert len(recorder.auth_attempts) == 1
    assert recorder.messages[0].peer_port == recorder.messages[1].peer_port


def test_two_accounts_use_two_connections(pki):
    recorder = Recorder()

    async def scenario():
        async with recording_smarthost(recorder, starttls=pki.server) as port:
            pool = SmarthostPool(helo_name=HELO)
            alice = route(port, ca_file=pki.ca_file)
            bob = route(port, ca_file=pki.ca_file, username="bob@example.test", password="bobs-password")
            results = [await pool.deliver(r, SENDER, ["x@example.org"], CONTENT) for r in (alice, bob, alice, bob)]
            await pool.close()
            return results

    results = run(scenario())
    assert [statuses(r) for r in results] == [[SENT]] * 4
    assert recorder.connections == 2
    assert [m.login for m in recorder.messages] == ["alice@example.test", "bob@example.test"] * 2


def test_concurrent_deliveries_same_account_never_share_a_connection(pki):
    recorder = Recorder()

    async def scenario():
        async with recording_smarthost(recorder, starttls=pki.server) as port:
            pool = SmarthostPool(helo_name=HELO)
            r = route(port, ca_file=pki.ca_file)
            first = await pool.deliver(r, SENDER, ["a@example.org"], CONTENT)      # leaves one idle
            both = await asyncio.gather(*(pool.deliver(r, SENDER, [f"{n}@example.org"], CONTENT) for n in "bc"))
            await pool.close()
            return [first, *both]

    results = run(scenario())
    assert [statuses(r) for r in results] == [[SENT]] * 3
    assert recorder.connections == 2                    # one reused idle session, one new
    assert len({m.peer_port for m in recorder.messages[1:]}) == 2


def deliver_in_turn(peer: RawSmarthost, count: int) -> list:
    """`count` messages to the raw peer one after the other, through one pool."""
    async def scenario():
        async with raw_smarthost(peer) as port:
            pool = SmarthostPool(helo_name=HELO)
            results = [await pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT) for _ in range(count)]
            await pool.close()
            return results

    return run(scenario())


def test_a_connection_reused_right_after_a_transaction_needs_no_rset():
    peer = RawSmarthost()
    assert [statuses(r) for r in deliver_in_turn(peer, 3)] == [[SENT]] * 3
    assert peer.connections == 1 and len(peer.data) == 3
    assert not peer.saw(b"RSET")                # one round trip less per message than Postfix


def test_a_connection_idle_for_a_while_is_checked_with_rset_and_a_dead_one_replaced():
    peer = RawSmarthost(replies={"RSET": b"421 4.4.2 raw.test Error: timeout exceeded\r\n"})
    now = [1000.0]

    async def scenario():
        async with raw_smarthost(peer) as port:
            pool = SmarthostPool(helo_name=HELO, clock=lambda: now[0])
            first = await pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT)
            now[0] += RSET_AFTER_IDLE_S + 1
            second = await pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT)
            await pool.close()
            return first, second

    first, second = run(scenario())
    assert statuses(first) == statuses(second) == [SENT]
    assert peer.saw(b"RSET") and peer.connections == 2 and len(peer.data) == 2


@pytest.mark.parametrize("goodbye", [b"421 4.4.2 raw.test Error: timeout exceeded\r\n", b""],
                         ids=["421", "hang-up"])
def test_a_server_gone_from_a_reused_connection_costs_a_new_connection_not_a_deferral(goodbye, caplog):
    peer = RawSmarthost(later={"MAIL": goodbye})

    async def scenario():
        async with raw_smarthost(peer) as port:
            pool = SmarthostPool(helo_name=HELO)
            first = await pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT)
            second = await pool.deliver(plain(port), SENDER, ["carol@example.org"], CONTENT)
            await pool.close()
            return first, second

    with caplog.at_level(logging.INFO, logger="mta_lite.smtp"):
        first, second = run(scenario())
    assert statuses(first) == statuses(second) == [SENT]
    assert peer.connections == 2 and len(peer.data) == 2      # each message once
    assert sum(line.startswith(b"MAIL") for line in peer.lines) == 3
    assert "closed by the server while idle" in caplog.text


def test_a_transaction_without_data_is_reset_at_once_and_its_connection_reused():
    peer = RawSmarthost(replies={"RCPT": b"550 5.1.1 <bob@example.org>: Recipient address rejected\r\n"})
    assert [statuses(r) for r in deliver_in_turn(peer, 2)] == [[BOUNCE]] * 2
    verbs = [line.split(b" ")[0].strip() for line in peer.lines]
    assert verbs[verbs.index(b"RCPT"):][:3] == [b"RCPT", b"RSET", b"MAIL"] and not peer.data


def test_idle_connection_older_than_idle_timeout_is_closed():
    peer = RawSmarthost()
    now = [1000.0]

    async def scenario():
        async with raw_smarthost(peer) as port:
            pool = SmarthostPool(helo_name=HELO, clock=lambda: now[0], idle_timeout_s=30.0)
            await pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT)
            now[0] += 31.0
            result = await pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT)
            await pool.close()
            return result

    assert statuses(run(scenario())) == [SENT]
    assert peer.connections == 2
    assert sum(line.startswith(b"QUIT") for line in peer.lines) == 2     # expired one, then close()


def test_idle_connection_is_quit_by_the_timer_without_further_mail():
    peer = RawSmarthost()

    async def scenario():
        async with raw_smarthost(peer) as port:
            pool = SmarthostPool(helo_name=HELO, idle_timeout_s=0.05)
            result = await pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT)
            await asyncio.wait_for(peer.quit_seen.wait(), 5.0)
            await pool.close()
            return result

    assert statuses(run(scenario())) == [SENT]


def test_cancelled_delivery_closes_its_connection():
    peer = RawSmarthost(greet=False)

    async def scenario():
        async with raw_smarthost(peer) as port:
            pool = SmarthostPool(helo_name=HELO)
            task = asyncio.create_task(pool.deliver(plain(port), SENDER, ["bob@example.org"], CONTENT))
            await asyncio.wait_for(peer.connected.wait(), 5.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(peer.client_hung_up.wait(), 5.0)
            await pool.close()

    run(scenario())


# ---------------------------------------------------------------- AUTH and TLS failures (S3, S5)

def test_wrong_password_defers_with_auth_failed_and_password_nowhere(pki, caplog):
    recorder = Recorder()
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-pa55word"
    result, _ = deliver_once(recording_smarthost(recorder, starttls=pki.server),
                             lambda port: route(port, ca_file=pki.ca_file, password=wrong))
    assert statuses(result) == [DEFER]
    assert result.auth_failed is True
    reply = result.recipients[0].reply
    assert (reply.code, reply.enhanced) == (435, "4.7.8")         # the 535, soft-bounced (S5)
    assert reply.text.startswith("SASL authentication failed; server 127.0.0.1[127.0.0.1]:")
    assert ": 535 5.7.8 " in reply.text
    assert len(recorder.auth_attempts) == 1 and recorder.messages == []
    payload = base64.b64encode(f"\0alice@example.test\0{wrong}".encode()).decode()
    for secret in (wrong, payload, base64.b64encode(wrong.encode()).decode()):
        assert all(secret not in r.reply.text for r in result.recipients)
        assert secret not in caplog.text and secret not in repr(result)


def test_smarthost_without_starttls_gets_no_auth_and_mail_defers():
    peer = RawSmarthost(ehlo=("PIPELINING", "AUTH PLAIN LOGIN", "8BITMIME"))
    result, port = deliver_once(raw_smarthost(peer), route)
    assert statuses(result) == [DEFER]
    reply = result.recipients[0].reply
    assert (reply.code, reply.enhanced) == (451, "4.7.5")
    assert reply.text == f"TLS is required, but host 127.0.0.1[127.0.0.1]:{port} does not offer STARTTLS"
    assert result.relay == f"127.0.0.1[127.0.0.1]:{port}"
    assert not peer.saw(b"AUTH") and not peer.saw(b"MAIL") and not peer.saw(b"STARTTLS")
    assert PASSWORD.encode() not in b"".join(peer.lines)
    assert peer.saw(b"QUIT")                                # turned down, politely


@pytest.mark.parametrize("refusal, code", [(b"454 4.7.0 TLS not available due to local problem\r\n", 454),
                                           (b"554 5.7.0 TLS disabled\r\n", 454)])
def test_starttls_refused_defers_without_auth(refusal, code):
    peer = RawSmarthost(ehlo=("STARTTLS", "AUTH PLAIN LOGIN"), replies={"STARTTLS": refusal})
    result, _ = deliver_once(raw_smarthost(peer), route)
    assert statuses(result) == [DEFER]
    reply = result.recipients[0].reply
    assert (reply.code, reply.enhanced) == (code, "4.7.0")
    assert reply.text.endswith("(in reply to STARTTLS command)")
    assert not peer.saw(b"AUTH") and not peer.saw(b"MAIL")


def test_5xx_greeting_defers_never_bounces():
    peer = RawSmarthost(greeting=b"554 5.7.1 raw.test no service for you\r\n")
    result, _ = deliver_once(raw_smarthost(peer), plain)
    assert statuses(result) == [DEFER]
    assert str(result.recipients[0].reply) == "454 4.7.1 raw.test no service for you (at the initial greeting)"


def test_aiosmtplib_start_tls_true_fails_when_starttls_not_offered():
    """Pins the aiosmtplib behaviour the brief asked about (the client checks it itself too)."""
    peer = RawSmarthost(ehlo=("AUTH PLAIN LOGIN",))

    async def scenario():
        async with raw_smarthost(peer) as port:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, local_hostname="t.test")
            with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS extension not supported"):
                await smtp.connect(username="alice", password=PASSWORD)
            # start_tls=None, the default, would carry on in clear: never leave it unset.
            lenient = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="t.test")
            await lenient.connect()
            in_clear = lenient.get_transport_info("sslcontext") is None
            await lenient.quit()
            return in_clear

    assert run(scenario()) is True
    assert not peer.saw(b"AUTH") and not peer.saw(b"STARTTLS")


def test_untrusted_ca_defers_with_verification_reason(pki):
    recorder = Recorder()
    result, _ = deliver_once(recording_smarthost(recorder, starttls=pki.server), lambda port: route(port, ca_file=""))
    assert statuses(result) == [DEFER]
    reply = result.recipients[0].reply
    assert reply.enhanced == "4.7.5" and reply.is_transient
    assert "Server certificate not verified" in reply.text and "issuer" in reply.text
    assert recorder.auth_attempts == [] and recorder.messages == []


def test_certificate_for_wrong_host_on_implicit_tls_defers(pki):
    """On STARTTLS, with the other certificate faults: tests/faults/test_smarthost_faults.py."""
    recorder = Recorder()
    server = recording_smarthost(recorder, implicit=pki.wrong_host)
    result, _ = deliver_once(server, lambda port: route(port, tls="implicit", ca_file=pki.ca_file))
    assert statuses(result) == [DEFER]
    reply = result.recipients[0].reply
    assert reply.enhanced == "4.7.5" and "mismatch" in reply.text
    assert recorder.auth_attempts == [] and recorder.messages == []


def test_tls_none_with_credentials_never_connects():
    peer = RawSmarthost(ehlo=("AUTH PLAIN",))
    result, _ = deliver_once(raw_smarthost(peer), lambda port: route(port, tls="none"))
    assert statuses(result) == [DEFER] and result.recipients[0].reply.enhanced == "4.7.5"
    assert peer.connections == 0


# ---------------------------------------------------------------- replies to the transaction

def test_rcpt_452_defers_sends_no_data_and_keeps_the_connection(pki):
    recorder = Recorder(rcpt_replies={"bob@example.org": "452 4.5.3 Error: too many recipients"})

    async def scenario():
        async with recording_smarthost(recorder, starttls=pki.server) as port:
            pool = SmarthostPool(helo_name=HELO)
            r = route(port, ca_file=pki.ca_file)
            deferred = await pool.deliver(r, SENDER, ["bob@example.org"], CONTENT)
            sent = await pool.deliver(r, SENDER, ["carol@example.org"], CONTENT)
            await pool.close()
            return deferred, sent

    deferred, sent = run(scenario())
    assert statuses(deferred) == [DEFER]
    assert str(deferred.recipients[0].reply) == "452 4.5.3 Error: too many recipients (in reply to RCPT TO command)"
    assert statuses(sent) == [SENT]
    assert [m.rcpt_tos for m in recorder.messages] == [["carol@example.org"]]
    assert recorder.connections == 1


@pytest.mark.parametrize("reply, status, enhanced", [
    ("552 5.3.4 Message size exceeds fixed limit", BOUNCE, "5.3.4"),
    ("451 4.3.0 Error: queue file write error", DEFER, "4.3.0"),
])
def test_end_of_data_reply_decides_for_accepted_recipients(pki, reply, status, enhanced):
    recorder = Recorder(data_reply=reply, rcpt_replies={"gone@example.org": "550 5.1.1 gone"})
    result, _ = deliver_once(recording_smarthost(recorder, starttls=pki.server),
                             lambda port: route(port, ca_file=pki.ca_file), ["bob@example.org", "gone@example.org"])
    assert statuses(result) == [status, BOUNCE]
    assert result.recipients[0].reply.enhanced == enhanced
    assert "(in reply to end of DATA command)" in result.recipients[0].reply.text


@pytest.mark.parametrize("reply, status", [
    (b"550 5.7.1 <scanner@lan.test>: Sender address rejected\r\n", BOUNCE),
    (b"451 4.3.0 try later\r\n", DEFER),
])
def test_mail_from_refusal_applies_to_every_recipient(reply, status):
    peer = RawSmarthost(replies={"MAIL": reply})
    result, _ = deliver_once(raw_smarthost(peer), plain, ["a@example.org", "b@example.org"])
    assert statuses(result) == [status, status]
    assert not peer.saw(b"RCPT") and peer.data == []


def test_dot_stuffing_crlf_size_and_8bitmime_on_the_wire():
    peer = RawSmarthost()
    content = CONTENT.replace(b"last line", b"caf\xc3\xa9 line")
    result, _ = deliver_once(raw_smarthost(peer), plain, content=content)
    assert statuses(result) == [SENT]
    [wire] = peer.data
    assert wire == content.replace(b"\r\n.", b"\r\n..")     # every line starting "." doubled
    assert b"\r\n..hidden\r\n..\r\n...two dots\r\n" in wire
    assert b"\n" not in wire.replace(b"\r\n", b"") and b"\r" not in wire.replace(b"\r\n", b"")
    [mail] = [line for line in peer.lines if line.startswith(b"MAIL")]
    assert mail == f"MAIL FROM:<{SENDER}> SIZE={len(content)} BODY=8BITMIME\r\n".encode()


def test_smtputf8_needed_but_not_offered_bounces_5_6_7():
    peer = RawSmarthost()
    result, _ = deliver_once(raw_smarthost(peer), plain, ["jörg@bücher.example"], smtputf8=True)
    assert statuses(result) == [BOUNCE] and result.recipients[0].reply.enhanced == "5.6.7"
    assert not peer.saw(b"MAIL")


def test_smtputf8_offered_is_used(pki):
    recorder = Recorder()
    result, _ = deliver_once(recording_smarthost(recorder, starttls=pki.server, smtputf8=True),
                             lambda port: route(port, ca_file=pki.ca_file), ["zoë@example.org"],
                             sender="jörg@bücher.example", smtputf8=True)
    assert statuses(result) == [SENT]
    [message] = recorder.messages
    assert "SMTPUTF8" in message.mail_options
    assert (message.mail_from, message.rcpt_tos) == ("jörg@bücher.example", ["zoë@example.org"])


# ---------------------------------------------------------------- network failures (G3)
# A refused connection, a silent smarthost and a reset in DATA: tests/faults/test_smarthost_faults.py.

@pytest.mark.parametrize("after_dot, words", [("hang", "timed out"), ("hangup", "lost connection")])
def test_no_reply_after_final_dot_defers_never_bounces(after_dot, words):
    peer = RawSmarthost(after_dot=after_dot)
    result, _ = deliver_once(raw_smarthost(peer), lambda port: plain(port, timeout_s=0.5),
                             ["a@example.org", "b@example.org"])
    assert statuses(result) == [DEFER, DEFER]
    reply = result.recipients[0].reply
    assert reply.enhanced == "4.4.2" and words in reply.text
    assert "may be sent more than once" in reply.text
    assert len(peer.data) == 1                              # the whole message did go out
