"""G4 on a full daemon start: bit-flipped and truncated queue files in every queue state.

Peers: the real daemon (tests/support/relay.py RelayProcess, started once per hypothesis example on a
fresh spool), a raw recording smarthost (tests/support/faults.py RawSmarthost). Queue files are
written with the real Spool, then damaged on disk: hypothesis chooses which byte and bit of
which file, and where the truncated one ends. (Every truncation offset, and bit flips of the
reader alone, are in tests/unit/test_queue.py.)
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import given, strategies as st

from mta_lite.envelope import Envelope
from mta_lite.queue import Spool
from mta_lite.queue.spool import new_queue_id
from tests.faults.conftest import fault_config
from tests.support.faults import LoopThread, RawSmarthost, message_id
from tests.fuzz.profiles import fuzz_settings
from tests.support.relay import RelayProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

GOOD = 2
STATES = ("incoming", "deferred", "active")


def queue_message(spool: Spool, tag: str) -> str:
    writer = spool.begin(Envelope("scanner@lan.test", ["ops@remote.example"], "127.0.0.1", "pc.lan.test"))
    writer.write(f"Message-ID: <{tag}@lan.test>\r\nSubject: {tag}\r\n\r\n{tag} body\r\n".encode())
    return writer.commit()


def damaged_copy(spool: Spool, tag: str, state: str, damage) -> str:
    """Queue a message, damage its file with `damage(bytes) -> bytes`, move it to `state`."""
    queue_id = queue_message(spool, tag)
    path = spool.path("incoming", queue_id)
    with open(path, "rb") as handle:
        data = handle.read()
    os.unlink(path)
    new_id = new_queue_id()
    with open(spool.path(state, new_id), "wb") as handle:
        handle.write(damage(data))
    return new_id


flip = st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=7), st.sampled_from(STATES))


@pytest.mark.slow
@fuzz_settings(4, long_examples=60)
@given(flips=st.lists(flip, min_size=1, max_size=4), cut=st.integers(min_value=0), cut_state=st.sampled_from(STATES))
def test_daemon_start_with_damaged_queue_files_quarantines_them_and_delivers_only_good_ones(flips, cut, cut_state):
    workdir = tempfile.mkdtemp(prefix="mta-corrupt-")
    loop = LoopThread()
    relay = None
    try:
        with RawSmarthost(loop) as smarthost:
            relay = RelayProcess(workdir, fault_config(smarthost.port))
            spool = Spool(relay.spool).ensure()
            good = {f"<good-{n}@lan.test>" for n in range(GOOD)}
            for n in range(GOOD):
                queue_message(spool, f"good-{n}")
            damaged = set()
            for n, (position, bit, state) in enumerate(flips):
                def flip_one(data, position=position, bit=bit):
                    data = bytearray(data)
                    data[position % len(data)] ^= 1 << bit
                    return bytes(data)
                damaged.add(damaged_copy(spool, f"flipped-{n}", state, flip_one))
            damaged.add(damaged_copy(spool, "truncated", cut_state, lambda data: data[:cut % len(data)]))
            relay.start()
            got = smarthost.wait_messages(GOOD, timeout=30)
            wait_until(lambda: relay.queue() == [], 30, what="the good messages to leave the queue")
            assert sorted(os.listdir(os.path.join(relay.spool, "corrupt"))) == sorted(damaged)
            assert {message_id(t.content) for t in smarthost.messages()} == good and len(got) == GOOD
            assert relay.log().count("corrupt queue file moved to corrupt/") == len(damaged)
            assert relay.proc.poll() is None and len(relay.pids()) == 3
            assert "Traceback" not in relay.log()
    finally:
        if relay is not None:
            relay.stop()
            relay.scan_secrets()
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)
