"""S7, the air gap: smtpd holds no secret, and either half can die without stopping the other.

Peers: the real daemon (`mta-lite serve`, master + smtpd + qmgr processes), Postfix's smtp-sink
as smarthost, stdlib smtplib clients; tests/support/memgrep.py reads a live process's memory.
"""

import base64
import os
import signal
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.relay import relay_config
from tests.support.peers import dump_message_id
from tests.support.relay import PASSWORD
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
MEMGREP = Path(__file__).resolve().parents[1] / "support" / "memgrep.py"


def children(relay) -> dict[str, int]:
    """{"smtpd": pid, "qmgr": pid} from the master's child processes and their names."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == relay.proc.pid and comm.startswith("mta-"):
            found[comm.removeprefix("mta-")] = int(entry.name)
    return found if {"smtpd", "qmgr"} <= set(found) else {}


def memgrep(pid: int, *needles: str) -> int:
    out = subprocess.run([sys.executable, str(MEMGREP), str(pid), *needles], capture_output=True, check=True)
    return int(out.stdout)


def secret_config(sink) -> dict:
    """A relay with credentials (tls starttls so that a username is allowed; never used here)."""
    cfg = relay_config(sink.port)
    cfg["relays"]["isp"] = {"host": "127.0.0.1", "port": 9, "tls": "starttls",
                            "username": "office@example.test", "password": PASSWORD}
    return cfg


def send(port: int, message_id: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("nas@lan.test", ["ops@remote.example"], f"Message-ID: {message_id}\r\n\r\nx\r\n")


@pytest.mark.deployed
def test_smtpd_holds_no_secret_in_memory_environment_or_files(sink_factory, relay_factory):
    relay = relay_factory(secret_config(sink_factory()))
    send(relay.port, "<before-scan@lan.test>")         # the smtpd has done real work
    pids = wait_until(lambda: children(relay), 10, what="smtpd and qmgr processes")
    b64 = base64.b64encode(PASSWORD.encode()).decode()
    plain = base64.b64encode(f"\0office@example.test\0{PASSWORD}".encode()).decode()
    smtpd = pids["smtpd"]
    assert PASSWORD.encode() not in Path(f"/proc/{smtpd}/environ").read_bytes()
    for fd in Path(f"/proc/{smtpd}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue            # closed since the listing (the session above ending)
        assert PASSWORD not in target
        if target.startswith("/") and os.path.isfile(target):
            assert PASSWORD.encode() not in Path(target).read_bytes(), f"smtpd has {target} open"
    assert memgrep(smtpd, PASSWORD, b64, plain) == 0
    # The control: the delivering half did load it, so the scan can see a secret at all.
    assert memgrep(pids["qmgr"], PASSWORD) > 0


@pytest.mark.deployed
def test_kill9_smtpd_keeps_delivery_going(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port))
    before = wait_until(lambda: children(relay), 10, what="children")
    os.kill(before["smtpd"], signal.SIGKILL)
    result = relay.cli("sendmail", "-f", "cron@lan.test", "ops@remote.example",
                       stdin=b"Message-ID: <while-smtpd-dead@lan.test>\n\nqueued without smtpd\n")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: "<while-smtpd-dead@lan.test>" in [dump_message_id(m) for m in sink.messages()], 30,
               what="delivery by qmgr")
    after = wait_until(lambda: (c := children(relay)) and c["smtpd"] != before["smtpd"] and c, 30,
                       what="the master to restart smtpd")
    assert after["qmgr"] == before["qmgr"]              # the other half never noticed
    send(relay.port, "<after-restart@lan.test>")
    wait_until(lambda: "<after-restart@lan.test>" in [dump_message_id(m) for m in sink.messages()], 30,
               what="delivery after the restart")
    assert "process smtpd pid" in relay.log() and "killed by signal 9" in relay.log()


@pytest.mark.deployed
def test_kill9_qmgr_under_load_keeps_acceptance_and_loses_nothing(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port))
    before = wait_until(lambda: children(relay), 10, what="children")
    acked: list[str] = []
    errors: list[Exception] = []

    def client(tag: int) -> None:
        for n in range(40):
            try:
                send(relay.port, f"<qmgr-kill-{tag}-{n}@lan.test>")
                acked.append(f"<qmgr-kill-{tag}-{n}@lan.test>")
            except (OSError, smtplib.SMTPException) as exc:
                errors.append(exc)
    threads = [threading.Thread(target=client, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acked) >= 20, 30, what="load to start")
    os.kill(before["qmgr"], signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(acked) == 120            # acceptance never stopped
    ids = wait_until(lambda: (got := [dump_message_id(m) for m in sink.messages()]) and set(acked) <= set(got) and got,
                     90, what="every acknowledged message at the sink")
    assert len(ids) - len(set(ids)) <= 10                # only what was in flight at the kill
    assert children(relay)["smtpd"] == before["smtpd"]
