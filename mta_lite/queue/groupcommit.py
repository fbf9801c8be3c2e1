"""groupcommit — new queue files that finish together are made durable with shared flushes.

    commit_batch(writers)   each writer's file: trailer, fsync, link into its target, then
                            one fsync per target directory for all of them; per writer
                            its queue ID or the OSError that refused it
    GroupCommit             for an event loop: sessions that reach the final dot while a
                            batch is being flushed wait for the next batch, which takes
                            them all; a lone session is flushed at once (no timer), and
                            flushed, linked and sealed in one trip to the worker thread

Why: every fsync on ext4 commits the file system's journal: a descriptor block, each
metadata block touched (inode table, bitmaps, directory blocks) and a commit block, about
16 KiB for one small message. Ten sessions that each flush alone write that ten times;
flushed together, the blocks they share are written once. Before the fsyncs, writeback of
every file of the batch is started (sync_file_range), so that their blocks are allocated
in the same journal transaction and the first fsync commits them all; the later fsyncs
find their inodes committed and only wait for their data.
Guarantees (G1): for each message, in this order, as the strace test observes: its last
write, fsync(its file), link() into the target, fsync(the target directory), and only
then its result; a failure at any step refuses that message (its staging file and any
link removed) and no other message of the batch unless they share the failed step.
Must never: report a queue ID whose file or directory entry was not flushed.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
from typing import Callable

from mta_lite import safeio
from mta_lite.errors import SpoolError
from mta_lite.queue import dirsync

log = logging.getLogger("mta_lite.queue")

SYNC_FILE_RANGE_WRITE = 2       # <linux/fs.h>: start writeback of dirty pages, do not wait
# How long a batch waits for sessions still in DATA before it is flushed without them: a
# few milliseconds against a flush that takes one (SSD) to twenty (SD card); a lone
# session, or one whose companions are all waiting already, does not wait at all.
LINGER_S = 0.002
# A batch bigger than this is flushed only after the previous batch is sealed: a big
# message's fsync (a 10 MB one takes about a second on an SD card) must not hold back the
# 250s of small messages that are on disk already.
PIPELINE_MAX_BYTES = 256 * 1024


def commit_batch(writers: list) -> list:
    """Commit QueueWriters together; returns, per writer, its queue ID or an OSError."""
    results: dict[int, object] = {}
    linked = link(flush(writers, results), results)
    seal(linked, results)
    return [results[id(writer)] for writer in writers]


def flush(writers: list, results: dict) -> list:
    """Trailer, writeback and fsync of each file; returns the writers whose file is on
    disk; the others are aborted, their errors in `results`."""
    live = _each(writers, lambda w: w.finish(), results)
    for writer in live:
        start_writeback(writer.fileno())
    synced = _each(live, lambda w: os.fsync(w.fileno()), results)
    _abort_failed(writers, results)
    return synced


def link(writers: list, results: dict) -> list:
    """Link each flushed file into its target; returns those linked (entries not yet durable)."""
    linked = _each(writers, lambda w: w.link(), results)
    _abort_failed(writers, results)
    return linked


def seal(linked: list, results: dict) -> None:
    """One fsync per target directory for the linked writers; then each writer's result
    (its queue ID, or the error) is in `results` and its staging file is gone."""
    for directory, group in _by_directory(linked).items():
        try:
            dirsync.sync_entry(directory, group[0].fileno())
        except OSError as exc:
            # Not durable, so not accepted: take them back rather than deliver messages
            # their clients were told to send again.
            for writer in group:
                safeio.unlink_quietly(writer.final)
                results[id(writer)] = exc
    for writer in linked:
        if isinstance(results.setdefault(id(writer), writer.queue_id), OSError):
            writer.abort()
        else:
            writer.release()


def pipeline_step(batch: list, linked: list, alone: Callable[[list], bool] = lambda _: False) -> tuple[dict, list]:
    """Flush the files of `batch`, seal `linked` (the previous batch), then link `batch`.
    The journal commit that the new files' fsyncs cause carries the previous batch's
    directory entries as well, so that batch's directory fsync right after it finds them
    committed already: one journal commit per batch under load instead of two. Returns
    the results so far and the writers of `batch` now linked, to be sealed next.
    alone(now_linked), asked once `batch` is linked: true when no other file is being
    written, so no next batch will come to seal it with: it is sealed here and then (the
    order commit_batch keeps), and the caller saves a second trip to this worker thread."""
    results: dict[int, object] = {}
    if sum(writer.size for writer in batch) > PIPELINE_MAX_BYTES:
        seal(linked, results)
        linked = []
    synced = flush(batch, results)
    seal(linked, results)
    now_linked = link(synced, results)
    if now_linked and alone(now_linked):
        seal(now_linked, results)
        now_linked = []
    return results, now_linked


def _abort_failed(writers: list, results: dict) -> None:
    for writer in writers:
        if id(writer) in results:
            writer.abort()


def refusal(exc: OSError) -> SpoolError:
    """The error a writer's caller sees for a commit that failed."""
    return SpoolError(exc.errno, f"queue file write error: {exc.strerror or exc}")


