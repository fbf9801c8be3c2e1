"""arrival.Deadlines: one timer for all held clients, a deque per wait length; clients are
expired in deadline order across lengths, and an entry whose client was woken early does
nothing when its turn comes. arrival.Waiting: held clients are resumed by what they do
(speak, hang up, stay silent) and none stays watched."""

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


class Owner:
    """Collects what each held client was resumed with, as the listener would be told."""

    def __init__(self) -> None:
        self.resumed: dict[str, str] = {}

    def resume(self, token, sock, event: str) -> None:
        self.resumed[token] = event
        sock.close()


def test_held_clients_are_resumed_by_what_they_do_and_leave_nothing_watched():
    import socket

    from mta_lite.smtpd.arrival import HANGUP, INPUT, TIMEOUT, Held, Hold, Waiting

    async def main():
        owner, waiting = Owner(), Waiting()
        pairs = {name: socket.socketpair() for name in ("talks", "leaves", "silent")}
        for name, (ours, _) in pairs.items():
            ours.setblocking(False)
            Held(owner, ours, name).start(Hold(wait_s=0.2, teaser=b"220-teaser\r\n"), waiting)
        for _, client in pairs.values():
            assert client.recv(100) == b"220-teaser\r\n"
        pairs["talks"][1].send(b"EHLO early\r\n")
        pairs["leaves"][1].close()
        await asyncio.sleep(0.05)
        assert owner.resumed == {"talks": INPUT, "leaves": HANGUP}
        await asyncio.sleep(0.3)
        assert owner.resumed["silent"] == TIMEOUT
        assert waiting._by_fd == {}             # every socket taken out of the set
        epoll_fd = waiting._epoll.fileno()
        waiting.close()
        assert waiting._epoll is None
        assert epoll_fd not in asyncio.get_running_loop()._selector.get_map()
    asyncio.run(main())
