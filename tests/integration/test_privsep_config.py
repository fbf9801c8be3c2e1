"""The appliance's config directory under its real users (firmware/tmpfiles.d, sysusers.d):
mta-config installs a config that carries its password inline, and afterwards the queue
manager's user can load the password, the SMTP server's user can read the config but not the
password (S7), and nobody but mta-config sees the generations (C2).

Peer: none; real users (tools/install-test-deps.sh creates them) and real file modes, as root.
"""

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest
import tomli_w

from tests.integration.test_privsep_spool import _interpreter
from tests.support.relay import PASSWORD

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")

CONFIG_USER, QMGR_USER, SMTPD_USER = "mta-config", "mta-lite", "mta-smtpd"


def _groups(user: str) -> list[str]:
    return [g.gr_name for g in grp.getgrall() if user in g.gr_mem]


@pytest.fixture(scope="module")
def python():
    try:
        for user in (CONFIG_USER, QMGR_USER, SMTPD_USER):
            pwd.getpwnam(user)
    except KeyError:
        pytest.skip("users missing: run `bash tools/install-test-deps.sh` as root")
    return _interpreter(None)


@pytest.fixture
def etc():
    """/etc/mta-lite as tmpfiles.d makes it: 2751 mta-config:mta-lite, secrets/ 2750."""
    base = tempfile.mkdtemp(prefix="mta-etc-", dir="/tmp")
    os.chmod(base, 0o755)
    etc = os.path.join(base, "mta-lite")
    uid, gid = pwd.getpwnam(CONFIG_USER).pw_uid, grp.getgrnam(QMGR_USER).gr_gid
    for path, mode in ((etc, 0o2751), (os.path.join(etc, "secrets"), 0o2750)):
        os.mkdir(path)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    yield etc
    shutil.rmtree(base)


def python_as(python, user: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`python ARGS` as `user` with that user's groups, as its systemd unit would run it."""
    interpreter, env = python
    return subprocess.run([interpreter, *args], input=stdin, capture_output=True,
                          user=user, group=user, extra_groups=_groups(user), env=env, cwd="/", timeout=60)


def run_as(python, user: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`mta-lite ARGS` as `user`."""
    return python_as(python, user, "-m", "mta_lite.cli", *args, stdin=stdin)


def provisioned() -> bytes:
    return tomli_w.dumps({
        "admin_address": "admin@lan.test", "spool_dir": "/var/spool/mta-lite",
        "listen": [{"address": "127.0.0.1:2525"}],
        "relays": {"isp": {"host": "smtp.isp.test", "username": "office@isp.test", "password": PASSWORD}},
    }).encode()


def test_config_installed_by_mta_config_keeps_the_password_from_smtpd_only(python, etc):
    config = os.path.join(etc, "mta-lite.toml")
    result = run_as(python, CONFIG_USER, "-c", config, "config", "apply", "-", stdin=provisioned())
    assert result.returncode == 0, result.stderr.decode()
    info = os.stat(config)
    assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name) == (CONFIG_USER, QMGR_USER)
    assert stat.S_IMODE(info.st_mode) == 0o644
    with open(config, "rb") as handle:
        assert PASSWORD.encode() not in handle.read()
    [secret] = os.listdir(os.path.join(etc, "secrets"))
    info = os.stat(os.path.join(etc, "secrets", secret))
    assert (grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)) == (QMGR_USER, 0o640)
    # The queue manager's user loads the config with its password.
    assert run_as(python, QMGR_USER, "-c", config, "config", "check").returncode == 0
    # The SMTP server's user reads the config, never the password.
    assert run_as(python, SMTPD_USER, "-c", config, "config", "public").returncode == 0
    check = run_as(python, SMTPD_USER, "-c", config, "config", "check")
    assert check.returncode == 78 and b"relays.isp.password_file: " in check.stderr
    assert PASSWORD.encode() not in check.stdout + check.stderr
    peek = python_as(python, SMTPD_USER, "-c", "import sys; open(sys.argv[1]).read()",
                     os.path.join(etc, "secrets", secret))
    assert peek.returncode != 0 and b"PermissionError" in peek.stderr
    listing = run_as(python, SMTPD_USER, "-c", config, "config", "generations")
    assert listing.returncode != 0 or listing.stdout == b""


def test_config_rollback_by_mta_config_restores_the_earlier_password(python, etc):
    config = os.path.join(etc, "mta-lite.toml")
    first = provisioned()
    second = first.replace(PASSWORD.encode(), b"a-newer-password-42")
    for data in (first, second):
        assert run_as(python, CONFIG_USER, "-c", config, "config", "apply", "-", stdin=data).returncode == 0
    result = run_as(python, CONFIG_USER, "-c", config, "config", "rollback")
    assert result.returncode == 0, result.stderr.decode()
    show = run_as(python, QMGR_USER, "-c", config, "config", "show")
    assert show.returncode == 0 and PASSWORD.encode() not in show.stdout     # masked, as always
    probe = ("import sys; from mta_lite.config.load import load_config; "
             "print(load_config(sys.argv[1]).relays['isp'].password.reveal() == sys.argv[2])")
    check = python_as(python, QMGR_USER, "-c", probe, config, PASSWORD)
    assert check.stdout.strip() == b"True", check.stderr.decode()
