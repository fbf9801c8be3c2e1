"""S1/S2/G5 attacks on the real daemon with exact bytes, judged by what reaches the smarthost.

Peers: the real daemon (tests/support/relay.py); a raw recording smarthost that keeps the exact DATA
bytes (tests/support/faults.py RawSmarthost; smtp-sink would strip the CRs we must check);
raw socket clients (RawClient) from 127.0.0.1 (outside mynetworks) and 127.0.0.2 (inside:
the config's mynetworks is 127.0.0.2/32); `mta-lite sendmail` for locally submitted mail.
Every test ends with a barrier: a legitimate message sent after the attack must arrive, and
it must be all that arrived, so "nothing reached the smarthost" is observed, not assumed.
"""

from __future__ import annotations

import re
import select
import time

import pytest

from mta_lite.queue.spool import Spool
from tests.faults.conftest import fault_config
from tests.support.faults import RawClient, RawSmarthost, elapsed, message_id, smtp_transaction
from tests.support.waiting import wait_until


pytestmark = pytest.mark.integration

INSIDE, OUTSIDE = "127.0.0.2", "127.0.0.1"
BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@pytest.fixture
def smarthost(peers_loop):
    with RawSmarthost(peers_loop) as peer:
        yield peer


def start(relay_factory, smarthost, **top):
    smtpd = top.pop("smtpd", {})
    return relay_factory(fault_config(smarthost.port, mynetworks=[f"{INSIDE}/32"],
                                      smtpd={"hard_error_limit": 100, **smtpd}, **top))


def barrier(relay, smarthost, tag: str = "barrier") -> list:
    """Send one good message from inside, wait for it; return everything the smarthost got."""
    replies = smtp_transaction(relay.port, source=INSIDE,
                               body=f"Message-ID: <{tag}@lan.test>\r\nSubject: {tag}\r\n\r\nok\r\n".encode())
    assert replies[-1].startswith(b"250 2.0.0 Ok: queued as"), replies
    wait_until(lambda: tag in "".join(str(message_id(t.content)) for t in smarthost.messages()), 30,
               what=f"the {tag} message at the smarthost")
    wait_until(lambda: relay.queue() == [], 30, what="an empty queue")
    return smarthost.messages()


def assert_only_barrier_arrived(relay, smarthost) -> None:
    got = barrier(relay, smarthost)
    assert [message_id(t.content) for t in got] == ["<barrier@lan.test>"]
    assert Spool(relay.spool).staged() == []


def code(reply: bytes) -> int:
    return int(reply[:3])


# ------------------------------------------------------------------ S1: open relay battery

ROUTING_TRICKS = [
    b"victim%remote.example@relay.lan.test", b"victim%remote.example",              # percent hack
    b"remote.example!victim", b"remote.example!victim@relay.lan.test",             # bang paths
    b"@relay.lan.test:victim@remote.example", b"@a.example,@b.example:victim@remote.example",  # source routes
    b'"victim@remote.example"@relay.lan.test', b'"victim@remote.example"',        # quoted local parts
    b'"victim%remote.example"@relay.lan.test', b'"remote.example!victim"',
    b"victim@[192.0.2.1]", b"victim@[IPv6:2001:db8::1]", b"victim@[127.0.0.1]",   # address literals
    b"victim@remote.example@relay.lan.test", b"victim@@remote.example",
    b"victim@remote.example.", b"victim@.remote.example", b"victim@remote..example",
    b"",                                                                           # empty recipient
]
LOCAL_OR_UNQUALIFIED = [b"victim", b"postmaster", b"root@localhost", b"root@relay.lan.test", b"admin@lan.test"]


