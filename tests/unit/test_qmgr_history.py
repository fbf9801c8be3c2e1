"""The queue manager keeps the status page's history: each recipient's result is counted in
its hour and day and listed among the recent results; the file is written at most once a
minute while mail flows, and at stop."""

import json
import os

from mta_lite import history
from mta_lite.smarthost.result import BOUNCE

from tests.support.qmgr import R550, async_test, result_for, running


@async_test
async def test_a_sent_and_a_bounced_recipient_are_counted_and_listed():
    async with running() as h:
        h.pool.respond = lambda call: result_for(call.recipients, {"eve@example.net": (BOUNCE, R550)})
        h.queue(sender="scanner@lan.test", rcpts=("bob@example.org", "eve@example.net"))
        await h.start()
        await h.settle()
        today = history.series(h.mgr.history.book, h.clock())["days"][-1]
        assert (today["relayed"], today["bounced"]) == (2, 1)       # bob, and the DSN to the scanner
        recent = {(r["recipient_domain"], r["status"]) for r in h.mgr.history.snapshot()}
        assert {("example.org", "sent"), ("example.net", "bounced")} <= recent
        assert not any("eve" in json.dumps(r) for r in h.mgr.history.snapshot())


@async_test
async def test_history_file_written_once_a_minute_at_most_and_at_stop():
    async with running() as h:
        path = history.history_path(h.spool.root)
        h.queue()
        await h.start()
        await h.settle()
        h.mgr.mail_arrived()                        # one more pass: the first save is due at once
        await h.settle()
        first = json.loads(open(path, "rb").read())
        h.queue()
        h.mgr.mail_arrived()
        await h.settle()
        assert json.loads(open(path, "rb").read()) == first         # within the minute: not yet
        await h.stop()
        saved = history.read_book(path, h.clock())
        assert history.series(saved, h.clock())["days"][-1]["relayed"] == 2
        assert os.stat(path).st_mode & 0o777 == 0o644
