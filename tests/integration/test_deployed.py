"""Deployed mode: started as root with files an admin wrote by hand, it works the first time.

Each test starts the real `mta-lite serve` as root, dropping to mta-smtpd and mta-lite, with
the config, password files, CA file and TLS key root-owned 0600 in a 0700 directory, the
spool under a 0700 directory and the interpreter where the service users cannot read it
(tests/support/relay.py, deployed=True). Peers: Postfix as smarthost (STARTTLS + SASL) or Postfix's
smtp-sink, swaks and stdlib smtplib as LAN clients; the board's LED patterns read the real
status files.
"""

import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import stat
import tempfile
import time
from email.utils import make_msgid
from pathlib import Path

import pytest
import trustme

from mta_lite_board.patterns import FAST_BLINK, pattern_for
from mta_lite.status import read_status
from tests.support.relay import relay_config
from tests.integration.test_privsep import children
from tests.support.peers import dump_message_id, free_port, swaks
from tests.support.relay import PASSWORD, RelayProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


class Boxes:
    """Deployed relays made in `top`; every one is stopped at the end of the test. With
    open_to_all, each one's work and config directories are 0755, as /etc/mta-lite is, so
    a file in them is only as private as its own mode."""

    def __init__(self, top: Path, open_to_all: bool = False) -> None:
        self.top, self.open_to_all, self.made = top, open_to_all, []

    def __call__(self, config: dict, start: bool = True) -> RelayProcess:
        workdir = self.top / f"box{len(self.made)}"
        workdir.mkdir()
        relay = RelayProcess(str(workdir), config, deployed=True)
        if self.open_to_all:
            for path in (workdir, relay.etc):
                os.chmod(path, 0o755)
        self.made.append(relay)
        return relay.start() if start else relay

    def stop(self) -> None:
        for relay in self.made:
            relay.stop()


@pytest.fixture
def box(tmp_path, deployed_only):
    """A deployed relay's factory: 0700 work directory under pytest's (0700) directories."""
    boxes = Boxes(tmp_path)
    yield boxes
    boxes.stop()


@pytest.fixture
def open_box(deployed_only):
    """A deployed relay's factory whose directories every user may enter."""
    top = Path(tempfile.mkdtemp(prefix="mta-open-box-", dir="/tmp"))
    os.chmod(top, 0o755)
    boxes = Boxes(top, open_to_all=True)
    yield boxes
    boxes.stop()
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def deployed_only():
    if os.geteuid() != 0:
        pytest.skip("the deployed mode starts the daemon as root")