def try_recipient(port: int, rcpt: bytes, source: str) -> tuple[bytes, bytes]:
    """(reply to RCPT TO, reply to DATA) in a fresh session."""
    with RawClient(port, source=source) as client:
        client.reply()
        client.command(b"EHLO pc.lan.test\r\n")
        assert client.command(b"MAIL FROM:<scanner@lan.test>\r\n").startswith(b"250")
        rcpt_reply = client.command(b"RCPT TO:<" + rcpt + b">\r\n")
        data_reply = client.command(b"DATA\r\n")
        if data_reply.startswith(b"354"):
            data_reply = client.command(b"Subject: relayed?\r\n\r\nx\r\n.\r\n")
        client.send(b"QUIT\r\n")
    return rcpt_reply, data_reply


def test_open_relay_battery_from_outside_mynetworks_relays_nothing(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    forms = ROUTING_TRICKS + LOCAL_OR_UNQUALIFIED + [b"victim@remote.example", b"VICTIM@REMOTE.EXAMPLE"]
    for rcpt in forms:
        rcpt_reply, data_reply = try_recipient(relay.port, rcpt, OUTSIDE)
        assert 500 <= code(rcpt_reply) < 600, (rcpt, rcpt_reply)
        assert rcpt_reply[4:9] in (b"5.7.1", b"5.1.3"), (rcpt, rcpt_reply)
        assert code(data_reply) in (503, 554), (rcpt, data_reply)
    assert relay.queue() == []
    assert_only_barrier_arrived(relay, smarthost)


def test_open_relay_battery_from_inside_mynetworks_rejects_every_routing_trick(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    for rcpt in ROUTING_TRICKS:
        rcpt_reply, data_reply = try_recipient(relay.port, rcpt, INSIDE)
        assert rcpt_reply.startswith((b"553 5.1.3", b"501 5.1.3")), (rcpt, rcpt_reply)
        assert code(data_reply) in (503, 554), (rcpt, data_reply)
    assert relay.queue() == []
    # Local and unqualified names from the LAN go to the admin, never to where they point.
    for rcpt in LOCAL_OR_UNQUALIFIED:
        rcpt_reply, data_reply = try_recipient(relay.port, rcpt, INSIDE)
        assert rcpt_reply.startswith(b"250") and data_reply.startswith(b"250"), (rcpt, rcpt_reply, data_reply)
    got = barrier(relay, smarthost)
    assert len(got) == len(LOCAL_OR_UNQUALIFIED) + 1
    assert sorted({r for t in got for r in t.rcpts}) == [b"admin@lan.test", b"ops@remote.example"]
    assert all(t.rcpts == [b"admin@lan.test"] for t in got if message_id(t.content) != "<barrier@lan.test>")


# ------------------------------------------------------------------ S2: injection through HELO and envelope

def test_helo_with_cr_lf_or_nul_replies_521_closes_and_queues_nothing(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    # Bare LF from outside mynetworks; bare CR and NUL from anyone, LAN (normalize) included.
    for helo, reply, source in [
            (b"EHLO evil\rBcc: x@remote.example\r\n", b"521 5.5.2 Error: bare <CR> received", INSIDE),
            (b"EHLO evil\nX-Injected: yes\r\n", b"521 5.5.2 Error: bare <LF> received", OUTSIDE),
            (b"EHLO evil\x00.example\r\n", b"521 5.5.2 Error: NUL character received", INSIDE)]:
        with RawClient(relay.port, source=source) as client:
            client.reply()
            client.send(helo)
            assert client.reply().startswith(reply), helo
            assert client.closed()
    assert relay.queue() == []
    assert_only_barrier_arrived(relay, smarthost)


CONTROLS = [b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b[31m", b"\x7f", "\u0085".encode(), b"\t"]


@pytest.mark.parametrize("where", ["helo", "sender", "recipient"])
def test_control_characters_in_helo_or_envelope_reply_501_and_never_reach_a_header(relay_factory, smarthost, where):
    relay = start(relay_factory, smarthost)
    for n, ctl in enumerate(CONTROLS):
        with RawClient(relay.port, source=INSIDE) as client:
            client.reply()
            helo = b"EHLO evil" + ctl + b"X-Injected: yes\r\n" if where == "helo" else b"EHLO pc.lan.test\r\n"
            first = client.command(helo)
            if where == "helo":
                assert first.startswith(b"501 5.5.2"), (ctl, first)
                client.command(b"EHLO pc.lan.test\r\n")
            sender = b"evil" + ctl + b"x@lan.test" if where == "sender" else b"scanner@lan.test"
            rcpt = b"victim" + ctl + b"x@remote.example" if where == "recipient" else b"ops@remote.example"
            # SMTPUTF8: the UTF-8 address grammar must refuse C1 controls (U+0085) as well.
            mail = client.command(b"MAIL FROM:<" + sender + b"> SMTPUTF8\r\n")
            if where == "sender":
                assert mail.startswith(b"501 5.5.2"), (ctl, mail)
                client.command(b"MAIL FROM:<scanner@lan.test> SMTPUTF8\r\n")
            rcpt_reply = client.command(b"RCPT TO:<" + rcpt + b">\r\n")
            if where == "recipient":
                assert rcpt_reply.startswith(b"501 5.5.2"), (ctl, rcpt_reply)
                client.command(b"RCPT TO:<ops@remote.example>\r\n")
            assert client.command(b"DATA\r\n").startswith(b"354")
            end = client.command(f"Message-ID: <ctl-{n}@lan.test>\r\n\r\nbody\r\n.\r\n".encode())
            assert end.startswith(b"250 2.0.0"), end
    got = barrier(relay, smarthost)
    assert len(got) == len(CONTROLS) + 1
    for t in got:
        for line in t.content.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]|\xc2[\x80-\x9f]", line), line
        assert not re.search(rb"(?m)^X-Injected", t.content) and b"evil" not in t.mail_from + b"".join(t.rcpts)


# ------------------------------------------------------------------ G5: limits

def test_long_lines_at_the_limit_relay_intact_and_over_it_reply_552(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    long_ok = b"L" * 9998 + b"\r\n"                     # 10,000 octets with its CRLF: the limit
    dotted = b".." + b"M" * 9996 + b"\r\n"              # the same on the wire, dot-stuffed
    replies = smtp_transaction(relay.port, source=INSIDE,
                               body=b"Message-ID: <long@lan.test>\r\n\r\n" + long_ok + dotted)
    assert replies[-1].startswith(b"250 2.0.0"), replies
    too_long = smtp_transaction(relay.port, source=INSIDE, body=b"Subject: x\r\n\r\n" + b"T" * 20_000 + b"\r\n")
    assert too_long[-1] == b"552 5.3.4 Error: message line too long\r\n"
    with RawClient(relay.port, source=INSIDE) as client:
        client.reply()
        assert client.command(b"EHLO " + b"h" * 3000 + b"\r\n") == b"500 5.5.2 Error: line too long\r\n"
        assert client.command(b"NOOP\r\n").startswith(b"250")
    got = barrier(relay, smarthost)
    assert [message_id(t.content) for t in got] == ["<long@lan.test>", "<barrier@lan.test>"]
    assert got[0].content.endswith(b"\r\n\r\n" + long_ok + dotted[1:])
    assert got[0].wire.endswith(b"\r\n\r\n" + long_ok + dotted)               # dot-stuffed again


def test_1001_recipients_get_452_for_the_last_and_1000_are_relayed_once(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    rcpts = [f"user{n}@remote.example".encode() for n in range(1001)]
    with RawClient(relay.port, source=INSIDE) as client:
        client.reply()
        client.command(b"EHLO pc.lan.test\r\n")
        # PIPELINING was advertised: all the commands in one write, then all the replies.
        client.send(b"MAIL FROM:<scanner@lan.test>\r\n" + b"".join(b"RCPT TO:<" + r + b">\r\n" for r in rcpts))
        replies = [client.reply() for _ in range(1 + len(rcpts))]
        assert replies[0].startswith(b"250") and all(r.startswith(b"250 2.1.5") for r in replies[1:1001])
        assert replies[1001] == b"452 4.5.3 Error: too many recipients\r\n"
        assert client.command(b"DATA\r\n").startswith(b"354")
        assert client.command(b"Message-ID: <many@lan.test>\r\n\r\nhi all\r\n.\r\n").startswith(b"250 2.0.0")
    got = barrier(relay, smarthost)
    delivered = [r for t in got if message_id(t.content) == "<many@lan.test>" for r in t.rcpts]
    assert sorted(delivered) == sorted(rcpts[:1000])                # each once, the 1001st never


def test_oversized_message_with_and_without_size_replies_552_and_queues_nothing(relay_factory, smarthost):
    relay = start(relay_factory, smarthost, message_size_limit=50_000)
    with RawClient(relay.port, source=INSIDE) as client:
        client.reply()
        client.command(b"EHLO pc.lan.test\r\n")
        assert client.command(b"MAIL FROM:<scanner@lan.test> SIZE=50001\r\n") == \
            b"552 5.3.4 Message size exceeds fixed limit\r\n"
    big = b"Subject: big\r\n\r\n" + (b"B" * 998 + b"\r\n") * 60
    replies = smtp_transaction(relay.port, source=INSIDE, body=big)
    assert replies[-1] == b"552 5.3.4 Message size exceeds fixed limit\r\n"
    assert relay.queue() == []
    assert_only_barrier_arrived(relay, smarthost)


def test_unadvertised_pipelining_after_helo_replies_554_and_queues_nothing(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    with RawClient(relay.port, source=INSIDE) as client:
        client.reply()
        assert client.command(b"HELO pc.lan.test\r\n").startswith(b"250")
        client.send(b"MAIL FROM:<scanner@lan.test>\r\nRCPT TO:<ops@remote.example>\r\nDATA\r\n"
                    b"Subject: pipelined\r\n\r\nx\r\n.\r\n")
        assert client.reply() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
        assert client.closed()
    assert relay.queue() == []
    assert_only_barrier_arrived(relay, smarthost)


SESSION_LIMIT_S, TIMEOUT_S = 3.0, 2.0


def test_slowloris_one_byte_per_half_second_is_cut_off_at_the_session_limit(relay_factory, smarthost):
    relay = start(relay_factory, smarthost, smtpd={"timeout": "2s", "session_limit": "3s"})
    started = time.monotonic()
    with RawClient(relay.port, source=INSIDE) as client:
        client.reply()
        got = b""
        for byte in b"EHLO " + b"s" * 100:
            # The attacker's pace: one byte, then up to 0.5 s for the server to say anything.
            if select.select([client.sock], [], [], 0.5)[0]:
                got = client.file.readline()
                break
            client.send(bytes([byte]))
        assert got == b"421 4.4.2 relay.lan.test Error: timeout exceeded\r\n"
        assert client.closed(timeout=5)
    # Cut off by the session limit, not a command's timeout (2 s); the upper bound is the
    # loop's: 105 bytes at one per 0.5 s at most would take 52 s.
    assert elapsed(started) >= SESSION_LIMIT_S - 0.5
    assert "timeout after" in relay.log()


def test_noop_forever_is_cut_off_at_the_session_limit(relay_factory, smarthost):
    relay = start(relay_factory, smarthost, smtpd={"timeout": "2s", "session_limit": "3s"})
    started = time.monotonic()
    with RawClient(relay.port, source=INSIDE) as client:
        client.reply()
        client.command(b"EHLO pc.lan.test\r\n")
        noops, reply = 0, b""
        for _ in range(400):                                # at 20 a second at most: 20 s or more
            reply = client.command(b"NOOP\r\n")
            if not reply.startswith(b"250"):
                break
            noops += 1
            select.select([client.sock], [], [], 0.05)      # the client's pace, 20 NOOPs a second
        assert reply == b"421 4.4.2 relay.lan.test Error: timeout exceeded\r\n"
        assert client.closed(timeout=5)
    assert noops > 10 and elapsed(started) >= SESSION_LIMIT_S - 0.5


# ------------------------------------------------------------------ S2: what leaves is CRLF, dot-stuffed

TRICKY_BODIES = [
    b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n. \r\n.x\r\n x.\r\nend\r\n",
    b"Subject: empty lines\r\n\r\n\r\n\r\n\r\n",
    b"Subject: 8bit\r\n\r\n\xc3\xa9t\xc3\xa9 \xff\xfe\r\n",
    b"Subject: almost an end\r\n\r\n.\r\nQUIT\r\n",
    b"Subject: no body",
]


def test_relayed_mail_is_crlf_only_and_dot_stuffed_from_smtp_sendmail_and_bounces(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    for n, body in enumerate(TRICKY_BODIES):
        head, sep, rest = body.partition(b"\r\n")
        message = head + f"\r\nMessage-ID: <tricky-{n}@lan.test>\r\n".encode() + rest + (b"" if sep else b"\r\n")
        stuffed = b"".join(b"." + line if line.startswith(b".") else line
                           for line in message.splitlines(keepends=True))
        assert smtp_transaction(relay.port, source=INSIDE, body=stuffed)[-1].startswith(b"250 2.0.0")
    for n, raw in enumerate([b"Subject: lf\n\nbare\nlf\n.\n..\n", b"Subject: cr\r\n\r\nbare\rcr\r\n"]):
        result = relay.cli("sendmail", "-i", "-f", "cron@lan.test", "ops@remote.example",
                           stdin=raw.replace(b"Subject", f"Message-ID: <local-{n}@lan.test>\nSubject".encode(), 1))
        assert result.returncode == 0, result.stderr
    smarthost.rcpt_replies[b"gone@remote.example"] = b"550 5.1.1 <gone@remote.example>: User unknown\r\n"
    assert smtp_transaction(relay.port, source=INSIDE, rcpts=(b"gone@remote.example",),
                            body=b"Subject: bounce me\r\n\r\n.line\r\n")[-1].startswith(b"250")
    got = barrier(relay, smarthost)
    assert len(got) == len(TRICKY_BODIES) + 2 + 1 + 1           # smtp, sendmail, the bounce, barrier
    for t in got:
        assert not BARE_CR_OR_LF.search(t.wire) and b"\0" not in t.wire, t.wire
        lines = t.wire.split(b"\r\n")
        assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines), t.wire
    by_id = {message_id(t.content): t.content for t in got}
    assert by_id["<tricky-0@lan.test>"].endswith(b"\r\n\r\n.\r\n..\r\n...\r\n. \r\n.x\r\n x.\r\nend\r\n")
    assert by_id["<local-0@lan.test>"].endswith(b"\r\n\r\nbare\r\nlf\r\n.\r\n..\r\n")


# ------------------------------------------------------------------ S2: smuggling through the whole path

SMUGGLED = (b"MAIL FROM:<ceo@lan.test>\r\nRCPT TO:<victim@remote.example>\r\nDATA\r\n"
            b"Message-ID: <smuggled@lan.test>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")
END_VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\r\n.\r\r\n",
                b"\n.\r", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\x00\r\n.\r\n", b"\r\n.\r\x00\n",
                b"\r\n\r.\r\n", b"\r\n.\n\r\n"]


def open_data(client) -> None:
    """Greeting, EHLO, one sender and recipient, DATA: the client may now send content."""
    client.reply()
    client.command(b"EHLO pc.lan.test\r\n")
    assert client.command(b"MAIL FROM:<scanner@lan.test>\r\n").startswith(b"250")
    assert client.command(b"RCPT TO:<ops@remote.example>\r\n").startswith(b"250")
    assert client.command(b"DATA\r\n").startswith(b"354")


def test_smtp_smuggling_variants_reply_521_and_nothing_smuggled_reaches_the_smarthost(relay_factory, smarthost):
    # A listener with bare_newline = "reject": what every client outside mynetworks gets.
    relay = start(relay_factory, smarthost, listen_options={"bare_newline": "reject"})
    for variant in END_VARIANTS:
        with RawClient(relay.port, source=INSIDE) as client:
            open_data(client)
            client.send(b"Message-ID: <outer@lan.test>\r\nSubject: outer\r\n\r\nouter body" + variant + SMUGGLED)
            reply = client.reply()
            assert reply.startswith(b"521 5.5.2 Error: "), (variant, reply)
            assert client.closed(), variant
    assert relay.queue() == []
    got = barrier(relay, smarthost)
    assert [message_id(t.content) for t in got] == ["<barrier@lan.test>"]
    assert not any(b"smuggled" in t.wire or b"victim" in b"".join(t.rcpts) for t in got)


def test_smtp_smuggling_variants_from_the_lan_under_normalize_arrive_as_one_message(relay_factory, smarthost):
    """S2 under Postfix 3.9 `normalize` (LAN clients, the default): a variant with only bare
    LF is content of the one message, which ends at the real CRLF.CRLF; it arrives CRLF-only,
    with its dot line stuffed, to its own recipient only. Bare CR and NUL are still 521."""
    relay = start(relay_factory, smarthost)
    accepted = []
    for n, variant in enumerate(END_VARIANTS):
        with RawClient(relay.port, source=INSIDE) as client:
            open_data(client)
            client.send(f"Message-ID: <outer-{n}@lan.test>\r\nSubject: outer\r\n\r\nouter body".encode()
                        + variant + SMUGGLED)
            reply = client.reply()
            if b"\0" in variant or re.search(rb"\r(?!\n)", variant):
                assert reply.startswith(b"521 5.5.2 Error: "), (variant, reply)
                assert client.closed(), variant
            else:
                assert reply.startswith(b"250 2.0.0 Ok: queued as"), (variant, reply)
                accepted.append(f"<outer-{n}@lan.test>")
    assert len(accepted) == 4                 # \n.\n  \n.\r\n  \r\n.\n  \r\n.\n\r\n
    got = barrier(relay, smarthost)
    assert sorted(str(message_id(t.content)) for t in got) == sorted(accepted + ["<barrier@lan.test>"])
    assert all(t.rcpts == [b"ops@remote.example"] for t in got)
    for t in got:
        assert not BARE_CR_OR_LF.search(t.wire) and b"\0" not in t.wire, t.wire
        if message_id(t.content) != "<barrier@lan.test>":
            assert b"outer body\r\n..\r\n" in t.wire and t.wire.endswith(b"smuggled body\r\n"), t.wire
    assert "taken as <CR><LF>" in relay.log()


@pytest.mark.deployed
def test_lan_scanner_with_bare_lf_everywhere_is_relayed_with_crlf_and_logged_once(relay_factory, smarthost):
    relay = start(relay_factory, smarthost)
    with RawClient(relay.port, source=INSIDE) as client:
        client.reply()
        assert client.command(b"EHLO scanner\n").startswith(b"250")
        assert client.command(b"MAIL FROM:<scanner@lan.test>\n").startswith(b"250")
        assert client.command(b"RCPT TO:<ops@remote.example>\n").startswith(b"250")
        assert client.command(b"DATA\n").startswith(b"354")
        reply = client.command(b"Message-ID: <scan@lan.test>\nSubject: scan\n\n.hidden\nbody\n.\n..\n\r\n.\r\n")
        assert reply.startswith(b"250 2.0.0 Ok: queued as"), reply
        assert client.command(b"QUIT\n").startswith(b"221")
    got = barrier(relay, smarthost)
    scan, = [t for t in got if message_id(t.content) == "<scan@lan.test>"]
    assert not BARE_CR_OR_LF.search(scan.wire)
    assert b"\r\nSubject: scan\r\n" in scan.wire         # Date: and From: were added after it
    assert scan.wire.endswith(b"@lan.test\r\n\r\nhidden\r\nbody\r\n..\r\n..\r\n\r\n")
    assert relay.log().count("bare <LF> received from [127.0.0.2], taken as <CR><LF>") == 1
