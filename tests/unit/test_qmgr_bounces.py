"""QueueManager and bounces (G6): one DSN per failure, null sender, double bounces, the cap,
and the order of durability (the DSN is queued before the original goes)."""

import email
import email.policy
import logging

from mta_lite.errors import SpoolError
from mta_lite.smarthost.result import BOUNCE

from tests.support.qmgr import (ADMIN, DEFER, R451, R550, async_test, bounce_all, result_for,
                                running)


def _sent_to(h, recipient):
    return [c for c in h.pool.calls if c.recipients == [recipient] and c.sender == ""]


@async_test
async def test_bounce_creates_exactly_one_dsn_with_null_sender_to_the_original_sender(caplog):
    caplog.set_level(logging.INFO)
    async with running() as h:
        h.pool.respond = lambda call: bounce_all(call) if call.sender else result_for(call.recipients, {})
        queue_id = h.queue()
        await h.start()
        await h.settle()
        assert h.where(queue_id) is None
        [dsn] = _sent_to(h, "alice@example.com")
        assert dsn.account == "isp"                        # null sender -> default relay
        msg = email.message_from_bytes(dsn.content, policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report" and msg["To"].addresses[0].addr_spec == "alice@example.com"
        status, headers = list(msg.iter_parts())[1:]
        rcpt_block = status.get_payload()[1]
        assert (rcpt_block["Status"], rcpt_block["Final-Recipient"]) == ("5.1.1", "rfc822; bob@example.org")
        assert b"Subject: quarterly report" in headers.as_bytes()
        assert b"SECRET-BODY-TEXT" not in dsn.content
        assert "status=bounced (550 5.1.1 no such user)" in caplog.text
        assert f"{queue_id}: sender non-delivery notification: " in caplog.text
        assert len(h.pool.calls) == 2


@async_test
async def test_partial_bounce_sends_a_dsn_and_keeps_the_deferred_recipient():
    async with running() as h:
        h.pool.respond = lambda call: result_for(call.recipients, {
            "bob@example.org": (BOUNCE, R550), "carol@example.org": (DEFER, R451)}) \
            if call.sender else result_for(call.recipients, {})
        queue_id = h.queue(rcpts=("bob@example.org", "carol@example.org"))
        await h.start()
        await h.settle()
        assert h.where(queue_id) == "deferred"
        assert h.spool.load_state(queue_id).done == {"bob@example.org": BOUNCE}
        [dsn] = _sent_to(h, "alice@example.com")
        assert b"bob@example.org" in dsn.content and b"Final-Recipient: rfc822; carol" not in dsn.content


@async_test
async def test_no_dsn_for_a_null_sender_message(caplog):
    async with running() as h:
        h.pool.respond = bounce_all
        queue_id = h.queue(sender="")
        await h.start()
        await h.settle()
        assert h.where(queue_id) is None and len(h.pool.calls) == 1 and h.dsns() == []
        assert f"{queue_id}: no non-delivery notification: message has the null sender" in caplog.text


@async_test
async def test_dsn_that_bounces_goes_to_the_admin_as_a_double_bounce(caplog):
    caplog.set_level(logging.INFO)
    async with running() as h:
        h.pool.respond = lambda call: result_for(call.recipients, {}) if call.recipients == [ADMIN] \
            else bounce_all(call)
        dsn_id = h.queue(sender="", rcpts=("alice@example.com",), is_bounce=True)
        await h.start()
        await h.settle()
        assert h.where(dsn_id) is None
        [notice] = _sent_to(h, ADMIN)
        msg = email.message_from_bytes(notice.content, policy=email.policy.default)
        assert msg["Subject"] == "Postmaster Copy: Undelivered Mail"
        assert f"{dsn_id}: postmaster non-delivery notification: " in caplog.text


@async_test
async def test_double_bounce_failure_is_dropped_and_never_loops(caplog):
    async with running() as h:
        h.pool.respond = bounce_all
        queue_id = h.queue()
        await h.start()
        await h.settle()
        # original -> DSN to alice -> postmaster notice -> dropped: three attempts, then silence
        assert [c.recipients for c in h.pool.calls] == [["bob@example.org"], ["alice@example.com"], [ADMIN]]
        assert all(h.spool.list(s) == [] for s in ("incoming", "active", "deferred"))
        assert "undeliverable postmaster notification discarded" in caplog.text
        h.mgr.flush()
        await h.settle()
        assert len(h.pool.calls) == 3 and h.where(queue_id) is None


@async_test
async def test_unqualified_sender_dsn_goes_to_the_admin():
    async with running() as h:
        h.pool.respond = lambda call: bounce_all(call) if call.sender else result_for(call.recipients, {})
        h.queue(sender="scanner")
        await h.start()
        await h.settle()
        [dsn] = _sent_to(h, ADMIN)
        assert b"unqualified sender <scanner>" in dsn.content


@async_test
async def test_bounce_cap_drops_dsns_beyond_the_hourly_limit_but_removes_the_messages(caplog):
    async with running(queue={"bounces_per_hour": 2}) as h:
        h.pool.respond = lambda call: bounce_all(call) if call.sender else result_for(call.recipients, {})
        ids = [h.queue(rcpts=(f"r{i}@example.org",)) for i in range(4)]
        await h.start()
        await h.settle()
        assert all(h.where(q) is None for q in ids)
        assert len([c for c in h.pool.calls if c.sender == ""]) == 2
        assert caplog.text.count("bounce rate limit exceeded (2 per hour)") == 2
        h.clock.advance(3601)                  # a new hour: notices flow again
        h.queue(rcpts=("late@example.org",))
        h.mgr.mail_arrived()
        await h.settle()
        assert len([c for c in h.pool.calls if c.sender == ""]) == 3


@async_test
async def test_dsn_write_failure_keeps_the_original_in_the_queue(monkeypatch):
    async with running() as h:
        h.pool.respond = bounce_all
        queue_id = h.queue()

        def no_space(*args, **kwargs):
            raise SpoolError(28, "queue file write error: No space left on device")
        monkeypatch.setattr(h.spool, "begin", no_space)
        await h.start()
        await h.settle()
        assert h.where(queue_id) == "deferred"           # DSN not queued -> original not removed
        assert h.spool.load_state(queue_id).done == {}   # and its bounce is retried, not forgotten
