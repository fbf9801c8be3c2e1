"""Group commit (G1): queue files committed together, each durable before its ID is returned.

Peers: the real Spool and QueueWriter on a temporary directory, the kernel's /dev/full for
a file whose flush fails, a real event loop. The only spy counts the directory fsyncs
(dirsync.sync_entry, still called through): what the sharing is for.
"""

import asyncio
import os

import pytest

from mta_lite.envelope import Envelope
from mta_lite.errors import SpoolError
from mta_lite.queue import Spool, dirsync, groupcommit
from mta_lite.queue.spool import WRITE_BUFFER_BYTES


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool")).ensure()


@pytest.fixture
def dir_syncs(monkeypatch):
    calls = []
    real = dirsync.sync_entry

    def counting(directory, fd):
        calls.append(directory)
        real(directory, fd)
    monkeypatch.setattr(dirsync, "sync_entry", counting)
    return calls


def _writer(spool, n, full=False):
    writer = spool.begin(Envelope("a@lan.test", ["b@remote.example"]))
    if full:
        writer._file.close()
        writer._file = open("/dev/full", "wb", buffering=WRITE_BUFFER_BYTES)
    writer.write(b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n))
    return writer


def _listing(spool, state):
    return sorted(os.listdir(os.path.join(spool.root, state)))


def test_commit_batch_commits_every_file_with_one_directory_fsync(spool, dir_syncs):
    writers = [_writer(spool, n) for n in range(5)]
    results = groupcommit.commit_batch(writers)
    assert results == [w.queue_id for w in writers]
    assert _listing(spool, "incoming") == sorted(results) and spool.staged() == []
    for n, queue_id in enumerate(results):
        assert spool.read("incoming", queue_id).read_content() == b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n)
    assert len(dir_syncs) == 1
    assert spool.writers == set()


def test_commit_batch_refuses_only_the_file_that_failed(spool):
    writers = [_writer(spool, 0), _writer(spool, 1, full=True), _writer(spool, 2)]
    results = groupcommit.commit_batch(writers)
    assert isinstance(results[1], OSError) and "No space left" in str(results[1])
    assert _listing(spool, "incoming") == sorted([results[0], results[2]])
    assert spool.staged() == []


def test_sessions_finishing_together_share_flushes_and_each_gets_its_id(spool, dir_syncs):
    async def main():
        writers = [_writer(spool, n) for n in range(8)]
        return writers, await asyncio.gather(*(spool.commit_async(w) for w in writers))
    writers, ids = asyncio.run(main())
    assert ids == [w.queue_id for w in writers]
    assert _listing(spool, "incoming") == sorted(ids) and spool.staged() == []
    assert len(dir_syncs) < len(ids)


def test_a_failed_file_raises_spool_error_for_its_session_only(spool):
    async def main():
        writers = [_writer(spool, 0), _writer(spool, 1, full=True), _writer(spool, 2)]
        return await asyncio.gather(*(spool.commit_async(w) for w in writers), return_exceptions=True)
    first, failed, last = asyncio.run(main())
    assert isinstance(failed, SpoolError) and str(failed).startswith("[Errno 28] queue file write error")
    assert _listing(spool, "incoming") == sorted([first, last]) and spool.staged() == []


def test_a_lone_session_is_committed_without_waiting_for_others(spool, dir_syncs):
    async def main():
        return await spool.commit_async(_writer(spool, 0))
    queue_id = asyncio.run(main())
    assert _listing(spool, "incoming") == [queue_id] and len(dir_syncs) == 1


def test_sequential_commits_are_each_sealed_before_they_return(spool, dir_syncs):
    async def main():
        ids = []
        for n in range(3):
            ids.append(await spool.commit_async(_writer(spool, n)))
            assert _listing(spool, "incoming") == sorted(ids)      # durable and visible on return
        return ids
    asyncio.run(main())
    assert len(dir_syncs) == 3


def test_a_big_batch_does_not_hold_back_the_batch_before_it(spool, dir_syncs, monkeypatch):
    small = [_writer(spool, n) for n in range(3)]
    results, linked = groupcommit.pipeline_step(small, [])
    assert results == {} and linked == small            # on disk, linked, not yet sealed
    big = spool.begin(Envelope("a@lan.test", ["b@remote.example"]))
    big.write(b"x" * (groupcommit.PIPELINE_MAX_BYTES + 1))
    big_fd, real_fsync, big_synced_after = big.fileno(), os.fsync, []

    def fsync(fd):
        if fd == big_fd:
            big_synced_after.append(len(dir_syncs))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    results, linked = groupcommit.pipeline_step([big], small)
    assert big_synced_after == [1]                      # the small ones were sealed first
    assert [results[id(w)] for w in small] == [w.queue_id for w in small]
    assert linked == [big] and len(dir_syncs) == 1
    results, linked = groupcommit.pipeline_step([], [big])
    assert results[id(big)] == big.queue_id and linked == []
    assert _listing(spool, "incoming") == sorted(w.queue_id for w in small + [big])
    assert spool.staged() == []


@pytest.fixture
def worker_trips(monkeypatch):
    """Each call of pipeline_step: one trip to the worker thread (still the real step)."""
    trips = []
    real = groupcommit.pipeline_step

    def counting(batch, linked, *args):
        trips.append((len(batch), len(linked)))
        return real(batch, linked, *args)
    monkeypatch.setattr(groupcommit, "pipeline_step", counting)
    return trips


def test_a_lone_session_is_flushed_linked_and_sealed_in_one_trip(spool, dir_syncs, worker_trips):
    async def main():
        ids = []
        for n in range(3):
            ids.append(await spool.commit_async(_writer(spool, n)))
            assert _listing(spool, "incoming") == sorted(ids) and spool.staged() == []
        return ids
    asyncio.run(main())
    assert worker_trips == [(1, 0)] * 3 and len(dir_syncs) == 3


def test_a_file_still_being_written_keeps_the_batch_for_pipelining(spool, dir_syncs, worker_trips):
    async def main():
        other = _writer(spool, 1)           # another session, still in DATA
        first = await spool.commit_async(_writer(spool, 0))
        assert spool.list("incoming") == [first]            # sealed before its ID came back
        return first, await spool.commit_async(other)
    first, second = asyncio.run(main())
    # The first batch waited for a next one (the linger ran out: the other never came),
    # then was sealed on a trip of its own; the second, alone by then, in one trip.
    assert worker_trips == [(1, 0), (0, 1), (1, 0)]
    assert spool.list("incoming") == sorted([first, second]) and len(dir_syncs) == 2


def test_pipeline_step_seals_a_batch_it_is_told_is_alone(spool, dir_syncs):
    writers = [_writer(spool, n) for n in range(2)]
    results, linked = groupcommit.pipeline_step(writers, [], lambda now_linked: len(now_linked) == 2)
    assert [results[id(w)] for w in writers] == [w.queue_id for w in writers] and linked == []
    assert len(dir_syncs) == 1 and spool.staged() == []
