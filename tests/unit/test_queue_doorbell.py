"""doorbell: the socket (unix datagram, 0660) and ring() from other processes."""

import errno
import os
import shutil
import socket
import stat
import tempfile

import pytest

from mta_lite.errors import SpoolError
from mta_lite.queue import doorbell

from tests.support.qmgr import async_test
from tests.support.waiting import wait_until_async


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="mw")          # short: AF_UNIX paths are limited to 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ring_without_a_listener_does_nothing(sockdir):
    assert doorbell.ring(os.path.join(sockdir, "qmgr")) is False
    assert doorbell.ring(sockdir) is False                           # a spool root without daemon


def test_ring_to_a_stale_socket_does_nothing(sockdir):
    path = os.path.join(sockdir, "qmgr")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
    assert os.path.exists(path) and doorbell.ring(path, doorbell.FLUSH) is False


def test_ring_refuses_unknown_payloads(sockdir):
    with pytest.raises(ValueError):
        doorbell.ring(sockdir, b"X")


@async_test
async def test_listen_dispatches_rings_ignores_junk_and_cleans_up(sockdir, caplog):
    path = os.path.join(sockdir, "qmgr")
    got = []
    listening = await doorbell.listen(path, got.append)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        for what in (doorbell.NEW_MAIL, doorbell.FLUSH, doorbell.RESCAN):
            assert doorbell.ring(path, what) is True
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"rm -rf /", path)
        await wait_until_async(lambda: len(got) == 3 and "unknown datagram" in caplog.text)
        assert got == [b"W", b"F", b"R"]
    finally:
        listening.close()
    assert not os.path.exists(path)


@async_test
async def test_listen_replaces_a_stale_socket(sockdir):
    path = os.path.join(sockdir, "qmgr")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
    got = []
    listening = await doorbell.listen(path, got.append)
    try:
        assert doorbell.ring(path) is True
        await wait_until_async(lambda: got == [b"W"])
    finally:
        listening.close()


@async_test
async def test_listen_refuses_to_steal_a_running_managers_socket(sockdir):
    path = os.path.join(sockdir, "qmgr")
    first = await doorbell.listen(path, lambda what: None)
    try:
        with pytest.raises(SpoolError) as info:
            await doorbell.listen(path, lambda what: None)
        assert info.value.errno == errno.EADDRINUSE
        assert doorbell.ring(path) is True                           # the first one still listens
    finally:
        first.close()
