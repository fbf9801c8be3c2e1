"""G1/G5 on a real file system that runs out of space or turns read-only under the daemon.

Peers: the real daemon (tests/support/relay.py) with its spool on a 2 MiB tmpfs (`mount -t tmpfs -o
size=2m`, remounted read-only with `mount -o remount,ro`), a RawSmarthost (tests/support/faults.py)
that first refuses and later accepts, exact-byte SMTP clients (RawClient).
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from mta_lite.queue.spool import Spool
from tests.faults.conftest import fault_config
from tests.support.faults import RawClient, RawSmarthost, message_id, smtp_transaction
from tests.support.waiting import wait_until


pytestmark = pytest.mark.integration

LINE = b"x" * 76 + b"\r\n"


def body(size: int, tag: str) -> bytes:
    return f"Message-ID: <{tag}@lan.test>\r\nSubject: {tag}\r\n\r\n".encode() + LINE * (size // len(LINE))


def mail_from_reply(port: int) -> bytes:
    with RawClient(port) as client:
        client.reply()
        client.command(b"EHLO pc.lan.test\r\n")
        reply = client.command(b"MAIL FROM:<scanner@lan.test>\r\n")
        client.send(b"QUIT\r\n")
    return reply


def fill(path: str) -> None:
    """Write `path` until the file system has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def remount(mountpoint: str, mode: str) -> None:
    """remount ro can meet EBUSY while the daemon has a file open for writing (the status file
    every 2 s): retried against a deadline."""
    def attempt():
        return subprocess.run(["mount", "-o", f"remount,{mode}", mountpoint], capture_output=True).returncode == 0
    wait_until(attempt, 10, what=f"remount,{mode} of {mountpoint}")


def tmp_files(relay) -> list[str]:
    """Staged files (.tmp-ID) in incoming/: messages being written, or left unfinished."""
    return Spool(relay.spool).staged()


def test_mail_from_with_spool_low_replies_452_then_resumes_when_delivery_frees_space(tmpfs, relay_factory, peers_loop):
    limit, reserve = 200_000, 1_150_000
    with RawSmarthost(peers_loop) as smarthost:
        smarthost.replies["RCPT"] = b"451 4.3.0 Try again later\r\n"      # nothing leaves yet
        relay = relay_factory(fault_config(smarthost.port, spool_dir=os.path.join(tmpfs, "spool"),
                                           message_size_limit=limit, queue={"reserve_bytes": reserve}))
        accepted, refusal = [], b""
        for n in range(12):
            replies = smtp_transaction(relay.port, body=body(150_000, f"fill-{n}"))
            if not replies[2].startswith(b"250"):
                refusal = replies[2]
                break
            assert replies[-1].startswith(b"250 2.0.0 Ok: queued as"), replies
            accepted.append(f"<fill-{n}@lan.test>")
        assert refusal == b"452 4.3.1 Insufficient system storage\r\n"
        assert len(accepted) >= 2 and free_bytes(tmpfs) < reserve + 1.5 * limit
        assert tmp_files(relay) == []
        # The smarthost takes mail again: deliveries free the space, acceptance resumes alone.
        smarthost.replies.clear()
        wait_until(lambda: mail_from_reply(relay.port).startswith(b"250"), 60,
                   what="MAIL FROM to be accepted again after deliveries freed the spool")
        got = smarthost.wait_messages(len(accepted), timeout=60)
        assert sorted({message_id(t.content) for t in got}) == sorted(accepted)
    assert relay.proc.poll() is None and len(relay.pids()) == 3


def test_data_when_a_write_fails_mid_message_replies_451_never_250(tmpfs, relay_factory, peers_loop):
    with RawSmarthost(peers_loop) as smarthost:
        relay = relay_factory(fault_config(smarthost.port, spool_dir=os.path.join(tmpfs, "spool"),
                                           message_size_limit=1_000_000, queue={"reserve_bytes": 0}))
        filler = os.path.join(tmpfs, "filler")
        with RawClient(relay.port) as client:
            client.reply()
            client.command(b"EHLO pc.lan.test\r\n")
            assert client.command(b"MAIL FROM:<scanner@lan.test>\r\n").startswith(b"250")
            assert client.command(b"RCPT TO:<ops@remote.example>\r\n").startswith(b"250")
            fill(filler)                        # the disk fills up between MAIL FROM and DATA
            data = client.command(b"DATA\r\n")
            if data.startswith(b"354"):
                end = client.command(body(300_000, "no-room") + b".\r\n")
            else:
                end = data
            assert end == b"451 4.3.0 Error: queue file write error\r\n"
            assert client.command(b"NOOP\r\n").startswith(b"250")      # the session goes on
        assert tmp_files(relay) == [] and relay.queue() == []
        os.unlink(filler)
        replies = smtp_transaction(relay.port, body=body(300_000, "room-again"))
        assert replies[-1].startswith(b"250 2.0.0 Ok: queued as")
        got = smarthost.wait_messages(1, timeout=30)
        assert [message_id(t.content) for t in got] == ["<room-again@lan.test>"]
    assert "queue file write error" in relay.log() and "No space left on device" in relay.log()
    assert relay.proc.poll() is None and len(relay.pids()) == 3


def test_readonly_spool_replies_451_stays_alive_and_resumes_after_remount_rw(tmpfs, relay_factory, peers_loop):
    with RawSmarthost(peers_loop) as smarthost:
        relay = relay_factory(fault_config(smarthost.port, spool_dir=os.path.join(tmpfs, "spool"),
                                           message_size_limit=100_000, queue={"reserve_bytes": 0}))
        assert smtp_transaction(relay.port, body=body(2000, "before"))[-1].startswith(b"250")
        smarthost.wait_messages(1)
        pids = relay.pids()
        remount(tmpfs, "ro")
        try:
            for n in range(3):
                replies = smtp_transaction(relay.port, body=body(2000, f"ro-{n}"))
                assert replies[-1] == b"451 4.3.0 Error: queue file write error\r\n", replies
                assert not any(r.startswith(b"250 2.0.0") for r in replies)
        finally:
            remount(tmpfs, "rw")
        assert relay.pids() == pids                 # nothing crashed or restarted
        assert smtp_transaction(relay.port, body=body(2000, "after"))[-1].startswith(b"250 2.0.0 Ok")
        got = smarthost.wait_messages(2)
        assert [message_id(t.content) for t in got] == ["<before@lan.test>", "<after@lan.test>"]
    assert "Read-only file system" in relay.log()
