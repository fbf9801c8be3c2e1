"""arrival.Deadlines: one timer for all held clients, a deque per wait length; clients are
expired in deadline order across lengths, and an entry whose client was woken early does
nothing when its turn comes."""

import asyncio

from mta_lite.smtpd.arrival import Deadlines


class FakeHeld:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.woken = name, log, False

    def expire(self) -> None:
        if not self.woken:
            self.log.append(self.name)


def test_deadlines_expire_in_deadline_order_across_wait_lengths():
    async def main():
        expired: list[str] = []
        deadlines = Deadlines()
        long1, short, long2 = (FakeHeld(n, expired) for n in ("long1", "short", "long2"))
        deadlines.add(long1, 0.3)
        deadlines.add(short, 0.05)
        deadlines.add(long2, 0.3)
        early = FakeHeld("early", expired)
        deadlines.add(early, 0.05)
        early.woken = True                       # it spoke first: its entry must do nothing
        while len(expired) < 3:
            await asyncio.sleep(0.02)
        assert expired == ["short", "long1", "long2"]
        assert deadlines.timer is None and not any(deadlines.queues.values())
    asyncio.run(main())


def test_deadlines_close_cancels_the_timer():
    async def main():
        expired: list[str] = []
        deadlines = Deadlines()
        deadlines.add(FakeHeld("one", expired), 0.05)
        deadlines.close()
        await asyncio.sleep(0.15)
        assert expired == []
    asyncio.run(main())
