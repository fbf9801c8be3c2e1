"""preflight: the rules of `mta-lite check` on facts built by hand, and the probe as a real
service user (root only: it forks and drops to mta-smtpd, as the relay does)."""

import os
import pwd
import socket
import tempfile
from pathlib import Path

import pytest

from mta_lite.process.sockets import R421_DOWN, turn_away
from mta_lite.commands.check import (Access, Problem, layout_problems, probe_as, reach_problems, secret_problems,
                                tamper_problems)
from mta_lite.process.privsep import PrivilegeError, ServiceUser
from mta_lite.queue.perms import LAYOUT

SMTPD = ServiceUser("mta-smtpd", 999, 999, (999,))
QMGR = ServiceUser("mta-lite", 995, 995, (995, 999))
PW = "/etc/mta-lite/isp.pw"


def test_problem_line_names_path_user_and_fix():
    assert Problem(PW, "mta-smtpd", "can read this password file", f"chmod o-rwx {PW}").line() == \
        f"{PW}: mta-smtpd: can read this password file; fix: chmod o-rwx {PW}"
    assert Problem("/x", "", "y", "z", fatal=False).line() == "warning: /x: y; fix: z"


@pytest.mark.parametrize("owner, mode, fix", [
    (0, 0o644, f"chmod o-rwx {PW}"),            # world-readable
    (0, 0o640, f"chmod g-rwx {PW}"),            # readable through a group smtpd is in
    (999, 0o600, f"chown root {PW}"),           # smtpd's own file
])
def test_secret_readable_by_smtpd_is_fatal_with_the_fitting_fix(owner, mode, fix):
    problems = secret_problems([PW], SMTPD, {PW: Access(readable=True)}, {PW: (owner, mode)})
    assert problems == [Problem(PW, "mta-smtpd", "can read this password file", fix)]


def test_secret_smtpd_cannot_read_is_fine():
    assert secret_problems([PW], SMTPD, {PW: Access(readable=False)}, {PW: (0, 0o600)}) == []


def test_inline_password_config_readable_by_smtpd_says_to_move_it():
    cfg = "/etc/mta-lite/mta-lite.toml"
    [problem] = secret_problems([cfg], SMTPD, {cfg: Access(readable=True)}, {cfg: (0, 0o644)}, inline_in=cfg)
    assert "holds a smarthost password inline" in problem.what and "mta-lite config apply" in problem.what


def test_tamper_writable_file_or_swappable_directory_is_fatal():
    files = {"/etc/a.toml": "config file", "/etc/k/key.pem": "TLS key"}
    facts = {"/etc/a.toml": Access(readable=True, writable=True),
             "/etc/k/key.pem": Access(replaceable_at="/etc/k")}
    owners = {"/etc/a.toml": (0, 0o666), "/etc/k": (999, 0o755)}
    assert tamper_problems(files, "mta-smtpd", 999, facts, owners) == [
        Problem("/etc/a.toml", "mta-smtpd", "can change this config file", "chmod go-w /etc/a.toml"),
        Problem("/etc/k/key.pem", "mta-smtpd", "can replace this TLS key through /etc/k", "chown root /etc/k")]


def test_layout_problem_for_a_wrong_mode_points_to_check_fix():
    root = "/var/spool/mta-lite"
    found = {root: (995, 999, 0o751)}
    for name, (mode, group) in LAYOUT.items():
        found[f"{root}/{name}"] = (995, 995 if group == "owner" else 999, mode)
    assert layout_problems(root, QMGR, SMTPD, found) == []
    found[f"{root}/incoming"] = (995, 999, 0o777)
    [problem] = layout_problems(root, QMGR, SMTPD, found)
    assert problem.path == f"{root}/incoming" and "mode 0777" in problem.what and problem.fix == "mta-lite check --fix"


def test_reach_problems_are_warnings_naming_the_blocking_directory():
    paths = {"/root/py/lib": ("directory of the interpreter's files", "read"),
             "/srv/spool/maildrop": ("maildrop directory", "write")}
    facts = {"/root/py/lib": Access(blocked_at="/root"), "/srv/spool/maildrop": Access(readable=True)}
    problems = reach_problems(paths, "nobody", facts, "why")
    assert [p.fatal for p in problems] == [False, False]
    assert problems[0].fix == "chmod o+x /root (or keep it out of /root)"
    assert problems[1].what == "cannot write this maildrop directory: why"


def test_service_user_lookup_names_the_missing_user():
    with pytest.raises(PrivilegeError, match="'no-such-mta-user' does not exist"):
        ServiceUser.lookup("no-such-mta-user")


@pytest.fixture
def world_dir():
    """A directory every user may enter (pytest's own tmp_path is under a 0700 directory)."""
    with tempfile.TemporaryDirectory(prefix="mta-preflight-", dir="/tmp") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@pytest.fixture
def as_smtpd():
    if os.geteuid() != 0:
        pytest.skip("probing as another user needs root")
    try:
        entry = pwd.getpwnam("mta-smtpd")
    except KeyError:
        pytest.skip("user mta-smtpd missing (tools/install-test-deps.sh)")
    return ServiceUser.lookup(entry.pw_name)


def test_probe_as_a_service_user_finds_the_blocking_directory_and_what_it_can_do(world_dir, as_smtpd):
    top = world_dir / "top"
    (top / "etc").mkdir(parents=True)
    secret, open_file = top / "etc" / "isp.pw", top / "etc" / "open.txt"
    secret.write_text("x")
    open_file.write_text("x")
    os.chmod(secret, 0o600)
    os.chmod(open_file, 0o666)
    for path in (top, top / "etc"):
        os.chmod(path, 0o755)
    facts = probe_as(as_smtpd, [str(secret), str(open_file)])
    assert facts[str(secret)] == Access(readable=False, writable=False)
    assert facts[str(open_file)] == Access(readable=True, writable=True)
    os.chmod(top, 0o700)
    assert probe_as(as_smtpd, [str(secret)])[str(secret)].blocked_at == str(top)
    os.chmod(top, 0o777)
    assert probe_as(as_smtpd, [str(secret)])[str(secret)].replaceable_at == str(top)
    os.chmod(top, 0o1777)       # sticky, like /tmp: the entry is root's, so it cannot be swapped
    assert probe_as(as_smtpd, [str(secret)])[str(secret)].replaceable_at == ""


# ---------------------------------------------------------------- while smtpd is down

def _listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def test_turn_away_answers_421_on_plain_ports_and_closes_implicit_tls_ports():
    plain, implicit = _listener(), _listener()
    clients = [socket.create_connection(s.getsockname(), timeout=5) for s in (plain, plain, implicit)]
    try:
        # The connections are complete in the kernel's accept queue before the call.
        assert turn_away([plain, implicit], [True, False]) == 3
        assert [c.recv(100) for c in clients] == [R421_DOWN, R421_DOWN, b""]
        assert turn_away([plain, implicit], [True, False]) == 0      # nobody waiting: no block
    finally:
        for sock in (*clients, plain, implicit):
            sock.close()
