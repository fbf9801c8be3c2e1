"""Unit tests for SmarthostPool paths that end before any socket is opened: DNS (injected
resolver), CA file, credentials without TLS, a closed pool, an internal error."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import pytest

from mta_lite.config.schema import Relay, Route, Secret
from mta_lite.smarthost.pool import SmarthostPool, TlsContexts
from mta_lite.smarthost.result import DEFER

PASSWORD = "pool-Secret-99"


def route(*, tls: str = "starttls", ca_file: str = "", username: str = "alice", timeout_s: float = 5.0) -> Route:
    relay = Relay(name="isp", host="smtp.isp.example", port=587, tls=tls, ca_file=ca_file, timeout_s=timeout_s)
    return Route(relay, username, Secret(PASSWORD) if username else None)


class Resolver:
    """Records lookups; answers with an exception, or never (to exercise the timeout)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error, self.calls = error, []

    async def __call__(self, host: str, port: int):
        self.calls.append((host, port))
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()        # a DNS server that never answers


def deliver(pool: SmarthostPool, r: Route, recipients=("bob@example.org",)):
    async def go():
        try:
            return await pool.deliver(r, "a@lan.test", list(recipients), b"Subject: x\r\n\r\nx\r\n")
        finally:
            await pool.close()
    return asyncio.run(go())


def only_reply(result):
    assert [r.status for r in result.recipients] == [DEFER] * len(result.recipients)
    return result.recipients[0].reply


def test_dns_failure_defers_4_4_3_with_relay_none():
    resolver = Resolver(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    result = deliver(SmarthostPool(helo_name="relay.lan.test", resolver=resolver), route(tls="none", username=""))
    reply = only_reply(result)
    assert (reply.code, reply.enhanced, result.relay) == (451, "4.4.3", "none")
    assert reply.text == ("Host or domain name not found. Name service error for "
                          "name=smtp.isp.example: Name or service not known")
    assert resolver.calls == [("smtp.isp.example", 587)]


def test_dns_timeout_defers_after_the_relay_timeout():
    pool = SmarthostPool(helo_name="relay.lan.test", resolver=Resolver())
    reply = only_reply(deliver(pool, route(tls="none", username="", timeout_s=0.05)))
    assert reply.enhanced == "4.4.3" and reply.text.endswith("lookup timed out")


def test_credentials_with_tls_none_are_refused_before_any_lookup():
    resolver = Resolver(AssertionError("must not be called"))
    reply = only_reply(deliver(SmarthostPool(helo_name="relay.lan.test", resolver=resolver), route(tls="none")))
    assert reply.enhanced == "4.7.5" and "without TLS" in reply.text
    assert resolver.calls == []


def test_unreadable_ca_file_defers_4_7_5_before_any_lookup(tmp_path):
    resolver = Resolver(AssertionError("must not be called"))
    missing = str(tmp_path / "no-such-ca.pem")
    reply = only_reply(deliver(SmarthostPool(helo_name="relay.lan.test", resolver=resolver), route(ca_file=missing)))
    assert reply.enhanced == "4.7.5" and reply.text.startswith(f"cannot load CA file {missing}")
    assert resolver.calls == []


def test_internal_error_defers_4_3_0_and_logs_without_the_password(caplog):
    caplog.set_level(logging.DEBUG)
    pool = SmarthostPool(helo_name="relay.lan.test", resolver=Resolver(RuntimeError("bug")))
    reply = only_reply(deliver(pool, route(), recipients=("b@x.org", "c@x.org")))
    assert str(reply) == "451 4.3.0 Error: internal error, please try again later"
    assert "smarthost client error" in caplog.text and PASSWORD not in caplog.text


def test_closed_pool_defers_and_empty_recipient_list_is_empty_result():
    async def go():
        pool = SmarthostPool(helo_name="relay.lan.test", resolver=Resolver(AssertionError("unused")))
        empty = await pool.deliver(route(), "a@lan.test", [], b"x\r\n")
        await pool.close()
        closed = await pool.deliver(route(), "a@lan.test", ["b@x.org"], b"x\r\n")
        return empty, closed

    empty, closed = asyncio.run(go())
    assert (empty.relay, empty.recipients) == ("none", ())
    assert str(only_reply(closed)) == "451 4.3.0 smarthost client is shutting down; will try again later"


@pytest.mark.parametrize("helo", ["", "relay lan", "relay\r\nMAIL", "relay\x00"])
def test_helo_name_must_be_one_clean_word(helo):
    with pytest.raises(ValueError):
        SmarthostPool(helo_name=helo)


def test_smarthost_tls_context_verifies_and_never_allows_below_tls_1_2():
    """S3: whatever old TLS a LAN listener allows (tls_min_version), the smarthost side is modern."""
    context = TlsContexts().get("")
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
