"""The spool's permissions with real users (root only): what each process can and cannot do.

    mta-test-user  any local user: sendmail works and lands in maildrop/; cannot list
                   maildrop/, read another user's submission, or see the queue or secrets
    mta-lite       the queue manager (supplementary group mta-smtpd): picks the submission
                   up into the queue; reads and moves what smtpd queued
    mta-smtpd      the SMTP server: can queue a message into incoming/ (staged there), can ring
                   the doorbell; cannot open active/, deferred/, state/ or the secrets file,
                   nor remove a file in incoming/ that is not its own

The spool is prepared as the master does as root (perms.prepare_spool) in a directory under
/tmp that the test users can traverse; pytest's tmp_path (0700 root) would stop them.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from mta_lite.queue import Spool, read_queue_file
from mta_lite.queue.perms import prepare_spool
from mta_lite.queue.spool import DIRS, MAILDROP, valid_queue_id

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")

REPO = str(Path(__file__).resolve().parents[2])
TEST_USER, QMGR_USER, SMTPD_USER = "mta-test-user", "mta-lite", "mta-smtpd"
SECRET = "privsep-Secret-4711"
MESSAGE = b"To: ops@remote.example\nSubject: cron output\n\nbackup ok\n"

# Tries each operation given on the command line as JSON [[kind, path], ...] and prints
# {"kind path": "ok" | errno name}. Runs as the user under test.
PROBE = """
import errno, json, os, socket, sys
def attempt(kind, path):
    try:
        if kind == "list":
            os.listdir(path)
        elif kind == "read":
            with open(path, "rb") as handle:
                handle.read(1)
        elif kind == "create":
            fd = os.open(os.path.join(path, "probe"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(os.path.join(path, "probe"))
        elif kind == "unlink":
            os.unlink(path)
        elif kind == "rename":
            os.rename(path, path + ".moved")
        elif kind == "ring":
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"W", path)
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps({f"{k} {p}": attempt(k, p) for k, p in json.loads(sys.argv[1])}))
"""

QUEUE_AS_SMTPD = """
import sys
from mta_lite.envelope import Envelope
from mta_lite.queue import Spool
writer = Spool(sys.argv[1]).begin(Envelope("a@lan.test", ["b@remote.example"], "192.0.2.7", "scanner"))
writer.write(b"Subject: via smtpd\\r\\n\\r\\nbody\\r\\n")
print(writer.commit())
"""

PICKUP_AS_QMGR = """
import logging, sys
from mta_lite.qmgr.pickup import Pickup
from mta_lite.queue import Spool
logging.basicConfig(level=logging.INFO, format="%(message)s")
run = Pickup(Spool(sys.argv[1]), 10 * 1024 * 1024).run()
print(run.picked, run.rejected)
"""

MOVE_AS_QMGR = """
import sys
from mta_lite.queue import Spool
spool = Spool(sys.argv[1])
entry = spool.read("incoming", sys.argv[2])
print(entry.read_content().decode(), spool.move(sys.argv[2], "incoming", "active"))
"""

DOORBELL_AS_QMGR = """
import asyncio, sys
from mta_lite.queue import doorbell
async def main():
    got = asyncio.Event()
    bell = await doorbell.listen(sys.argv[1], lambda what: got.set())
    print("listening", flush=True)
    try:
        await asyncio.wait_for(got.wait(), 30)
        print("rang", flush=True)
    finally:
        bell.close()
asyncio.run(main())
"""


@dataclass
class Box:
    base: str
    spool: str
    config: str
    secret: str
    python: str
    env: dict

    def path(self, *parts: str) -> str:
        return os.path.join(self.spool, *parts)

    def run_as(self, user: str, args: list[str], *, groups=(), stdin: bytes | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
        # group= and extra_groups= always: without them the child keeps root's groups.
        return subprocess.run([self.python, *args], user=user, group=user, extra_groups=list(groups),
                              env=self.env, cwd=self.base, input=stdin, capture_output=True,
                              timeout=timeout)

    def sendmail(self, user: str, *args: str) -> subprocess.CompletedProcess:
        argv = ["-m", "mta_lite.cli", "-c", self.config, "sendmail", *args]
        return self.run_as(user, argv, stdin=MESSAGE)

    def probe(self, user: str, ops: list[tuple[str, str]], groups=()) -> dict[str, str]:
        result = self.run_as(user, ["-c", PROBE, json.dumps(ops)], groups=groups)
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)


def _ids() -> dict[str, int]:
    try:
        return {"qmgr_uid": pwd.getpwnam(QMGR_USER).pw_uid,
                "qmgr_gid": grp.getgrnam(QMGR_USER).gr_gid,
                "smtpd_uid": pwd.getpwnam(SMTPD_USER).pw_uid,
                "smtpd_gid": grp.getgrnam(SMTPD_USER).gr_gid,
                "user_uid": pwd.getpwnam(TEST_USER).pw_uid}
    except KeyError:
        pytest.skip("test users missing: run `bash tools/install-test-deps.sh` as root")


@pytest.fixture(scope="module")
def ids() -> dict[str, int]:
    return _ids()


def _interpreter(ids) -> tuple[str, dict]:
    """A Python the test users may execute. The tests' own, if they can reach it; a venv
    under /root (0700) is out of their reach, so else the system's python3.X of the same
    minor version, with the repository and the venv's packages on PYTHONPATH."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([REPO, sysconfig.get_paths()["purelib"]])}
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
                  f"/usr/local/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    for python in candidates:
        try:
            probe = subprocess.run([python, "-c", "import mta_lite.cli, tomli_w"], user=TEST_USER,
                                   group=TEST_USER, extra_groups=[], env=env, cwd="/",
                                   capture_output=True, timeout=60)
        except OSError:
            continue                    # not there, or not executable by that user
        if probe.returncode == 0:
            return python, env
    pytest.skip("no Python interpreter the test users can run with mta_lite importable")


