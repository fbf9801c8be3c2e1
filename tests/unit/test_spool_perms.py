"""Spool permissions (perms.prepare_spool) and the file modes the writers use.

Not root: the layout is applied with the current uid/gid (fchown to oneself is allowed).
Root: also with the real users mta-lite / mta-smtpd (tools/install-test-deps.sh), plus the
adoption of root-owned files and the refusal to follow a planted symlink.
"""

import grp
import os
import pwd
import stat
import time

import pytest

from mta_lite.envelope import Envelope
from mta_lite.errors import SpoolError
from mta_lite.queue import Spool
from mta_lite.queue.perms import LAYOUT, ROOT_MODE, prepare_spool
from mta_lite.queue.spool import DIRS, MAILDROP, MessageState

EXPECTED_MODES = {
    ".": 0o751, "incoming": 0o3770, "active": 0o700, "deferred": 0o700,
    "hold": 0o700, "corrupt": 0o700, "state": 0o700, "public": 0o2751, MAILDROP: 0o3733,
    "postscreen": 0o2770,
}
SMTPD_GROUP = {".", "incoming", "public", "postscreen"}
IS_ROOT = os.geteuid() == 0


def _users():
    try:
        return (pwd.getpwnam("mta-lite").pw_uid, grp.getgrnam("mta-smtpd").gr_gid,
                pwd.getpwnam("mta-lite").pw_gid)
    except KeyError:
        return None


def _layout(root):
    return {name: os.stat(os.path.join(root, name)) for name in EXPECTED_MODES}


def _check(root, uid, smtpd_gid, owner_gid):
    for name, st in _layout(root).items():
        assert stat.S_IMODE(st.st_mode) == EXPECTED_MODES[name], name
        assert st.st_uid == uid, name
        assert st.st_gid == (smtpd_gid if name in SMTPD_GROUP else owner_gid), name


def _queue_one(spool, **kwargs):
    writer = spool.begin(Envelope("a@lan.test", ["b@remote.example"], "127.0.0.1", "x"), **kwargs)
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    return writer.commit()


def test_layout_describes_every_spool_directory():
    assert set(LAYOUT) == set(DIRS) and ROOT_MODE == EXPECTED_MODES["."]


def test_prepare_spool_as_current_user_applies_the_layout(tmp_path):
    root = str(tmp_path / "spool")
    prepare_spool(root, os.getuid(), os.getgid(), owner_gid=os.getgid())
    _check(root, os.getuid(), os.getgid(), os.getgid())


def test_prepare_spool_is_idempotent_and_corrects_modes(tmp_path):
    root = str(tmp_path / "spool")
    prepare_spool(root, os.getuid(), os.getgid(), owner_gid=os.getgid())
    os.chmod(os.path.join(root, "active"), 0o777)
    os.chmod(os.path.join(root, MAILDROP), 0o700)
    prepare_spool(root, os.getuid(), os.getgid(), owner_gid=os.getgid())
    _check(root, os.getuid(), os.getgid(), os.getgid())


def test_prepare_spool_without_users_is_ensure(tmp_path):
    root = str(tmp_path / "spool")
    spool = prepare_spool(root, None, None)
    assert isinstance(spool, Spool)
    for name in DIRS:
        st = os.stat(os.path.join(root, name))
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077 == 0, name


def test_prepare_spool_refuses_a_symlinked_directory(tmp_path):
    root = str(tmp_path / "spool")
    Spool(root).ensure()
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    os.rmdir(os.path.join(root, "hold"))
    os.symlink(target, os.path.join(root, "hold"))
    with pytest.raises(SpoolError, match="hold"):
        prepare_spool(root, os.getuid(), os.getgid(), owner_gid=os.getgid())
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


def test_queue_files_are_group_readable_whatever_the_umask(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    old = os.umask(0o077)
    try:
        queue_id = _queue_one(spool)
        drop_id = _queue_one(spool, target=MAILDROP, mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(spool.path("incoming", queue_id)).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(spool.path(MAILDROP, drop_id)).st_mode) == 0o640
    assert os.listdir(os.path.join(spool.root, MAILDROP)) == [drop_id]   # no .tmp- left
    assert spool.staged() == []


def test_each_writer_stages_in_its_target_directory_only(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    envelope = Envelope("a@lan.test", ["b@remote.example"])
    drop, new = spool.begin(envelope, target=MAILDROP), spool.begin(envelope)
    assert os.listdir(os.path.join(spool.root, MAILDROP)) == [f".tmp-{drop.queue_id}"]
    assert os.listdir(os.path.join(spool.root, "incoming")) == [f".tmp-{new.queue_id}"]
    assert spool.list("incoming") == []                 # never taken for a queued message
    drop.abort()
    new.abort()
    assert os.listdir(os.path.join(spool.root, MAILDROP)) == [] and spool.staged() == []


def test_writer_refuses_other_targets(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    with pytest.raises(ValueError):
        spool.begin(Envelope("a@lan.test", ["b@remote.example"]), target="deferred")


def test_state_files_are_readable_by_the_queue_owner_whoever_wrote_them(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    spool.save_state(MessageState("0123456789ABCDEF", attempts=1))
    path = os.path.join(spool.root, "state", "0123456789ABCDEF.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.join(spool.root, "state")).st_mode) & 0o077 == 0


def test_purge_staging_with_an_age_keeps_live_files_and_queued_mail(tmp_path):
    spool = Spool(str(tmp_path / "spool")).ensure()
    queued = _queue_one(spool)
    old, live = (os.path.join(spool.root, "incoming", n) for n in (".tmp-old", ".tmp-live"))
    for path in (old, live):
        open(path, "wb").close()
    now = time.time()
    for path in (old, spool.path("incoming", queued)):
        os.utime(path, (now - 7200, now - 7200))
    assert spool.purge_staging(older_than_s=3600, now=now) == 1
    assert spool.staged() == [".tmp-live"]
    assert spool.purge_staging() == 1 and spool.staged() == [] and spool.list("incoming") == [queued]


@pytest.mark.skipif(not IS_ROOT, reason="needs root to chown to other users")
def test_prepare_spool_as_root_with_the_real_users(tmp_path):
    users = _users()
    if users is None:
        pytest.skip("users mta-lite/mta-smtpd missing: run tools/install-test-deps.sh as root")
    uid, smtpd_gid, owner_gid = users
    root = str(tmp_path / "spool")
    prepare_spool(root, uid, smtpd_gid)
    _check(root, uid, smtpd_gid, owner_gid)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to own files as root and chown them")
def test_prepare_spool_adopts_root_files_but_not_links(tmp_path):
    users = _users()
    if users is None:
        pytest.skip("users mta-lite/mta-smtpd missing: run tools/install-test-deps.sh as root")
    uid, smtpd_gid, _ = users
    spool = Spool(str(tmp_path / "spool")).ensure()
    queue_id = _queue_one(spool)                     # written by root, as the old daemon did
    spool.move(queue_id, "incoming", "deferred")
    outside = tmp_path / "outside"
    outside.write_bytes(b"root's")
    os.link(outside, os.path.join(spool.root, "hold", "hardlink"))
    os.symlink(outside, os.path.join(spool.root, "state", "symlink"))
    prepare_spool(spool.root, uid, smtpd_gid)
    assert os.stat(spool.path("deferred", queue_id)).st_uid == uid
    assert os.stat(outside).st_uid == 0
    assert os.lstat(os.path.join(spool.root, "state", "symlink")).st_uid == 0