@pytest.fixture(scope="module")
def lan_cert(tmp_path_factory):
    base = tmp_path_factory.mktemp("lan-tls")
    cert = trustme.CA().issue_cert("relay.lan.test", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    cert.private_key_pem.write_to_path(str(base / "key.pem"))
    return str(base / "cert.pem"), str(base / "key.pem")


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def send(port: int, message_id: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("scanner@lan.test", ["ops@remote.example"], f"Message-ID: {message_id}\r\n\r\nscan\r\n")


def first_line(port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return sock.recv(512)


def tls_listener(relay: RelayProcess, cert: tuple[str, str]) -> None:
    relay.config["listen"] = [{"address": "127.0.0.1:0", "tls_cert": cert[0], "tls_key": cert[1]}]
    relay.write_config()


def test_admin_written_files_work_the_first_time(smarthost, box, lan_cert):
    """The three defects of files written by hand: a root-only password file (qmgr crash
    loop), a root-only TLS key (smtpd traceback loop), config and spool under a 0700
    directory (both crash-looping); `mta-lite check` passes and mail flows."""
    relay = box({"default_relay": "isp", "queue": {"min_backoff": "1s", "max_backoff": "2s"},
                 "relays": {"isp": {"host": "127.0.0.1", "port": smarthost.port, "tls": "starttls",
                                    "ca_file": str(smarthost.ca_file), "username": "office@example.test",
                                    "password": PASSWORD}}}, start=False)
    tls_listener(relay, lan_cert)
    etc = Path(relay.etc)
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700 and stat.S_IMODE(Path(relay.workdir).stat().st_mode) == 0o700
    for path in etc.iterdir():
        assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (0, 0o600), path
    check = relay.cli("check")
    assert check.returncode == 0, check.stderr.decode()
    relay.start()
    pids = wait_until(lambda: children(relay), 15, what="smtpd and qmgr")
    wait_until(lambda: {_uid(pids["smtpd"]), _uid(pids["qmgr"])}.isdisjoint({0}), 15, what="the drop")
    subject = "deployed " + make_msgid(domain="lan.test")
    result = swaks("--server", f"127.0.0.1:{relay.port}", "--tls", "--from", "scanner@lan.test",
                   "--to", "ops@remote.example", "--header", f"Subject: {subject}")
    assert result.returncode == 0, result.stdout
    got = wait_until(lambda: next((d for d in smarthost.delivered() if subject.encode() in d.raw), None), 60,
                     what="delivery through the smarthost")
    assert got.sasl_username == "office@example.test"
    assert "restarting in" not in relay.log()


def test_check_names_path_user_and_fix_and_serve_refuses_before_binding(sink_factory, open_box):
    port = free_port()      # a port known beforehand: the test shows that it is never bound
    relay = open_box({**relay_config(sink_factory().port), "listen": [{"address": f"127.0.0.1:{port}"}], "relays": {"isp": {
        "host": "127.0.0.1", "port": 9, "tls": "starttls", "username": "office@example.test", "password": PASSWORD}},
        "default_relay": "isp"}, start=False)
    password_file = next(Path(relay.etc).glob("*.pw"))
    os.chmod(password_file, 0o644)          # the admin's `echo pw > file` under umask 022
    check = relay.cli("check")
    line = (f"mta-lite: check: {password_file}: mta-smtpd: can read this password file; "
            f"fix: chmod o-rwx {password_file}")
    assert check.returncode == 78 and line in check.stderr.decode().splitlines()
    assert PASSWORD not in check.stderr.decode()
    with pytest.raises(RuntimeError, match="exited with 78"):
        relay.start(timeout=20)
    assert line in relay.log().splitlines()
    with pytest.raises(ConnectionRefusedError):
        first_line(port)                    # nothing was ever bound
    os.chmod(password_file, 0o600)
    assert relay.cli("check").returncode == 0


def test_check_fix_repairs_the_spool_layout_and_nothing_else(sink_factory, box):
    relay = box(relay_config(sink_factory().port))
    relay.stop()
    tmp_dir = Path(relay.spool, "incoming")
    os.chmod(tmp_dir, 0o777)
    os.chmod(relay.config_path, 0o640)
    check = relay.cli("check")
    assert check.returncode == 78
    assert any(line.startswith(f"mta-lite: check: {tmp_dir}: is ") and line.endswith("fix: mta-lite check --fix")
               and "mode 0777, the spool layout wants" in line for line in check.stderr.decode().splitlines())
    fixed = relay.cli("check", "--fix")
    assert fixed.returncode == 0, fixed.stderr.decode()
    assert stat.S_IMODE(tmp_dir.stat().st_mode) == 0o3770
    assert stat.S_IMODE(os.stat(relay.config_path).st_mode) == 0o640     # outside the spool: untouched


def _processes(relay: RelayProcess) -> dict:
    return json.loads(relay.cli("status", "--json").stdout)["processes"]


def test_smtpd_config_error_is_reported_not_looped_and_its_ports_answer_421(sink_factory, box, lan_cert):
    sink = sink_factory()
    relay = box(relay_config(sink.port), start=False)
    tls_listener(relay, lan_cert)
    relay.start()
    key = next(Path(relay.etc).glob("*key.pem"))
    good = key.read_bytes()
    key.write_bytes(b"not a key\n")                     # replaced badly by hand; then smtpd dies
    os.kill(wait_until(lambda: children(relay), 15, what="smtpd")["smtpd"], signal.SIGKILL)
    wait_until(lambda: _processes(relay).get("smtpd", {}).get("state") == "config_error", 20, what="config error")
    reason = _processes(relay)["smtpd"]["reason"]
    assert "cannot use tls_cert" in reason and str(key) in reason
    assert "smtpd: config error since" in relay.cli("status").stdout.decode()
    assert pattern_for(read_status(relay.spool), time.time()).alert == FAST_BLINK
    # Answered by the master (a client left waiting would time out in first_line instead).
    assert first_line(relay.port).startswith(b"421 4.3.2 Service currently unavailable")
    # Delivery goes on while smtpd is down: a local submission reaches the sink.
    submitted = relay.cli("sendmail", "-f", "cron@lan.test", "ops@remote.example",
                          stdin=b"Message-ID: <while-down@lan.test>\r\n\r\nnightly\r\n")
    assert submitted.returncode == 0, submitted.stderr.decode()
    wait_until(lambda: "<while-down@lan.test>" in [dump_message_id(m) for m in sink.messages()], 30,
               what="delivery while smtpd is down")
    # One line per restart attempt, each with the reason, the waits growing: no tight loop.
    wait_until(lambda: relay.log().count("exit status 78 (config error:") >= 2, 20, what="a second attempt")
    waits = [line.rsplit("restarting in ", 1)[1] for line in relay.log().splitlines()
               if "process smtpd" in line and "exit status 78 (config error:" in line]
    assert waits[:2] == ["2s", "4s"]
    key.write_bytes(good)
    relay.proc.send_signal(signal.SIGHUP)               # the admin's fix, then a reload
    wait_until(lambda: first_line(relay.port).startswith(b"220 "), 20, what="smtpd back")
    wait_until(lambda: _processes(relay)["smtpd"]["state"] == "running", 20, what="the config error cleared")
    send(relay.port, "<after-fix@lan.test>")
    wait_until(lambda: "<after-fix@lan.test>" in [dump_message_id(m) for m in sink.messages()], 30,
               what="delivery after the fix")


def test_qmgr_config_error_keeps_mail_coming_in(sink_factory, box):
    sink = sink_factory()
    config = relay_config(sink.port)
    config["senders"] = [{"address": "nas@lan.test", "relay": "sink", "username": "nas", "password": PASSWORD}]
    config["relays"]["sink"]["tls"] = "starttls"        # a username needs TLS; nas@ never sends here
    config["relays"]["plain"] = {"host": "127.0.0.1", "port": sink.port, "tls": "none"}
    config["default_relay"] = "plain"
    relay = box(config)
    password_file = next(Path(relay.etc).glob("*.pw"))
    moved = password_file.with_suffix(".away")
    shutil.move(password_file, moved)                   # gone from under a running relay
    os.kill(wait_until(lambda: children(relay), 15, what="qmgr")["qmgr"], signal.SIGKILL)
    wait_until(lambda: _processes(relay).get("qmgr", {}).get("state") == "config_error", 20, what="config error")
    assert "password_file" in _processes(relay)["qmgr"]["reason"]
    send(relay.port, "<queued-while-qmgr-down@lan.test>")      # smtpd still takes mail: 250
    shutil.move(moved, password_file)
    wait_until(lambda: "<queued-while-qmgr-down@lan.test>" in [dump_message_id(m) for m in sink.messages()], 90,
               what="delivery once qmgr can start again")
    wait_until(lambda: _processes(relay)["qmgr"]["state"] == "running", 20, what="the config error cleared")


def test_reload_that_fails_the_preflight_keeps_the_running_config(sink_factory, open_box):
    sink = sink_factory()
    config = relay_config(sink.port)
    config["relays"]["isp"] = {"host": "127.0.0.1", "port": 9, "tls": "starttls",
                               "username": "office@example.test", "password": PASSWORD}
    relay = open_box(config)
    password_file = next(Path(relay.etc).glob("*.pw"))
    os.chmod(password_file, 0o644)
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload (SIGHUP) failed, keeping the running configuration" in relay.log(), 20,
               what="the refused reload")
    assert f"mta-smtpd: can read this password file; fix: chmod o-rwx {password_file}" in relay.log()
    send(relay.port, "<still-running@lan.test>")
    wait_until(lambda: "<still-running@lan.test>" in [dump_message_id(m) for m in sink.messages()], 30,
               what="delivery with the running config")


def test_status_snapshot_written_through_the_boxs_symlink_into_ram(sink_factory, box):
    """The box links public/status.json into /run (firmware/tmpfiles.d): the queue manager,
    dropped to its user, writes the snapshot where the link points, the link stays, and
    readers of the spool's name see a running relay."""
    relay = box(relay_config(sink_factory().port))
    relay.stop()
    ram = Path(tempfile.mkdtemp(prefix="mta-run-", dir="/tmp"))
    try:
        shutil.chown(ram, "mta-lite", "mta-lite")
        link = Path(relay.spool, "public", "status.json")
        link.unlink(missing_ok=True)
        link.symlink_to(ram / "status.json")
        relay.start()
        wait_until(lambda: (ram / "status.json").exists(), 20, what="the snapshot in the RAM directory")
        assert link.is_symlink() and os.readlink(link) == str(ram / "status.json")
        written = ram / "status.json"
        assert json.loads(written.read_text())["pid"] in relay.pids()
        assert written.stat().st_uid == pwd.getpwnam("mta-lite").pw_uid       # by the queue manager
        assert read_status(relay.spool).running
        assert [name for name in os.listdir(ram) if name.startswith(".tmp-")] == []
    finally:
        relay.stop()
        shutil.rmtree(ram, ignore_errors=True)
