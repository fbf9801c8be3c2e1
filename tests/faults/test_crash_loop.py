"""G1/G2/G3 under repeated crashes: kill -9 of the whole daemon while clients submit, and the
order of the system calls that make a 250 safe.

Peers: the real daemon (tests/support/relay.py; kill9() SIGKILLs its whole process group: master,
smtpd, qmgr), Postfix's smtp-sink as smarthost, stdlib smtplib clients in threads (each records
the Message-IDs that got a 250 to end of DATA), and strace attached to the live smtpd.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.faults.conftest import fault_config
from tests.support.peers import dump_message_id, pid_alive
from tests.support.waiting import wait_until


pytestmark = pytest.mark.integration

ROUNDS = 20
CLIENTS = 5
SEED = 20240505
CONCURRENCY = 2                 # deliveries in flight at once: what a crash may duplicate
END_MARK = "end-of-crash-test-message"


def _client(port: int, tag: str, acked: list, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        message_id = f"<crash-{tag}-{n}@lan.test>"
        n += 1
        client = smtplib.SMTP(timeout=5)
        try:
            client.connect("127.0.0.1", port)
            client.sendmail("cron@lan.test", ["ops@remote.example"],
                            f"Message-ID: {message_id}\r\nSubject: {tag}\r\n\r\n{'x' * 500}\r\n{END_MARK}\r\n")
            acked.append(message_id)        # 250 to end of DATA: owed to the smarthost (G2)
        except (OSError, smtplib.SMTPException):
            return                          # the daemon died under us; no 250, nothing owed
        finally:
            client.close()


def _complete_ids(sink) -> list[str]:
    """Message-IDs of the messages the sink got whole (a kill mid-DATA leaves a torn dump)."""
    return [dump_message_id(dump) for dump in sink.messages() if END_MARK.encode() in dump]


@pytest.mark.deployed
@pytest.mark.slow
def test_daemon_killed_20_times_under_load_loses_no_acknowledged_message(sink_factory, relay_factory):
    rng = random.Random(SEED)
    sink = sink_factory()
    config = fault_config(sink.port)
    config["relays"]["sink"]["concurrency"] = CONCURRENCY
    relay = relay_factory(config, start=False)
    acked: list[str] = []
    started = time.monotonic()
    for round_no in range(ROUNDS):
        relay.start()
        before = len(acked)
        stop = threading.Event()
        threads = [threading.Thread(target=_client, args=(relay.port, f"{round_no}.{c}", acked, stop))
                   for c in range(CLIENTS)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acked) > before, 30, what=f"round {round_no}: the first 250")
        # The random moment of the crash (seeded): not a wait for a condition.
        time.sleep(rng.uniform(0.0, 0.4))
        relay.kill9()
        stop.set()
        for thread in threads:
            thread.join(30)
        assert relay.pids() == [], "a process of the daemon survived kill -9 of its group"
    relay.start()
    ids = wait_until(lambda: (got := _complete_ids(sink)) and set(acked) <= set(got) and got, 120,
                     what=f"all {len(acked)} acknowledged messages at the sink")
    duplicates = len(ids) - len(set(ids))
    print(f"{ROUNDS} kills in {time.monotonic() - started:.1f}s: {len(acked)} acknowledged, "
          f"{len(ids)} delivered, {duplicates} duplicates")
    # G3: only what was in flight to the smarthost at a kill may arrive twice.
    assert duplicates <= ROUNDS * CONCURRENCY
    wait_until(lambda: relay.queue() == [], 30, what="an empty queue")
    assert os.listdir(os.path.join(relay.spool, "corrupt")) == []     # no torn queue file, ever
    assert relay.log().count("killed by signal") == 0                 # the group died at once


def test_master_killed_alone_takes_its_children_along_and_restarts_cleanly(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(fault_config(sink.port))
    children = wait_until(lambda: (pids := relay.pids()) and len(pids) == 3 and pids[1:], 10, what="smtpd and qmgr")
    os.kill(relay.proc.pid, signal.SIGKILL)
    relay.proc.wait()
    wait_until(lambda: not any(pid_alive(pid) for pid in children), 10,
               what="the orphaned smtpd and qmgr to stop (they would hold the port and the queue)")
    relay.start()
    assert relay.proc.poll() is None
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.sendmail("cron@lan.test", ["ops@remote.example"], "Message-ID: <after-master-kill@lan.test>\r\n\r\nx\r\n")
    wait_until(lambda: "<after-master-kill@lan.test>" in sink.message_ids(), 30, what="delivery after the restart")


# ------------------------------------------------------------------ G1: fsync order, observed

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


def parse_strace(text: str) -> list[tuple[str, str, int, int]]:
    """(syscall, arguments and result, start line, end line) from `strace -f -o` output,
    joining `<unfinished ...>` and `<... resumed>` halves."""
    events, pending = [], {}
    for index, raw in enumerate(text.splitlines()):
        match = _LINE.match(raw)
        if not match:
            continue
        pid, rest = match.groups()
        resumed = _RESUMED.match(rest)
        if resumed:
            name, head, start = pending.pop(pid, (resumed.group(1), "", index))
            events.append((name, head + resumed.group(2), start, index))
        elif rest.endswith("<unfinished ...>"):
            name = rest.split("(", 1)[0]
            pending[pid] = (name, rest[len(name):-len("<unfinished ...>")], index)
        elif "(" in rest:
            name = rest.split("(", 1)[0]
            events.append((name, rest[len(name):], index, index))
    return sorted(events, key=lambda e: e[2])


def _smtpd_pid(relay) -> int:
    def find():
        for pid in relay.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "mta-smtpd":
                    return pid
            except OSError:
                continue
        return None
    return wait_until(find, 10, what="the smtpd process")


def _traced(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return re.search(r"^TracerPid:\s+[1-9]", status, re.M) is not None


def test_smtpd_replies_250_only_after_file_fsync_link_and_directory_fsync(sink_factory, relay_factory, tmp_path):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (tools/install-test-deps.sh installs it)")
    sink = sink_factory()
    relay = relay_factory(fault_config(sink.port))
    smtpd = _smtpd_pid(relay)
    out = tmp_path / "strace.out"
    tracer = subprocess.Popen(["strace", "-f", "-y", "-s", "200", "-o", str(out), "-e",
                               "trace=fsync,fdatasync,link,linkat,rename,renameat,renameat2,sendto,write",
                               "-p", str(smtpd)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            wait_until(lambda: tracer.poll() is not None or _traced(smtpd), 10, what="strace to attach")
        except TimeoutError:
            pass
        if tracer.poll() is not None or not _traced(smtpd):
            pytest.skip(f"strace cannot attach here: {tracer.stderr.read().decode(errors='replace')[-300:]}")
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.ehlo("pc.lan.test")
            client.mail("cron@lan.test")
            client.rcpt("ops@remote.example")
            code, text = client.data(b"Message-ID: <traced@lan.test>\r\n\r\nfsync me\r\n")
        assert code == 250
        queue_id = text.decode().rsplit(" ", 1)[1]
    finally:
        tracer.send_signal(signal.SIGINT)       # detaches; the daemon runs on
        tracer.wait(10)
    events = parse_strace(out.read_text())
    tmp_file = f"/incoming/.tmp-{queue_id}>"      # the staging file, as strace -y names its fd
    incoming = os.path.join(relay.spool, "incoming")

    def first(name_prefix, *needles, after=-1):
        for name, args, start, end in events:
            if name.startswith(name_prefix) and start > after and all(n in args for n in needles):
                return start, end
        raise AssertionError(f"no {name_prefix}({' '.join(needles)}) after line {after} in:\n{out.read_text()}")

    last_write = max(end for name, args, start, end in events if name == "write" and tmp_file in args)
    fsync_file = first("fsync", tmp_file)
    link = first("link", f"/.tmp-{queue_id}\"", f"/incoming/{queue_id}\"", after=fsync_file[1])
    fsync_dir = first("fsync", f"<{incoming}>", after=link[1])
    reply = first("sendto", f"250 2.0.0 Ok: queued as {queue_id}", after=fsync_dir[1])
    assert last_write < fsync_file[0] <= fsync_file[1] < link[0] <= link[1] < fsync_dir[0] <= fsync_dir[1] < reply[0]
