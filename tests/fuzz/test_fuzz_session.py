"""Fuzz the SMTP command parser and state machine (smtpd/session.py) with whole conversations.

Peer: none (pure). Hypothesis builds command sequences from an SMTP-shaped grammar mixed with
garbage, controls and broken line endings; every reply and every envelope is checked against
S1/S2 (tests/unit/test_smtpd_session.py fuzzes single lines; this drives the state machine).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from hypothesis import example, given, strategies as st, target

from mta_lite.reply import R250_OK, R451_LOCAL_ERROR, Reply
from mta_lite.smtpd.session import Session, SessionContext
from tests.fuzz.profiles import fuzz_settings

HOST = "relay.lan.test"
ADMIN = "admin@lan.test"
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

local = st.one_of(st.sampled_from(["a", "ops", "x.y", '"q u"', '"a@b"', "a%b", "a!b", "root", "postmaster",
                                   "", "é", "\u0085", "a\tb"]),
                  st.text(max_size=12))
domain = st.one_of(st.sampled_from(["remote.example", "lan.test", "relay.lan.test", "localhost", "[192.0.2.1]",
                                    "REMOTE.EXAMPLE", "ex..ample", "-x.example", "b.example."]),
                   st.text(max_size=12))
address = st.one_of(st.builds(lambda l, d: f"{l}@{d}", local, domain), local,
                    st.builds(lambda d, a: f"@{d}:{a}", domain, local), st.just(""))
path = st.one_of(address.map(lambda a: f"<{a}>"), address, address.map(lambda a: f"< {a} >"))
params = st.lists(st.sampled_from(["SIZE=100", "SIZE=99999999999", "SIZE=x", "BODY=8BITMIME", "BODY=7BIT",
                                   "BODY=BINARYMIME", "SMTPUTF8", "NOTIFY=NEVER", "AUTH=<>", "=", "X"]),
                  max_size=3).map(" ".join)
command = st.one_of(
    st.builds(lambda v, h: f"{v} {h}", st.sampled_from(["EHLO", "HELO", "ehlo"]), st.text(max_size=20)),
    st.builds(lambda p, q: f"MAIL FROM:{p} {q}".rstrip(), path, params),
    st.builds(lambda p, q: f"RCPT TO:{p} {q}".rstrip(), path, params),
    st.sampled_from(["DATA", "DATA x", "RSET", "RSET x", "NOOP", "QUIT", "VRFY", "VRFY a", "STARTTLS",
                     "AUTH PLAIN AGFsaWNlAHB3", "GET / HTTP/1.0", "CONNECT x", "BDAT 10", "", " ", "mail from:<a@b.example>",
                     "MAIL FROM: <ops@lan.test>", "RCPT TO: <ops@remote.example>"]),
    st.text(max_size=40),
)
ending = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b"\x00\r\n", b""])
line = st.one_of(st.builds(lambda c, e: c.encode("utf-8", "surrogatepass") + e, command, ending),
                 st.binary(max_size=60).map(lambda b: b + b"\r\n"))


def context(in_mynetworks: bool, tls: bool) -> SessionContext:
    return SessionContext(hostname=HOST, client_ip="192.0.2.9" if not in_mynetworks else "192.168.1.5",
                          in_mynetworks=in_mynetworks, admin_address=ADMIN, size_limit_bytes=10_000,
                          recipient_limit=5, hard_error_limit=10, free_bytes=lambda: 10**9,
                          starttls_available=tls)


def check_reply(reply: Reply) -> None:
    assert isinstance(reply, Reply) and 200 <= reply.code < 600, reply
    assert reply.enhanced == "" or _ENHANCED.match(reply.enhanced), reply
    wire = reply.to_bytes()
    assert wire.endswith(b"\r\n") and b"\r" not in wire.replace(b"\r\n", b"") and b"\n" not in wire.replace(b"\r\n", b"")
    assert not _CONTROL.search(wire.decode("utf-8").replace("\r\n", "")), wire
    assert all(len(part) <= 512 for part in wire.split(b"\r\n")), wire


def check_address(addr: str, sender: bool) -> None:
    if sender and addr == "":
        return
    assert addr and not _CONTROL.search(addr) and len(addr.encode()) <= 256, addr
    local_part, at, domain_part = addr.rpartition("@")
    assert at and domain_part and not domain_part.startswith("[") and domain_part == domain_part.lower(), addr
    assert not any(c in addr for c in "<>!%") or local_part.startswith('"'), addr
    assert not addr.startswith("@") and ("@" not in local_part or local_part.startswith('"')), addr


@fuzz_settings(300)
@given(lines=st.lists(line, max_size=25), in_mynetworks=st.booleans(), tls=st.booleans())
@example(lines=[b"EHLO x\r\n", b"MAIL FROM:<a@lan.test> SMTPUTF8\r\n", "RCPT TO:<a\u0085b@remote.example>\r\n".encode()],
         in_mynetworks=True, tls=False)
@example(lines=[b"HELO x\r\n", b"MAIL FROM:<a@lan.test>\r\n", b"RCPT TO:<b@remote.example>\r\n", b"DATA\r\n"],
         in_mynetworks=False, tls=False)
def test_session_any_conversation_keeps_every_guarantee(lines, in_mynetworks, tls):
    s = Session(context(in_mynetworks, tls))
    seen = set()
    for raw in lines:
        limit = s.over_error_limit()
        if limit is not None:
            check_reply(limit)
            assert limit.code == 421
            break
        reply = s.handle_line(raw)
        check_reply(reply)
        seen.add((s.last_verb, reply.code))
        if s.last_verb == "RCPT" and reply.code == 250:
            assert in_mynetworks, "a recipient was accepted from outside mynetworks (S1)"
            check_address(s.tx.recipients[-1], sender=False)
        if s.last_verb == "MAIL" and reply.code == 250:
            check_address(s.tx.sender, sender=True)
        if s.in_data:
            envelope = s.envelope()
            assert envelope.recipients and in_mynetworks
            for rcpt in envelope.recipients:
                check_address(rcpt, sender=False)
            header = s.received_header("0123456789ABCDEF", datetime(2024, 1, 1, tzinfo=timezone.utc))
            assert header.endswith(b"\r\n") and not re.search(rb"\r(?!\n)|(?<!\r)\n(?!\t)", header[:-2])
            assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", header.replace(b"\r\n", b""))
            check_reply(s.end_data(R250_OK if len(seen) % 2 else R451_LOCAL_ERROR))
        if s.starttls_pending:
            s.tls_started()
        if s.closing:
            break
    target(float(len(seen)), label="distinct (verb, reply code) pairs")