def _each(writers: list, step, results: dict) -> list:
    """Apply `step` to each writer; those it fails for get their error in `results`."""
    passed = []
    for writer in writers:
        try:
            step(writer)
        except (OSError, ValueError) as exc:       # ValueError: a file closed under us (abort)
            results[id(writer)] = exc if isinstance(exc, OSError) else OSError(str(exc))
            continue
        passed.append(writer)
    return passed


def _by_directory(writers: list) -> dict[str, list]:
    groups: dict[str, list] = {}
    for writer in writers:
        groups.setdefault(os.path.dirname(writer.final), []).append(writer)
    return groups


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages out; a hint only: the fsync
    that follows does the work and reports the errors, so a failure here is ignored."""
    func = _libc_sync_file_range()
    if func is not None:
        func(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


@functools.cache
def _libc_sync_file_range():
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


class GroupCommit:
    """Batches the commits of one event loop's sessions; commit() returns the queue ID or
    raises the OSError that refused the message."""

    def __init__(self, writing: Callable[[], int] = lambda: 0) -> None:
        self._waiting: list[tuple[object, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._writing = writing         # files being written now, committing or not
        self._arrived = asyncio.Event()

    async def commit(self, writer) -> str:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((writer, future))
        if self._flusher is None:
            self._arrived = asyncio.Event()     # bound to this loop, as the flusher is
            self._flusher = asyncio.create_task(self._flush(), name="group-commit")
        self._arrived.set()
        result = await future
        if isinstance(result, OSError):
            raise refusal(result)
        return result

    async def _flush(self) -> None:
        """Flush batches until nobody waits, each in a worker thread, so the sessions go on
        reading while the disk works. A batch is sealed right after the data flush of the
        next one when that one is waiting already, else on its own at once."""
        linked: list[tuple[object, asyncio.Future]] = []
        try:
            while self._waiting or linked:
                if not linked:
                    await self._linger()
                batch, self._waiting = self._waiting, []
                writers, previous = [w for w, _ in batch], [w for w, _ in linked]
                try:
                    results, now_linked = await asyncio.to_thread(pipeline_step, writers, previous, self._alone)
                except Exception as exc:  # noqa: BLE001 - a bug must refuse the batch, not hang it
                    log.exception("group commit failed")
                    results, now_linked = self._refuse(writers + previous, exc), []
                for writer, future in batch + linked:
                    if id(writer) in results and not future.done():
                        future.set_result(results[id(writer)])
                linked = [(writer, future) for writer, future in batch if writer in now_linked]
        finally:
            self._flusher = None

    def _alone(self, linked: list) -> bool:
        """No file is being written but the `linked` ones (asked from the worker thread; a
        session that begins a file just after is flushed in the next batch, on its own)."""
        return self._writing() <= len(linked)

    @staticmethod
    def _refuse(writers: list, exc: Exception) -> dict:
        """Refuse every writer of a batch that broke: no link of theirs stays behind."""
        failure = OSError(f"queue file commit failed: {exc}")
        for writer in writers:
            if getattr(writer, "final", ""):
                safeio.unlink_quietly(writer.final)
            writer.abort()
        return {id(writer): failure for writer in writers}

    async def _linger(self) -> None:
        """Wait up to LINGER_S while files are still being written that are not waiting yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        while len(self._waiting) < self._writing() and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return
