"""Postscreen against real peers: dnsmasq answering DNSBL zones on loopback, the real daemon
(`mta-lite serve`) with a screened listener, clients from distinct loopback addresses
(127.0.0.X: Linux routes the whole 127/8 to lo), smtp-sink behind it.

Client addresses and what the DNS says about them:
  127.0.0.2   listed in zen.test (127.0.0.2)                 -> 550 5.7.1 ... blocked using zen.test
  127.0.0.3   in the allowlist wl.test (127.0.10.2, *-2)     -> passes at once, no greet wait
  127.0.0.4   zen.test answers 127.255.255.254 (error code)  -> not listed (S6)
  127.0.0.5   zen.test answers 10.1.2.3 (garbage)            -> not listed (S6)
  others      NXDOMAIN in both zones; refused.test answers REFUSED -> not listed
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from mta_lite.postscreen.dnsbl import ERROR, NXDOMAIN, OK, parse_site
from mta_lite.postscreen.dnsblclient import DnsblCheck, DnsPythonLookup
from tests.support.dns import Dnsmasq, bad_dns_server
from tests.support.relay import relay_config
from tests.support.waiting import wait_until


pytestmark = pytest.mark.integration

GREET_WAIT_S = 1.0
RECORDS = {"2.0.0.127.zen.test": "127.0.0.2", "3.0.0.127.wl.test": "127.0.10.2",
           "4.0.0.127.zen.test": "127.255.255.254", "5.0.0.127.zen.test": "10.1.2.3"}
SITES = ["zen.test=127.0.0.[2..11]*3", "wl.test=127.0.[0..255].[1..3]*-2", "refused.test"]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    with Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), ["zen.test", "wl.test"], RECORDS) as server:
        yield server


class Client:
    """A blocking SMTP client bound to one loopback address; reads reply lines."""

    def __init__(self, port: int, source: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")

    def line(self, timeout: float | None = None) -> str:
        if timeout is not None:
            self.sock.settimeout(timeout)
        return self.file.readline(1024).decode("ascii", "replace")

    def reply(self) -> list[str]:
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def screened(relay_factory, config: dict, **postscreen):
    """The real daemon with its listener screened by postscreen."""
    relay = relay_factory(config, start=False)
    relay.config["listen"] = [{"address": "127.0.0.1:0", "postscreen": True}]
    relay.config["postscreen"] = {"greet_wait": f"{int(GREET_WAIT_S * 1000)}ms", **postscreen}
    relay.write_config()
    return relay.start()


def dnsbl_postscreen(dnsmasq) -> dict:
    return {"access": [], "dnsbl_sites": SITES, "dnsbl_threshold": 3, "dnsbl_allowlist_threshold": -1,
            "dnsbl_timeout": "1s", "resolver": f"127.0.0.1:{dnsmasq.port}"}


@pytest.fixture(scope="module", params=[False, True], ids=["one-user", "deployed"])
def outsider_relay(request, tmp_path_factory, dnsmasq):
    """Clients are outside mynetworks (10/8): relay access is denied after postscreen. Every
    test with it runs twice: as one user, and deployed (root dropping to the service users,
    an unreadable interpreter: the pregreet log line needs a codec loaded before the drop)."""
    made = []
    if request.param and os.geteuid() != 0:
        pytest.skip("the deployed mode starts the daemon as root")

    def factory(config, start=True):
        from tests.support.relay import RelayProcess
        relay = RelayProcess(str(tmp_path_factory.mktemp("relay")), config, deployed=request.param)
        made.append(relay)
        return relay.start() if start else relay
    config = {"mynetworks": ["10.0.0.0/8"], "default_relay": "x",
              "relays": {"x": {"host": "127.0.0.1", "port": 9, "tls": "none"}}}
    yield screened(factory, config, **dnsbl_postscreen(dnsmasq))
    for relay in made:
        relay.stop()


# ---------------------------------------------------------------- the DNSBL client, real DNS

def lookup_all(port: int, names: list[str]):
    async def main():
        lookup = DnsPythonLookup(f"127.0.0.1:{port}", 2.0)
        return await asyncio.gather(*(lookup(name) for name in names))
    return asyncio.run(main())


def test_dnspython_lookup_against_dnsmasq_maps_every_answer(dnsmasq):
    listed, unlisted, refused, error_code = lookup_all(dnsmasq.port, [
        "2.0.0.127.zen.test", "1.0.0.127.zen.test", "1.0.0.127.refused.test", "4.0.0.127.zen.test"])
    assert (listed.status, listed.addresses, listed.ttl_s) == (OK, ("127.0.0.2",), 300.0)
    assert unlisted.status == NXDOMAIN and refused.status == ERROR
    assert error_code.addresses == ("127.255.255.254",)


def test_dnsbl_check_against_dnsmasq_scores_client_addresses(dnsmasq):
    async def main(ip):
        lookup = DnsPythonLookup(f"127.0.0.1:{dnsmasq.port}", 2.0)
        check = DnsblCheck(tuple(parse_site(s) for s in SITES), ip, lookup, 2.0)
        await check.finished
        return check.score().total
    scores = {ip: asyncio.run(main(ip)) for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")}
    assert scores == {"127.0.0.1": 0, "127.0.0.2": 3, "127.0.0.3": -2, "127.0.0.4": 0, "127.0.0.5": 0}


@pytest.mark.parametrize("mode", ["servfail", "refused", "garbage", "silent"])
def test_dnspython_lookup_bad_server_counts_as_error_within_deadline(mode):
    deadline_s = 0.5

    async def main():
        transport, server, port = await bad_dns_server(mode)
        try:
            lookup = DnsPythonLookup(f"127.0.0.1:{port}", deadline_s)
            # The lookup's own deadline must end it before this timer ten times as long on
            # the same event loop (timers fire in order, however slow the machine is).
            answer = await asyncio.wait_for(lookup("2.0.0.127.zen.test"), 10 * deadline_s)
            return answer, server.queries
        finally:
            transport.close()
    answer, queries = asyncio.run(main())
    assert answer.status == ERROR and queries >= 1


# ---------------------------------------------------------------- the daemon

def test_postscreen_pregreeting_bot_rejected_while_good_client_reaches_engine(outsider_relay):
    good = Client(outsider_relay.port, "127.0.0.11")
    bot = Client(outsider_relay.port, "127.0.0.10")
    try:
        assert good.line().startswith("220-relay.lan.test ESMTP")
        assert bot.line().startswith("220-relay.lan.test ESMTP")
        bot.send(b"EHLO bot.example\r\n")                       # before its turn
        assert bot.line().startswith("220 relay.lan.test ESMTP")
        bot.send(b"EHLO bot.example\r\n")
        assert "PIPELINING" not in "".join(bot.reply())          # the mini engine
        bot.send(b"MAIL FROM:<spam@bot.example>\r\nRCPT TO:<victim@example.org>\r\n")
        assert bot.line().startswith("250 ")
        assert bot.line().startswith("550 5.5.1 Protocol error")
        assert good.line().startswith("220 relay.lan.test ESMTP")   # after the greet wait
        good.send(b"EHLO mx.example\r\n")
        ehlo = good.reply()
        assert any("PIPELINING" in line for line in ehlo) and ehlo[-1].startswith("250 SMTPUTF8")
        good.send(b"MAIL FROM:<a@mx.example>\r\n")
        assert good.line().startswith("250 2.1.0")
        good.send(b"RCPT TO:<b@example.org>\r\n")
        assert good.line().startswith("554 5.7.1 <b@example.org>: Relay access denied")
    finally:
        bot.close()
        good.close()
    log = outsider_relay.log()
    assert "PREGREET 18 after" in log and "from [127.0.0.10]" in log
    assert "NOQUEUE: reject: RCPT from [127.0.0.10]: 550 5.5.1 Protocol error; from=<spam@bot.example>" in log
    assert "PASS NEW [127.0.0.11]" in log


def test_postscreen_listed_client_gets_550_blocked_using_site(outsider_relay):
    client = Client(outsider_relay.port, "127.0.0.2")
    try:
        assert client.line().startswith("220-")
        assert client.line().startswith("220 ")
        client.send(b"HELO bot.example\r\nMAIL FROM:<a@bot.example>\r\nRCPT TO:<c@example.org>\r\n")
        assert [client.line()[:3] for _ in range(2)] == ["250", "250"]
        assert client.line().startswith("550 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.test")
    finally:
        client.close()
    assert "DNSBL rank 3 for [127.0.0.2]" in outsider_relay.log()


@pytest.mark.parametrize("source", ["127.0.0.4", "127.0.0.5"])
def test_postscreen_error_code_or_garbage_answer_fails_open(outsider_relay, source):
    client = Client(outsider_relay.port, source)
    try:
        assert client.line().startswith("220-")
        assert client.line().startswith("220 ")
        client.send(b"EHLO mx.example\r\n")
        assert client.reply()[-1].startswith("250 SMTPUTF8")           # the real engine
    finally:
        client.close()


def test_postscreen_allowlisted_client_skips_the_greet_wait(outsider_relay):
    client = Client(outsider_relay.port, "127.0.0.3")
    try:
        assert client.line().startswith("220-")
        assert client.line().startswith("220 relay.lan.test ESMTP")
        # What ended the wait: the DNSWL score, logged before the banner is completed.
        assert "DNSBL rank -2 for [127.0.0.3]: allowlisted" in outsider_relay.log()
    finally:
        client.close()


def test_postscreen_counters_reach_status_json(outsider_relay):
    client = Client(outsider_relay.port, "127.0.0.20")
    client.send(b"EHLO early.example\r\n")
    client.close()

    def counters():
        smtpd = outsider_relay.status()["smtpd"]
        return smtpd if smtpd.get("postscreen_pregreet", 0) >= 1 else None
    smtpd = wait_until(counters, 15, what="postscreen counters in status --json")
    for key in ("passed", "pregreet", "dnsbl", "dropped", "cache_hits", "stress"):
        assert isinstance(smtpd[f"postscreen_{key}"], int), key


@pytest.mark.deployed
def test_postscreen_screened_lan_client_relays_and_cached_pass_survives_restart(relay_factory, sink_factory,
                                                                                  dnsmasq):
    """access = [] screens even mynetworks: a good client passes, relays to the sink, and is
    cached; after a restart its banner comes at once (a read shorter than greet_wait)."""
    sink = sink_factory()
    relay = screened(relay_factory, relay_config(sink.port), **{**dnsbl_postscreen(dnsmasq), "greet_wait": "2s"})
    client = Client(relay.port, "127.0.0.30")
    try:
        assert client.line().startswith("220-") and client.line().startswith("220 ")
        client.send(b"EHLO pc.lan\r\n")
        client.reply()
        client.send(b"MAIL FROM:<cron@pc.lan>\r\nRCPT TO:<ops@example.org>\r\nDATA\r\n")
        assert [client.line()[:3] for _ in range(3)] == ["250", "250", "354"]
        client.send(b"Subject: screened\r\n\r\npassed postscreen\r\n.\r\nQUIT\r\n")
        assert client.line().startswith("250 2.0.0 Ok: queued as")
    finally:
        client.close()
    sink.wait_count(1, timeout=30)
    assert relay.stop() == 0
    assert os.path.exists(os.path.join(relay.spool, "postscreen", "postscreen.db"))
    relay.start()
    client = Client(relay.port, "127.0.0.30")
    try:
        assert client.line(timeout=1.0).startswith("220 relay.lan.test ESMTP")   # greet wait is 2 s
    finally:
        client.close()
    cached = json.loads(open(os.path.join(relay.spool, "postscreen", "postscreen.db")).read())
    assert "127.0.0.30" in cached["clients"]
    assert "PASS OLD [127.0.0.30]" in relay.log()
