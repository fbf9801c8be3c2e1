"""G1 with /dev/full as the queue file: every write to it fails with ENOSPC.

Peers: the kernel's /dev/full under the real Spool/QueueWriter, a real Listener on 127.0.0.1:0
in an event-loop thread, stdlib smtplib as the client. Unit level: no daemon process.
"""

from __future__ import annotations

import os
import smtplib

import pytest

from mta_lite.config.schema import Listen
from mta_lite.envelope import Envelope
from mta_lite.errors import SpoolError
from mta_lite.queue import Spool
from mta_lite.queue.spool import WRITE_BUFFER_BYTES
from mta_lite.smtpd.listener import Listener
from tests.support.dialogs import make_config
from tests.support.faults import LoopThread


class DevFullSpool(Spool):
    """A real spool whose next `full` writers write into /dev/full instead of incoming/.tmp-ID."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.full = 0

    def begin(self, envelope, is_bounce=False, now=None, **kwargs):
        writer = super().begin(envelope, is_bounce, now, **kwargs)
        if self.full:
            self.full -= 1
            writer._file.close()
            # Buffered like the real file: small messages fail at commit's flush, big ones
            # at a write in the middle of DATA.
            writer._file = open("/dev/full", "wb", buffering=WRITE_BUFFER_BYTES)
        return writer


@pytest.fixture
def spool(tmp_path):
    return DevFullSpool(str(tmp_path / "spool")).ensure()


def listing(spool: Spool, state: str) -> list[str]:
    return os.listdir(os.path.join(spool.root, state))


def test_commit_into_dev_full_raises_spool_error_and_leaves_nothing(spool):
    spool.full = 1
    writer = spool.begin(Envelope("a@lan.test", ["b@remote.example"]))
    writer.write(b"Subject: x\r\n\r\nsmall enough to sit in the buffer\r\n")
    with pytest.raises(SpoolError, match="No space left on device"):
        writer.commit()
    assert spool.staged() == [] and listing(spool, "incoming") == []


@pytest.mark.parametrize("size", [100, 3 * WRITE_BUFFER_BYTES])
def test_listener_with_dev_full_queue_file_replies_451_then_recovers(spool, tmp_path, size):
    cfg = make_config(tmp_path, message_size_limit=10_000_000)
    loop = LoopThread()
    listener = Listener(cfg, Listen("127.0.0.1", 0), spool, ring=lambda: None)
    try:
        loop.call(listener.start())
        port = listener.address[1]
        spool.full = 1
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("pc.lan.test")
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@lan.test", ["b@remote.example"],
                                b"Subject: full\r\n\r\n" + (b"y" * 70 + b"\r\n") * (size // 72 + 1))
            assert (refused.value.smtp_code, refused.value.smtp_error) == (451, b"4.3.0 Error: queue file write error")
            assert client.noop()[0] == 250
            client.sendmail("a@lan.test", ["b@remote.example"], b"Subject: fine\r\n\r\nok\r\n")
        assert spool.staged() == [] and len(listing(spool, "incoming")) == 1
        entry = spool.read("incoming", spool.list("incoming")[0])
        assert b"Subject: fine" in entry.read_content()
        assert listener.counters.accepted == 1 and listener.counters.errors == 0
    finally:
        loop.call(listener.close(grace_s=1))
        loop.close()
