"""`mta-lite serve` started as root: smtpd runs as mta-smtpd, qmgr as mta-lite, mail flows.

Peers: the real daemon with the real system users (tools/install-test-deps.sh creates them),
Postfix's smtp-sink as smarthost, stdlib smtplib as LAN client.
"""

import os
import pwd
import shutil
import site
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.relay import relay_config
from tests.integration.test_privsep import children
from tests.support.peers import dump_message_id
from tests.support.relay import PASSWORD, RelayProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


REPO = Path(__file__).resolve().parents[2]


def _interpreter() -> tuple[str, dict]:
    """A Python the dropped users can read: the venv's base may sit in root's home (0700),
    so use the system's 3.11 with the repository and the venv's packages on the path."""
    python = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}
    probe = subprocess.run([python, "-c", "import mta_lite.process.services, aiosmtplib, tomli_w"], env=env,
                           user="mta-smtpd", capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"the dropped users cannot load mta-lite from here: {probe.stderr.decode()[-200:]}")
    return python, env


@pytest.fixture
def box(sink_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    try:
        qmgr, smtpd = pwd.getpwnam("mta-lite"), pwd.getpwnam("mta-smtpd")
    except KeyError:
        pytest.skip("users mta-lite/mta-smtpd missing (tools/install-test-deps.sh creates them)")
    top = tempfile.mkdtemp(prefix="mta-privsep-", dir="/tmp")
    os.chmod(top, 0o755)
    secrets = Path(top, "secrets")
    secrets.mkdir(mode=0o700)
    (secrets / "isp.pw").write_text(PASSWORD + "\n")
    os.chmod(secrets / "isp.pw", 0o600)
    for path in (secrets, secrets / "isp.pw"):
        os.chown(path, qmgr.pw_uid, qmgr.pw_gid)
    sink = sink_factory()
    config = relay_config(sink.port)
    config["relays"]["isp"] = {"host": "127.0.0.1", "port": 9, "tls": "starttls",
                               "username": "office@example.test", "password_file": str(secrets / "isp.pw")}
    config["master"] = {"smtpd_user": "mta-smtpd", "qmgr_user": "mta-lite"}
    python, env = _interpreter()
    relay = RelayProcess(top, config, python=python, env=env)
    os.chmod(relay.config_path, 0o644)
    yield relay, sink, qmgr.pw_uid, smtpd.pw_uid, secrets / "isp.pw"
    relay.stop()
    shutil.rmtree(top, ignore_errors=True)


def test_serve_as_root_runs_each_half_as_its_own_user_and_relays(box):
    relay, sink, qmgr_uid, smtpd_uid, password_file = box
    relay.start()
    pids = wait_until(lambda: children(relay), 15, what="smtpd and qmgr processes")
    # Each child reads its config and keys as root first, then drops for good.
    wait_until(lambda: (_uid(pids["smtpd"]), _uid(pids["qmgr"])) == (smtpd_uid, qmgr_uid), 15,
               what="both halves to run as their own users")
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.sendmail("scanner@lan.test", ["ops@remote.example"], "Message-ID: <privsep@lan.test>\r\n\r\nscan\r\n")
    wait_until(lambda: "<privsep@lan.test>" in [dump_message_id(m) for m in sink.messages()], 30,
               what="delivery through the separated halves")
    # qmgr read the password file (its config names it, and it delivered); smtpd's user cannot.
    denied = subprocess.run(["cat", str(password_file)], user="mta-smtpd", capture_output=True)
    assert denied.returncode != 0 and PASSWORD.encode() not in denied.stdout
    assert os.stat(relay.spool).st_uid == qmgr_uid