@pytest.fixture(scope="module")
def interpreter(ids):
    return _interpreter(ids)


@pytest.fixture
def box(ids, interpreter):
    base = tempfile.mkdtemp(prefix="mta-privsep-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        spool = os.path.join(base, "spool")
        prepare_spool(spool, ids["qmgr_uid"], ids["smtpd_gid"])
        secret = os.path.join(base, "smarthost.password")
        with open(secret, "w") as handle:
            handle.write(SECRET + "\n")
        os.chown(secret, ids["qmgr_uid"], ids["qmgr_gid"])
        os.chmod(secret, 0o600)
        config = os.path.join(base, "mta-lite.toml")
        with open(config, "wb") as handle:
            tomli_w.dump(_config(spool), handle)
        os.chmod(config, 0o644)
        yield Box(base, spool, config, secret, *interpreter)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _config(spool: str, **relay) -> dict:
    return {"hostname": "relay.lan.test", "spool_dir": spool, "admin_address": "admin@lan.test",
            "default_relay": "isp", "relays": {"isp": {"host": "smtp.isp.example", **relay}}}


def _mode(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _drop(box: Box) -> list[str]:
    return sorted(os.listdir(box.path(MAILDROP)))


def test_sendmail_as_any_local_user_lands_in_maildrop(box, ids):
    result = box.sendmail(TEST_USER, "-f", "cron@lan.test", "ops@remote.example")
    assert result.returncode == 0, result.stderr.decode()
    [name] = _drop(box)
    assert valid_queue_id(name)
    assert _mode(box.path(MAILDROP, name)) == (ids["user_uid"], ids["qmgr_gid"], 0o640)
    entry = read_queue_file(box.path(MAILDROP, name))
    assert (entry.sender, entry.recipients) == ("cron@lan.test", ("ops@remote.example",))
    assert all(os.listdir(box.path(d)) == [] for d in ("incoming", "deferred"))


def test_local_user_cannot_see_the_queue_or_other_submissions(box, ids):
    assert box.sendmail("root", "-f", "root@lan.test", "ops@remote.example").returncode == 0
    [others] = _drop(box)
    queued = box.run_as(SMTPD_USER, ["-c", QUEUE_AS_SMTPD, box.spool]).stdout.decode().strip()
    got = box.probe(TEST_USER, [
        ("list", box.spool), ("list", box.path(MAILDROP)), ("read", box.path(MAILDROP, others)),
        ("list", box.path("incoming")), ("read", box.path("incoming", queued)),
        ("list", box.path("deferred")), ("list", box.path("state")), ("create", box.path("incoming")),
        ("list", box.path("public")), ("read", box.secret)])
    assert set(got.values()) == {"EACCES"}, got
    assert box.probe(TEST_USER, [("create", box.path(MAILDROP))]) == {
        f"create {box.path(MAILDROP)}": "ok"}


def test_pickup_as_the_queue_manager_moves_the_submission_into_the_queue(box, ids):
    assert box.sendmail(TEST_USER, "-f", "cron@lan.test", "ops@remote.example").returncode == 0
    result = box.run_as(QMGR_USER, ["-c", PICKUP_AS_QMGR, box.spool], groups=[SMTPD_USER])
    assert result.stdout.decode().split() == ["1", "0"], result.stderr.decode()
    assert f"uid={ids['user_uid']} from=<cron@lan.test>" in result.stderr.decode()
    assert _drop(box) == []
    [queue_id] = Spool(box.spool).list("incoming")
    assert _mode(box.path("incoming", queue_id))[::2] == (ids["qmgr_uid"], 0o600)
    assert b"backup ok\r\n" in Spool(box.spool).read("incoming", queue_id).read_content()


def test_smtpd_user_queues_into_incoming_and_can_reach_nothing_else(box, ids):
    result = box.run_as(SMTPD_USER, ["-c", QUEUE_AS_SMTPD, box.spool])
    assert result.returncode == 0, result.stderr.decode()
    queue_id = result.stdout.decode().strip()
    assert _mode(box.path("incoming", queue_id)) == (ids["smtpd_uid"], ids["smtpd_gid"], 0o640)
    assert Spool(box.spool).staged() == []
    denied = box.probe(SMTPD_USER, [
        ("list", box.path(d)) for d in ("active", "deferred", "hold", "state", "corrupt", MAILDROP)
    ] + [("read", box.secret), ("create", box.path("active")), ("create", box.path("public"))])
    assert set(denied.values()) == {"EACCES"}, denied
    # The queue manager reads it through its supplementary group and moves it (the sticky
    # bit does not stop the directory's owner).
    moved = box.run_as(QMGR_USER, ["-c", MOVE_AS_QMGR, box.spool, queue_id], groups=[SMTPD_USER])
    assert moved.stdout.decode().split()[-1] == "True", moved.stderr.decode()
    assert _mode(box.path("active", queue_id))[0] == ids["smtpd_uid"]


def test_smtpd_user_cannot_remove_files_in_incoming_it_does_not_own(box):
    assert box.sendmail(TEST_USER, "ops@remote.example").returncode == 0
    box.run_as(QMGR_USER, ["-c", PICKUP_AS_QMGR, box.spool], groups=[SMTPD_USER])
    [queue_id] = Spool(box.spool).list("incoming")                 # the qmgr's own copy
    path = box.path("incoming", queue_id)
    got = box.probe(SMTPD_USER, [("unlink", path), ("rename", path), ("read", path)])
    assert set(got.values()) == {"EPERM", "EACCES"} and got[f"read {path}"] == "EACCES", got


def test_doorbell_rings_for_smtpd_but_not_for_local_users(box):
    socket_path = box.path("public", "qmgr")
    listener = subprocess.Popen([box.python, "-c", DOORBELL_AS_QMGR, socket_path], user=QMGR_USER,
                                group=QMGR_USER, extra_groups=[SMTPD_USER], env=box.env, cwd=box.base,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert listener.stdout.readline() == b"listening\n", listener.stderr.read().decode()
        assert _mode(socket_path)[1:] == (grp.getgrnam(SMTPD_USER).gr_gid, 0o660)
        assert box.probe(TEST_USER, [("ring", socket_path)]) == {f"ring {socket_path}": "EACCES"}
        assert box.probe(SMTPD_USER, [("ring", socket_path)]) == {f"ring {socket_path}": "ok"}
        assert listener.stdout.readline() == b"rang\n"
    finally:
        listener.kill()
        listener.wait()
        listener.stdout.close()
        listener.stderr.close()


def test_sendmail_works_when_the_config_names_an_unreadable_password_file(box):
    with open(box.config, "wb") as handle:
        relay = {"username": "office@example.test", "password_file": box.secret}
        tomli_w.dump(_config(box.spool, **relay), handle)
    result = box.sendmail(TEST_USER, "ops@remote.example")
    assert result.returncode == 0, result.stderr.decode()
    assert SECRET.encode() not in result.stderr


def test_prepared_spool_gives_others_only_traversal_and_maildrop_creation(box):
    """Others may traverse the root and public/ (the board reads status.json by name) and
    create in maildrop/; they may list nothing."""
    for name in (".", *DIRS):
        other = stat.S_IMODE(os.stat(box.path(name)).st_mode) & 0o007
        assert other == {".": 0o001, "public": 0o001, MAILDROP: 0o003}.get(name, 0), name


READ_STATUS = """
import json, sys
from mta_lite.status import read_status
print(json.dumps(read_status(sys.argv[1]).queue))
"""


def test_board_user_reads_the_status_file_and_the_queue_managers_counts(box):
    """The board (user mta-config on the box; any other user here) shows the status on its
    LEDs and console: it reads public/status.json by name, lists nothing, and gets the queue
    counts the queue manager wrote for the directories it may not list."""
    from mta_lite.status import StatusSnapshot, write_status
    write_status(box.spool, StatusSnapshot(pid=1, queue={"deferred": 4, "active": 2}))
    status_file = box.path("public", "status.json")
    os.chown(status_file, pwd.getpwnam(QMGR_USER).pw_uid, -1)
    got = box.probe(TEST_USER, [("read", status_file), ("list", box.path("public"))])
    assert got == {f"read {status_file}": "ok", f"list {box.path('public')}": "EACCES"}
    result = box.run_as(TEST_USER, ["-c", READ_STATUS, box.spool])
    assert result.returncode == 0, result.stderr.decode()
    queue = json.loads(result.stdout)
    assert queue["deferred"] == 4 and queue["active"] == 2
