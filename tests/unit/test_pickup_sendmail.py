"""sendmail writes into maildrop/ only (G1 for local submissions): durable before exit 0,
nothing left behind on failure (exit 75), and the syncfs() fallback where the directory
cannot be opened for fsync (an ordinary user and a 3733 maildrop/)."""

import errno
import io
import os
import stat

import pytest

from mta_lite.commands import sendmail
from mta_lite.qmgr.pickup import Pickup
from mta_lite.queue import Spool, dirsync, read_queue_file
from mta_lite.queue.spool import MAILDROP

from tests.support.qmgr import make_config

MESSAGE = b"To: ops@remote.example\nSubject: cron output\n\nbackup ok\n"


@pytest.fixture
def cfg(tmp_path):
    return make_config(str(tmp_path / "spool"))


def _drop(cfg):
    path = os.path.join(cfg.spool_dir, MAILDROP)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_sendmail_writes_one_valid_file_into_maildrop_and_nothing_else(cfg):
    status = sendmail.submit(cfg, ["-t", "-f", "cron@lan.test"], stdin=io.BytesIO(MESSAGE))
    assert status == sendmail.EX_OK
    [name] = _drop(cfg)
    path = os.path.join(cfg.spool_dir, MAILDROP, name)
    entry = read_queue_file(path)
    assert (entry.sender, entry.recipients) == ("cron@lan.test", ("ops@remote.example",))
    assert stat.S_IMODE(os.stat(path).st_mode) == sendmail.MAILDROP_FILE_MODE
    spool = Spool(cfg.spool_dir)
    assert all(spool.list(s) == [] for s in ("incoming", "active", "deferred", "hold"))
    assert spool.staged() == []


def test_sendmail_submission_is_picked_up_into_the_queue(cfg):
    sendmail.submit(cfg, ["-f", "cron@lan.test", "ops@remote.example"], stdin=io.BytesIO(MESSAGE))
    spool = Spool(cfg.spool_dir)
    assert Pickup(spool, cfg.message_size_limit).run().picked == 1
    [queue_id] = spool.list("incoming")
    assert b"backup ok\r\n" in spool.read("incoming", queue_id).read_content() and _drop(cfg) == []


@pytest.mark.parametrize("where", ["fsync", "sync_entry", "link"])
def test_sendmail_failure_exits_75_and_leaves_nothing(cfg, monkeypatch, capsys, where):
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")
    target = {"fsync": (os, "fsync"), "sync_entry": (dirsync, "sync_entry"), "link": (os, "link")}[where]
    Spool(cfg.spool_dir).ensure()
    monkeypatch.setattr(*target, fail)
    status = sendmail.submit(cfg, ["ops@remote.example"], stdin=io.BytesIO(MESSAGE))
    monkeypatch.undo()
    assert status == sendmail.EX_TEMPFAIL and "cannot queue message" in capsys.readouterr().err
    assert _drop(cfg) == []


def test_sendmail_without_directory_read_access_uses_syncfs(cfg, monkeypatch):
    """fsync(dir) needs a readable directory; a local user gets EACCES and syncfs() instead."""
    calls = []

    def no_read_access(path):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(dirsync.safeio, "fsync_dir", no_read_access)
    monkeypatch.setattr(dirsync, "syncfs", lambda fd: calls.append(os.fstat(fd).st_ino))
    assert sendmail.submit(cfg, ["ops@remote.example"], stdin=io.BytesIO(MESSAGE)) == sendmail.EX_OK
    [name] = _drop(cfg)
    assert calls == [os.stat(os.path.join(cfg.spool_dir, MAILDROP, name)).st_ino]


def test_syncfs_failure_is_not_swallowed(cfg, monkeypatch):
    monkeypatch.setattr(dirsync.safeio, "fsync_dir",
                        lambda path: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")))
    monkeypatch.setattr(dirsync, "_libc_syncfs", lambda: _failing_syncfs)
    assert sendmail.submit(cfg, ["ops@remote.example"], stdin=io.BytesIO(MESSAGE)) == sendmail.EX_TEMPFAIL
    assert _drop(cfg) == []


def _failing_syncfs(fd):
    import ctypes
    ctypes.set_errno(errno.EIO)
    return -1


def test_syncfs_really_runs(tmp_path):
    libc_syncfs = dirsync._libc_syncfs()
    assert libc_syncfs is not None, "libc's syncfs(2) not found: every sync falls back to os.sync()"
    with open(tmp_path / "f", "wb") as handle:
        assert libc_syncfs(handle.fileno()) == 0
        dirsync.syncfs(handle.fileno())          # raises OSError on failure


def test_sendmail_interrupted_leaves_no_tmp_file(cfg):
    class Interrupting(io.BytesIO):
        def readline(self, *args):
            line = super().readline(*args)
            if b"backup" in line:
                raise KeyboardInterrupt
            return line
    with pytest.raises(KeyboardInterrupt):
        sendmail.submit(cfg, ["ops@remote.example"], stdin=Interrupting(MESSAGE))
    assert _drop(cfg) == []


def bound_config(tmp_path, clients):
    """alice@work.example uses her own smarthost login, bound to the given clients (S4)."""
    sender = {"address": "alice@work.example", "relay": "work", "username": "alice@work.example",
              "password": "pw-a", "clients": clients}
    return make_config(str(tmp_path / "spool"), senders=[sender])


def test_sendmail_sender_bound_to_other_clients_exits_77_and_writes_nothing(tmp_path, capsys):
    """S4: sendmail is no way around a [[senders]] client binding (local = 127.0.0.1)."""
    cfg = bound_config(tmp_path, ["192.168.1.20"])
    status = sendmail.submit(cfg, ["-f", "alice@work.example", "ops@remote.example"], stdin=io.BytesIO(MESSAGE))
    assert status == sendmail.EX_NOPERM == 77
    assert capsys.readouterr().err == ("sendmail: 553 5.7.1 <alice@work.example>: Sender address rejected: "
                                       "not owned by client [127.0.0.1]\n")
    assert _drop(cfg) == []


def test_sendmail_sender_bound_to_local_client_is_queued(tmp_path):
    cfg = bound_config(tmp_path, ["192.168.1.20", "127.0.0.1"])
    status = sendmail.submit(cfg, ["-f", "alice@work.example", "ops@remote.example"], stdin=io.BytesIO(MESSAGE))
    assert status == sendmail.EX_OK and len(_drop(cfg)) == 1


def test_pickup_forged_submission_with_bound_sender_goes_to_corrupt(tmp_path, caplog):
    """A local user may write maildrop/ without sendmail: pickup checks the binding again."""
    open_cfg = bound_config(tmp_path, ["192.168.1.20", "127.0.0.1"])
    sendmail.submit(open_cfg, ["-f", "alice@work.example", "ops@remote.example"], stdin=io.BytesIO(MESSAGE))
    cfg = bound_config(tmp_path, ["192.168.1.20"])
    spool = Spool(cfg.spool_dir)
    from mta_lite.identity import bound_to_other_clients
    run = Pickup(spool, cfg.message_size_limit,
                 sender_bound=lambda s: bound_to_other_clients(cfg, s, "127.0.0.1")).run()
    assert (run.picked, run.rejected) == (0, 1)
    assert spool.list("incoming") == [] and len(os.listdir(os.path.join(cfg.spool_dir, "corrupt"))) == 1
    assert "sender <alice@work.example> is bound to other clients" in caplog.text
