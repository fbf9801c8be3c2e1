"""Real SMTP peers on loopback for the integration tests and the bench: smtp-sink, a Postfix
smarthost (STARTTLS + SASL, delivers to one Maildir), a Postfix null client, and swaks.

Guarantees: every peer listens on 127.0.0.1 only, on a port picked free at start; ``__enter__``
returns only once the peer answers on that port (polled against a deadline) and raises with the
peer's own log otherwise; ``__exit__`` stops every process it started, by PID, and waits until
those PIDs are gone. Postfix instances are fully separate (own config, queue, data directory,
pid files, maillog) so several can run at once, and never touch the system's /etc/postfix.
Never: mocks a peer, targets an address other than 127.0.0.1, starts a system service, or waits
for a condition with a bare sleep (waits go through tests/support/waiting.py).
Postfix and ``smtp-sink -u nobody`` need root (CI runs as root); see tools/install-test-deps.sh.
This module does not import pytest.
"""
from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.support.waiting import wait_until

LOOPBACK = "127.0.0.1"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
SASLPASSWD2 = "/usr/sbin/saslpasswd2"
SINK_USER = "nobody"


# ---------------------------------------------------------------------------------------------
# Small helpers


def free_port(*, udp_too: bool = False) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick), for a peer that
    must be told its port and cannot report one it bound itself: smtp-sink and Postfix take
    the address on their command line or in master.cf, dnsmasq in its config (udp_too: a
    port free for UDP as well, dnsmasq binds both), aiosmtpd's command line, qemu's hostfwd;
    and for a port nobody listens on (a smarthost that refuses connections). Racy by nature
    (another process may take the port between this close and the peer's bind), so the peers
    here retry on a fresh port when one says "in use". What can bind port 0 itself (the relay
    under test, asyncio and aiosmtpd servers in-process) never uses this: it binds 0 and
    reports the port (tests/support/relay.py RelayProcess)."""
    kind = socket.SOCK_DGRAM if udp_too else socket.SOCK_STREAM
    while True:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue        # taken for TCP: another pick
                return port


def smtp_probe(port: int, timeout: float = 2.0) -> bytes | None:
    """Connect to 127.0.0.1:port and return the first reply line (b"" if the peer hung up
    without one, or did not answer within ``timeout``); None if the connection was refused."""
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    except OSError:
        return None
    with sock:
        try:
            line = sock.makefile("rb").readline(1024)
            if line.startswith(b"220"):
                sock.sendall(b"QUIT\r\n")
            return line
        except OSError:
            return b""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _parent_map() -> dict[int, list[int]]:
    """ppid -> child pids, for every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (found through /proc ppid links); [] if gone."""
    if not pid_alive(pid):
        return []
    children = _parent_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def pss_kib(pids: Iterable[int]) -> int:
    """Sum of Pss (KiB) over ``pids`` from /proc/PID/smaps_rollup; vanished PIDs count 0."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
        total += int(match.group(1)) if match else 0
    return total


def stop_pids(pids: Iterable[int], timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to each PID, wait until all are gone, SIGKILL whatever is left."""
    pids = [pid for pid in pids if pid_alive(pid)]
    for pid in pids:
        _signal(pid, sig)
    try:
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, f"PIDs {pids} to exit")
    except TimeoutError:
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5.0, f"PIDs {pids} to die")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stop_popen(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a child we spawned and reap it (SIGKILL after ``timeout``)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


def tail_file(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no {path})"


def _server_arg(args: Sequence[str]) -> str | None:
    """The value of swaks' --server/-s option in ``args``, if any."""
    for i, arg in enumerate(args):
        if arg in ("--server", "-s") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--server="):
            return arg.partition("=")[2]
    return None


def swaks(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run swaks with ``args`` (must include ``--server 127.0.0.1:PORT``: without it swaks would
    look up the recipient's MX on the network). Output is captured as text."""
    server = _server_arg(args)
    if server is None or not server.startswith(f"{LOOPBACK}:"):
        raise ValueError(f"swaks needs --server {LOOPBACK}:PORT, got {server!r}")
    return subprocess.run(["swaks", *args], capture_output=True, text=True, errors="replace",
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _is_root() -> bool:
    return os.geteuid() == 0


def _runtime_dir(prefix: str) -> Path:
    """A fresh 0755 directory under /tmp. Postfix daemons drop to the 'postfix' user and must
    traverse every parent of their files, which pytest's 0700 tmp_path forbids; unix socket
    paths must also stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------------------------------------
# smtp-sink


class SmtpSink:
    """``smtp-sink -c [-u nobody -R DUMPDIR] -d DUMP/%H/ 127.0.0.1:PORT 100`` plus fault
    ``flags`` (see ``man smtp-sink``: ``-Q DATA``, ``-q .``, ``-r RCPT -b "451 ..."``,
    ``-f RCPT -B "550 ..."``, ``-w 120``, ``-A 0`` ...).

    As root it runs as ``nobody`` chrooted (``-R``) into its dump directory, so that directory
    need not be reachable by nobody through the caller's 0700 tmp dirs. ``count()`` is the live
    ``-c`` counter: every transaction whose DATA reached the final "." (also when "." is then
    rejected or dropped by ``-f .``/``-r .``/``-q .``), the same set that leaves a dump file.
    Dumps have every CR removed and three smtp-sink lines (X-Client-Addr, ..., a 3-line
    Received) prepended; they are not byte-exact copies of what the client sent.
    """

    _RESERVED = ("-R", "-u", "-d", "-D", "-c", "-M", "-n")

    def __init__(self, workdir: os.PathLike | str, flags: Sequence[str] = (), *,
                 dump: bool = True, backlog: int = 100, start_timeout: float = 10.0):
        if any(flag in self._RESERVED for flag in flags):
            raise ValueError(f"SmtpSink manages {self._RESERVED} itself; got {list(flags)}")
        self.workdir = Path(workdir)
        self.flags = list(flags)
        self.dump = dump
        self.backlog = backlog
        self.start_timeout = start_timeout
        self.port = 0
        self.dump_dir = self.workdir
        self.log = self.workdir
        self._proc: subprocess.Popen | None = None
        self._count = 0
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start on a free port; retried on another port if the first was taken meanwhile."""
        for attempt in range(3):
            self.port = free_port()
            self.dump_dir = self.workdir / f"smtp-sink-{self.port}"
            self.log = self.dump_dir.with_suffix(".log")
            self._spawn()
            if self._wait_ready(last_try=attempt == 2):
                return

    def _argv(self) -> list[str]:
        argv = [SMTP_SINK, "-c"]
        dump_template = f"{self.dump_dir}/%H/"
        if _is_root():
            argv += ["-u", SINK_USER, "-R", str(self.dump_dir)]
            dump_template = "/%H/"
        if self.dump:
            argv += ["-d", dump_template]
        return argv + self.flags + [f"{LOOPBACK}:{self.port}", str(self.backlog)]

    def _spawn(self) -> None:
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        if _is_root():
            os.chown(self.dump_dir, pwd.getpwnam(SINK_USER).pw_uid, -1)
        self._count = 0
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=log,
                                          stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read_counter, args=(self._proc,),
                                        name=f"smtp-sink-{self.port}", daemon=True)
        self._reader.start()

    def _wait_ready(self, last_try: bool) -> bool:
        """True once the sink answers (a reply line, or a hang-up for CONNECT faults)."""
        proc = self._proc
        assert proc is not None
        try:
            wait_until(lambda: proc.poll() is not None or smtp_probe(self.port) is not None,
                       self.start_timeout, f"smtp-sink on port {self.port}")
        except TimeoutError:
            self.stop()
            raise TimeoutError(f"smtp-sink did not answer on {self.port}:\n{tail_file(self.log)}")
        if proc.poll() is None:
            return True
        self.stop()
        log = tail_file(self.log)
        if "in use" in log and not last_try:
            return False
        raise RuntimeError(f"smtp-sink exited with {proc.returncode}:\n{log}")

    def _read_counter(self, proc: subprocess.Popen) -> None:
        """Follow the ``-c`` counter lines ("sess=N quit=N mesg=N\\r") on stdout."""
        assert proc.stdout is not None
        pending = b""
        while chunk := proc.stdout.read1(4096):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            counts = [int(m.group(1)) for line in lines if (m := re.search(rb"mesg=(\d+)", line))]
            if counts:
                with self._cond:
                    self._count = max(self._count, *counts)
                    self._cond.notify_all()

    def stop(self) -> None:
        """Stop smtp-sink by PID and reap it. Dumps stay in ``dump_dir``."""
        if self._proc is not None:
            _stop_popen(self._proc)
            if self._reader is not None:
                self._reader.join(5.0)
            if self._proc.stdout is not None:
                self._proc.stdout.close()

    def count(self) -> int:
        """Transactions that reached end of DATA so far (smtp-sink's live counter)."""
        with self._cond:
            return self._count

    def wait_count(self, n: int, timeout: float = 30.0) -> int:
        """Block until ``count() >= n``; return the count or raise TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._count >= n, timeout):
                raise TimeoutError(f"smtp-sink saw {self._count} of {n} messages in {timeout:g}s")
            return self._count

    def _open_files(self) -> set[tuple[int, int]]:
        """(dev, inode) of files smtp-sink holds open: dumps of transactions in progress."""
        found: set[tuple[int, int]] = set()
        pid = self.pid
        if pid is None or self._proc is None or self._proc.poll() is not None:
            return found
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, ProcessLookupError):
            return found
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            found.add((st.st_dev, st.st_ino))
        return found

    def dump_files(self) -> list[Path]:
        """Finished dump files, oldest first (files of transactions in progress are skipped)."""
        if not self.dump:
            raise RuntimeError("this SmtpSink was started with dump=False")
        files = [p for p in self.dump_dir.rglob("*") if p.is_file()]
        busy = self._open_files()
        done = []
        for path in files:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in busy:
                done.append((st.st_mtime_ns, path.name, path))
        return [path for _, _, path in sorted(done)]

    def messages(self) -> list[bytes]:
        """Contents of the finished dumps (smtp-sink header lines + message, CRs removed)."""
        out = []
        for path in self.dump_files():
            try:
                out.append(path.read_bytes())
            except FileNotFoundError:
                continue
        return out

    def message_ids(self) -> list[str | None]:
        """The Message-ID of each finished dump, in ``messages()`` order."""
        return [dump_message_id(dump) for dump in self.messages()]

    def wait_for(self, n: int, timeout: float = 30.0) -> list[bytes]:
        """Block until at least ``n`` finished dumps exist; return ``messages()``."""
        return wait_until(lambda: (msgs := self.messages()) and len(msgs) >= n and msgs,
                          timeout, f"{n} messages in smtp-sink on port {self.port}")


def dump_envelope(dump: bytes) -> dict[str, list[str]]:
    """The smtp-sink envelope lines of a dump: {"X-Mail-Args": [...], "X-Rcpt-Args": [...],
    "X-Client-Addr": [...], "X-Helo-Args": [...], "X-Client-Proto": [...]}."""
    env: dict[str, list[str]] = {}
    for line in dump.split(b"\n"):
        if not line.startswith(b"X-"):
            break
        name, _, value = line.decode("utf-8", "replace").partition(":")
        env.setdefault(name, []).append(value.strip())
    return env


def dump_message(dump: bytes) -> bytes:
    """The message as received (LF line ends) without smtp-sink's prepended lines and without
    the trailing empty line smtp-sink appends."""
    match = re.search(rb"^Received: from .*?\n\tby .*? \(smtp-sink\) .*?\n\t.*?\n", dump,
                      re.M | re.S)
    body = dump[match.end():] if match else dump
    return body[:-1] if body.endswith(b"\n\n") else body


def dump_message_id(dump: bytes) -> str | None:
    """The Message-ID header of the message in a dump (None if it has none)."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        dump_message(dump))
    value = headers.get("Message-ID")
    return str(value).strip() if value is not None else None


# ---------------------------------------------------------------------------------------------
# Postfix instances

_MASTER_CF_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class _PostfixInstance:
    """One private Postfix instance (``postfix -c CONFDIR``) listening on 127.0.0.1:port.

    Its files live in a fresh 0755 directory under /tmp (see ``_runtime_dir``); on stop the
    maillog, main.cf/master.cf and Maildir are copied to ``workdir/<name>-<port>/`` and the
    runtime directory is removed.
    """

    kind = "postfix"

    def __init__(self, workdir: os.PathLike | str, *, start_timeout: float = 60.0):
        if not _is_root():
            raise PermissionError("a private Postfix instance needs root")
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.port = 0
        self.root = self.workdir
        self.maillog = self.workdir / "maillog"
        self.mail_dir = self.workdir / "mail"
        self._started = False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    def main_cf(self) -> dict[str, str]:
        """Parameters shared by every instance; subclasses add theirs."""
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"{self.kind}.test",
            "mydomain": f"{self.kind}.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "smtp_bind_address": LOOPBACK,
            "maillog_file": str(self.root / "maillog"),
            "maillog_file_prefixes": str(self.root),
            "syslog_name": f"postfix-{self.kind}-{self.port}",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtpd_banner": "$myhostname ESMTP",
        }

    def _write_config(self) -> None:
        self.conf_dir.mkdir(parents=True)
        (self.root / "queue").mkdir(mode=0o755)  # postfix creates the rest below it
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.conf_dir / "main.cf").write_text(main)
        smtpd = f"{LOOPBACK}:{self.port} inet n - n - - smtpd\n"
        (self.conf_dir / "master.cf").write_text(smtpd + _MASTER_CF_SERVICES)

    def prepare(self) -> None:
        """Hook: create files the configuration refers to (certificates, databases)."""

    def start(self) -> None:
        """Configure, ``postfix -c CONFDIR start``, wait for the 220 greeting."""
        for attempt in range(3):
            self.port = free_port()
            self.root = _runtime_dir(f"mta-peer-{self.kind}-")
            self.maillog = self.root / "maillog"
            self.mail_dir = self.root / "mail"
            self._started = True
            try:
                self._write_config()
                self.prepare()
            except Exception:
                self.stop()
                raise
            if self._start_master(last_try=attempt == 2):
                return

    def _postfix(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", str(self.conf_dir), *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)

    def _start_master(self, last_try: bool) -> bool:
        """True once the instance greets on its port; False if its port was taken meanwhile
        (caller retries on another); raises with the maillog tail on any other failure."""
        try:
            result = self._postfix("start", timeout=self.start_timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"postfix start took over {self.start_timeout:g}s") from None
        if result.returncode == 0:
            try:
                wait_until(lambda: (smtp_probe(self.port) or b"").startswith(b"220")
                           or not self.pids(), self.start_timeout,
                           f"Postfix {self.kind} greeting on port {self.port}")
            except TimeoutError as exc:
                log = tail_file(self.maillog)
                self.stop()
                raise TimeoutError(f"{exc}\n{log}") from None
            if self.pids():
                return True
        log = tail_file(self.maillog)
        self.stop()
        if "in use" in log and not last_try:
            return False
        raise RuntimeError(f"Postfix {self.kind} did not start (postfix start: exit "
                           f"{result.returncode}) {result.stdout}{result.stderr}\n{log}")

    def master_pid(self) -> int | None:
        """The master's PID from its pid file, if that process is alive."""
        try:
            pid = int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def pids(self) -> list[int]:
        """PIDs of the master and all its descendants (smtpd, qmgr, postlogd, ...)."""
        pid = self.master_pid()
        return process_tree(pid) if pid is not None else []

    def stop(self) -> None:
        """``postfix -c CONFDIR stop``, wait until every PID of the instance is gone (SIGKILL
        after a deadline), archive logs and mail into workdir, remove the runtime directory."""
        if not self._started:
            return
        self._started = False
        pids = self.pids()
        if pids:
            self._postfix("stop", timeout=30.0)
            stop_pids(pids, timeout=15.0, sig=0)
        self._archive()

    def _archive(self) -> None:
        keep = self.workdir / f"{self.kind}-{self.port}"
        keep.mkdir(parents=True, exist_ok=True)
        for src in (self.maillog, self.conf_dir / "main.cf", self.conf_dir / "master.cf"):
            if src.exists():
                shutil.copy2(src, keep / src.name)
        if self.mail_dir.exists():
            shutil.copytree(self.mail_dir, keep / "mail", dirs_exist_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = keep
        self.maillog = keep / "maillog"
        self.mail_dir = keep / "mail"

    def log_lines(self) -> list[str]:
        """The instance's maillog, as lines ([] before the first line is written)."""
        try:
            return self.maillog.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []


@dataclasses.dataclass
class Delivered:
    """One message as the smarthost delivered it (all Maildir copies of one queue ID)."""

    queue_id: str
    message_id: str | None
    sasl_username: str | None
    sender: str
    recipients: list[str]
    raw: bytes  # first Maildir copy, LF line ends, with the smarthost's added headers on top


_RECEIVED_ID = re.compile(r"\bwith\s+\S+\s+id\s+([0-9A-Za-z]+)")
_AUTH_SENDER = re.compile(r"\(Authenticated sender:\s*([^)\s]+)\)")


def _parse_maildir_file(raw: bytes) -> tuple[str, Delivered]:
    """Delivered (one recipient) for one Maildir file written by the virtual agent."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    received = " ".join(str(headers.get("Received", "")).split())  # topmost = ours
    queue_match = _RECEIVED_ID.search(received)
    auth_match = _AUTH_SENDER.search(received)
    queue_id = queue_match.group(1) if queue_match else ""
    message_id = headers.get("Message-ID")
    return queue_id, Delivered(
        queue_id=queue_id,
        message_id=str(message_id).strip() if message_id is not None else None,
        sasl_username=auth_match.group(1) if auth_match else None,
        sender=str(headers.get("Return-Path", "")).strip().strip("<>"),
        recipients=[str(headers.get("Delivered-To", "")).strip()],
        raw=raw,
    )


def read_maildir(mail_dir: Path) -> list[Delivered]:
    """Every message in Maildir ``mail_dir`` (new/ and cur/), copies merged per queue ID,
    in delivery order."""
    files = [p for sub in ("new", "cur") for p in (mail_dir / sub).glob("*") if p.is_file()]
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    merged: dict[str, Delivered] = {}
    for path in files:
        queue_id, item = _parse_maildir_file(path.read_bytes())
        key = queue_id or path.name
        if key in merged:
            merged[key].recipients.extend(item.recipients)
        else:
            merged[key] = item
    return list(merged.values())


_SMTPD_LINE = re.compile(r"postfix-\S+/smtpd\[(\d+)\]: (.*)$")
_AUTH_FAILED = re.compile(r"SASL \S+ authentication failed")
_DISCONNECT_AUTH = re.compile(r"^disconnect from .* auth=(\d+)(?:/(\d+))?")


def count_auth(lines: Iterable[str]) -> tuple[int, int]:
    """(attempts, failures) of SASL AUTH from a Postfix maillog. Finished sessions count from
    the smtpd "disconnect ... auth=OK/TOTAL" line; sessions still open count their
    "authentication failed" warnings plus one if a "sasl_username=" line showed a success."""
    attempts = failures = 0
    open_sessions: dict[str, list[int]] = {}  # smtpd pid -> [failures, successes]
    for line in lines:
        match = _SMTPD_LINE.search(line)
        if not match:
            continue
        pid, text = match.groups()
        session = open_sessions.setdefault(pid, [0, 0])
        if text.startswith("connect from "):
            open_sessions[pid] = [0, 0]
        elif _AUTH_FAILED.search(text):
            session[0] += 1
            failures += 1
        elif "sasl_username=" in text:
            session[1] = 1
        elif (done := _DISCONNECT_AUTH.search(text)) is not None:
            attempts += int(done.group(2) or done.group(1))
            open_sessions.pop(pid)
        elif text.startswith("disconnect from "):
            open_sessions.pop(pid)
    attempts += sum(fail + ok for fail, ok in open_sessions.values())
    return attempts, failures


class PostfixSmarthost(_PostfixInstance):
    """An ISP-like smarthost: STARTTLS (cert for localhost/127.0.0.1 from a test CA at
    ``ca_file``), AUTH PLAIN/LOGIN only after STARTTLS against a cyrus sasldb of ``users``
    ("alice@example.test" -> password, log in with the realm), relays only for authenticated
    clients, and delivers every recipient of any domain into one Maildir."""

    kind = "smarthost"

    def __init__(self, workdir: os.PathLike | str, users: dict[str, str], **kwargs):
        super().__init__(workdir, **kwargs)
        if any("@" not in user for user in users):
            raise ValueError("smarthost users are 'name@realm'")
        self.users = dict(users)
        self.ca_file = self.workdir / "smarthost-ca.pem"

    def main_cf(self) -> dict[str, str]:
        delivery = pwd.getpwnam(SINK_USER)
        return super().main_cf() | {
            "mynetworks": f"{LOOPBACK}/32",
            "local_header_rewrite_clients": "",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(self.root / "tls" / "server-chain.pem"),
            "smtpd_tls_key_file": str(self.root / "tls" / "server.key"),
            "smtpd_tls_auth_only": "yes",
            "smtpd_tls_loglevel": "1",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            # Debian's Postfix ignores this and reads $config_directory/sasl/smtpd.conf: same dir.
            "cyrus_sasl_config_path": str(self.conf_dir / "sasl"),
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_sasl_tls_security_options": "noanonymous",
            "smtpd_sasl_authenticated_header": "yes",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
            "virtual_mailbox_domains": "static:all",
            "virtual_mailbox_maps": "static:sink/",
            "virtual_mailbox_base": str(self.root / "mail"),
            "virtual_uid_maps": f"static:{delivery.pw_uid}",
            "virtual_gid_maps": f"static:{delivery.pw_gid}",
        }

    def prepare(self) -> None:
        self._make_certs()
        self._make_sasldb()
        delivery = pwd.getpwnam(SINK_USER)
        self.mail_dir.mkdir(mode=0o755)
        os.chown(self.mail_dir, delivery.pw_uid, delivery.pw_gid)

    def _make_certs(self) -> None:
        import trustme  # test dependency, only needed here

        tls = self.root / "tls"
        tls.mkdir(mode=0o700)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", LOOPBACK)
        (tls / "server-chain.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        key = tls / "server.key"
        key.touch(mode=0o600)
        key.write_bytes(cert.private_key_pem.bytes())
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(self.ca_file))

    def _make_sasldb(self) -> None:
        sasl = self.conf_dir / "sasl"
        sasl.mkdir(mode=0o755)
        db = sasl / "sasldb2"
        for user, password in self.users.items():
            name, _, realm = user.rpartition("@")
            subprocess.run([SASLPASSWD2, "-p", "-f", str(db), "-c", "-u", realm, name],
                           input=password + "\n", text=True, check=True, capture_output=True,
                           timeout=30)
        if not self.users:
            db.touch()
        shutil.chown(db, group="postfix")
        db.chmod(0o640)
        (sasl / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
            f"mech_list: PLAIN LOGIN\nsasldb_path: {db}\n")

    def delivered(self) -> list[Delivered]:
        """Messages delivered so far, one per queue ID, recipients merged."""
        return read_maildir(self.mail_dir / "sink")

    def finished_queue_ids(self) -> set[str]:
        """Queue IDs the smarthost is done with (every recipient delivered or bounced)."""
        return {m.group(1) for line in self.log_lines()
                if (m := re.search(r"/qmgr\[\d+\]: ([0-9A-Za-z]+): removed$", line))}

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Delivered]:
        """Block until at least ``n`` messages are delivered to every recipient; return
        ``delivered()``. Raises TimeoutError with the maillog's tail."""
        def settled() -> list[Delivered] | None:
            done = self.finished_queue_ids()
            got = self.delivered()
            return got if sum(d.queue_id in done for d in got) >= n else None
        try:
            return wait_until(settled, timeout, f"{n} deliveries at the smarthost on {self.port}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; maillog tail:\n{tail_file(self.maillog)}") from None

    def auth_attempts(self) -> int:
        """SASL AUTH attempts (successful + failed) seen so far in the maillog."""
        return count_auth(self.log_lines())[0]

    def auth_failures(self) -> int:
        """Failed SASL AUTH attempts seen so far in the maillog."""
        return count_auth(self.log_lines())[1]


class PostfixNullClient(_PostfixInstance):
    """A stock-tuned Postfix relay for the bench: accepts from 127.0.0.0/8 on ``port`` and
    relays everything with plain SMTP to ``[127.0.0.1]:relayhost_port``."""

    kind = "nullclient"

    def __init__(self, workdir: os.PathLike | str, relayhost_port: int, **kwargs):
        super().__init__(workdir, **kwargs)
        self.relayhost_port = relayhost_port

    def main_cf(self) -> dict[str, str]:
        return super().main_cf() | {
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": f"[{LOOPBACK}]:{self.relayhost_port}",
            "smtp_tls_security_level": "none",
            "local_transport": "error:local delivery is disabled",
        }
