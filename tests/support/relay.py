"""relay — run the real `mta-lite serve` daemon as a child process for integration tests.

RelayProcess writes a TOML config into a work directory, starts the daemon with the same
Python as the tests (optionally behind a command prefix such as `faketime`), waits until the
listener answers 220, and stops it with SIGTERM (or SIGKILL for crash tests). Its stderr log
is kept in the work directory for assertions.

Ports: unless the test gives its own [[listen]] addresses, the relay listens on 127.0.0.1:0
and the kernel picks the port while the relay binds it (no bind-then-release race with other
tests). The relay reports what it bound in the line every smtpd logs when it starts serving,
`mta-lite/smtpd[PID]: listening on HOST:PORT ...` (mta_lite/smtpd/listener.py); start() reads
those lines from this start's part of the log into `ports` (one per [[listen]], in order) and
`port` (the first). The master binds the sockets and keeps them across smtpd restarts and
reloads that keep an address, so the port changes only when the relay itself is started
again (start() reads it anew) or a reload binds a new address (listening_since() reads it).

deployed=True runs it the way the box does: started as root, dropping to mta-smtpd and
mta-lite, with every file written the way an admin writes one by hand: the config, each
password (moved out of the config into a password file), TLS key, certificate and CA file
root-owned 0600 in a 0700 directory; the spool under a 0700 directory; and an interpreter
the service users cannot read (the venv reached through a 0700 directory, see
locked_python()). Such a relay fails its test if its log shows a late import or a traceback.

Guarantees: each daemon runs in its own session and process group (the master, its smtpd and
qmgr children, their helpers), so kill9() kills all of it at once, as a power cut would, and
stop() leaves no process of the group behind, even when the master died first. Every
instance is recorded in INSTANCES; tests/conftest.py scans each one's log, spool and
`status --json` for PASSWORD (every password and OAuth client secret of its config) and its
base64 forms after every test (S3), and for the OAuth tokens its token_sources name (outside
the queue manager's token store).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile

import tomli_w

from tests.support.waiting import wait_until

PASSWORD = "Tr0ub4dor-zebra-7c1"     # distinctive: tests grep logs and files for it
# Every RelayProcess ever created in this test session, for the secret scan (tests/conftest.py).
INSTANCES: list["RelayProcess"] = []
SERVICE_USERS = {"smtpd_user": "mta-smtpd", "qmgr_user": "mta-lite"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What a deployed relay's log must never show: a module its children could not preload
# (mta_lite/process/privsep.py), or a crash.
DEPLOYED_LOG_DEFECTS = ("imported after the privilege drop", "Traceback (most recent call last)")
_LOCKED: dict[str, tuple[str, dict]] = {}


def locked_python() -> tuple[str, dict]:
    """This venv's interpreter and the repository, reached through a root-only directory
    (as a Python under /root is): after the drop, the service users cannot read a file of
    it. Made once per test run."""
    if not _LOCKED:
        top = tempfile.mkdtemp(prefix="mta-lite-python-", dir="/tmp")
        os.chmod(top, 0o700)
        os.symlink(sys.prefix, os.path.join(top, "venv"))
        os.symlink(REPO, os.path.join(top, "src"))
        python = os.path.join(top, "venv", "bin", os.path.basename(sys.executable))
        _LOCKED["python"] = (python, {**os.environ, "PYTHONPATH": os.path.join(top, "src")})
    return _LOCKED["python"]


def deployed_config(config: dict, etc: str) -> dict:
    """`config` as an admin would lay it out in `etc` (0700, root): passwords in files, and
    the key, certificate, CA and template files copied in; every file root-owned 0600."""
    config = json.loads(json.dumps(config))     # a deep copy
    config["master"] = dict(SERVICE_USERS)
    tables = [*config.get("relays", {}).values(), *config.get("senders", []), *config.get("listen", [])]
    for number, table in enumerate(tables):
        if "password" in table:
            table["password_file"] = _admin_file(etc, f"password{number}.pw", table.pop("password").encode() + b"\n")
        for key in ("tls_cert", "tls_key", "ca_file"):
            if table.get(key):
                table[key] = _admin_copy(etc, table[key], f"{number}-")
    if config.get("bounce_template"):
        config["bounce_template"] = _admin_copy(etc, config["bounce_template"], "")
    return config


def _admin_file(etc: str, name: str, data: bytes) -> str:
    path = os.path.join(etc, name)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    return path


def _admin_copy(etc: str, source: str, prefix: str) -> str:
    with open(source, "rb") as handle:
        return _admin_file(etc, prefix + os.path.basename(source), handle.read())

# The smarthost accounts of the Postfix smarthost peer (tests/integration/conftest.py).
SMARTHOST_USER = "office@example.test"
ALICE_PASSWORD = PASSWORD + "-alice"


def relay_config(port: int, *, timeout: str = "10s", with_secret: bool = False, **top) -> dict:
    """A relay sending everything in clear to 127.0.0.1:port (an smtp-sink, a recorder) with
    fast retries; `queue` and any top-level key may be given. with_secret adds a second,
    unused account with the distinctive PASSWORD, so that the qmgr holds a secret and the
    secret scan after every test (tests/conftest.py) has something it could find."""
    queue = {"min_backoff": "1s", "max_backoff": "2s", **top.pop("queue", {})}
    relays = {"sink": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout": timeout}}
    if with_secret:
        relays["isp"] = {"host": "127.0.0.1", "port": 9, "tls": "starttls", "username": SMARTHOST_USER,
                         "password": PASSWORD}
    return {"default_relay": "sink", "relays": relays, "queue": queue, **top}


def postfix_config(smarthost, *, password: str = PASSWORD, **top) -> dict:
    """A relay through the Postfix smarthost peer (STARTTLS, verified, AUTH): the office
    account by default, alice's for alice@example.com."""
    return {
        "default_relay": "isp",
        "relays": {"isp": {"host": "127.0.0.1", "port": smarthost.port, "tls": "starttls",
                           "ca_file": str(smarthost.ca_file), "username": SMARTHOST_USER,
                           "password": password}},
        "senders": [{"address": "alice@example.com", "relay": "isp",
                     "username": "alice@example.test", "password": ALICE_PASSWORD}],
        "queue": {"min_backoff": "1s", "max_backoff": "2s"},
        **top,
    }


# The line a smtpd logs for each listener once it serves (mta_lite/smtpd/listener.py).
LISTENING = re.compile(r"mta-lite/smtpd\[\d+\]: listening on (\S+):(\d+)\b")


def listening_ports(log: str, count: int) -> list[int] | None:
    """The ports of the first `count` "listening on" lines in `log` (a part of a relay's log
    written by one smtpd start or later), in [[listen]] order; None while fewer are there."""
    ports = [int(match.group(2)) for match in LISTENING.finditer(log)][:count]
    return ports if len(ports) == count else None


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()
    except OSError:
        return None


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) and fields[0] != "Z" and int(fields[3]) == pgid:
            found.append(int(entry))
    return found


def _children_of(ppid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc")
            if e.isdigit() and (fields := _stat_fields(int(e))) and fields[0] != "Z" and int(fields[1]) == ppid]


def _config_passwords(config) -> set[str]:
    """Every value of a `password` key anywhere in the config data."""
    found: set[str] = set()
    if isinstance(config, dict):
        for key, value in config.items():
            if key in ("password", "client_secret") and isinstance(value, str):
                found.add(value)
            else:
                found |= _config_passwords(value)
    elif isinstance(config, list):
        for item in config:
            found |= _config_passwords(item)
    return found


def secret_needles(secrets) -> set[bytes]:
    """Byte strings that reveal a secret: the secret itself and, for each of the three
    alignments at which it can sit inside a base64 stream (AUTH PLAIN `\\0user\\0secret`,
    AUTH LOGIN, or any other framing), the base64 of the part of it on 3-byte boundaries.
    Whatever precedes the secret in the encoded blob, one of these appears in the blob."""
    needles: set[bytes] = set()
    for secret in secrets:
        raw = secret.encode("utf-8")
        needles.add(raw)
        for skip in range(3):
            part = raw[skip:]
            part = part[: len(part) - len(part) % 3]
            if len(part) >= 9:
                needles.add(base64.b64encode(part))
    return needles


class RelayProcess:
    """The daemon under test. `config` is the TOML data; spool and listen are filled in
    (`listen_options`, a dict, adds keys to that filled-in listener, e.g. bare_newline)."""

    def __init__(self, workdir: str, config: dict, python: str = sys.executable, env: dict | None = None,
                 prefix: tuple[str, ...] = (), deployed: bool = False) -> None:
        self.workdir = workdir
        self.deployed = deployed
        if deployed:
            python, env = locked_python()
            os.chmod(workdir, 0o700)
        self.python, self.env, self.prefix = python, env, tuple(prefix)
        self.secret_findings: list[str] | None = None     # set by scan_secrets()
        # Callables giving OAuth tokens this relay may hold (a test's authorization server):
        # scanned for everywhere but the queue manager's own token store (spool/state/oauth).
        self.token_sources: list = []
        INSTANCES.append(self)
        self.ports: list[int] = []      # filled by start(): what the relay bound, in [[listen]] order
        config = dict(config)
        config.setdefault("hostname", "relay.lan.test")
        config.setdefault("spool_dir", os.path.join(workdir, "spool"))
        config.setdefault("mynetworks", ["127.0.0.0/8"])
        config.setdefault("admin_address", "admin@lan.test")
        options = config.pop("listen_options", {})
        config.setdefault("listen", [{"address": "127.0.0.1:0", **options}])
        # Tests run as root in work directories only root can enter: no user change here;
        # the privilege separation tests set the users and prepare their own directories.
        config.setdefault("master", {"smtpd_user": "", "qmgr_user": ""})
        self.config = config
        self.spool = config["spool_dir"]
        self.etc = os.path.join(workdir, "etc") if deployed else workdir
        os.makedirs(self.etc, mode=0o700, exist_ok=True)
        self.config_path = os.path.join(self.etc, "mta-lite.toml")
        self.write_config()
        self.log_path = os.path.join(workdir, "mta-lite.log")
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        """Write self.config to the config file (laid out as an admin would when deployed)."""
        data = deployed_config(self.config, self.etc) if self.deployed else self.config
        with open(self.config_path, "wb") as handle:
            tomli_w.dump(data, handle)
        if self.deployed:
            os.chmod(self.config_path, 0o600)

    def deployed_defects(self) -> list[str]:
        """Log lines that show a deployed relay breaking: a late import, a traceback."""
        return [line for line in self.log().splitlines() if any(d in line for d in DEPLOYED_LOG_DEFECTS)]

    def cli(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", self.config_path, *args],
                              input=stdin, capture_output=True, timeout=timeout)

    @property
    def port(self) -> int:
        """The port of the first [[listen]] as the relay bound it (see the module docstring)."""
        if not self.ports:
            raise RuntimeError("RelayProcess.port before start(): the kernel picks it when the relay binds")
        return self.ports[0]

    def log_size(self) -> int:
        """Where the log ends now: pass it to listening_since() to read what comes after."""
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def listening_since(self, offset: int, timeout: float = 30.0) -> list[int]:
        """The ports a smtpd started after log position `offset` reports, once it reports one
        per [[listen]] (after a start, or a reload that binds new addresses); sets ports/port."""
        count = len(self.config["listen"])
        self.ports = wait_until(lambda: listening_ports(self._log_from(offset), count), timeout,
                                what=f"{count} 'listening on' line(s) in the relay's log")
        return self.ports

    def _log_from(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _serving(self, offset: int) -> bool:
        """True once this start's smtpd reported every listener and the first answers 220."""
        ports = listening_ports(self._log_from(offset), len(self.config["listen"]))
        if ports is None:
            return False
        self.ports = ports
        return _banner(ports[0])

    def start(self, timeout: float = 30.0) -> "RelayProcess":
        offset = self.log_size()
        self.ports = []
        log = open(self.log_path, "ab")
        # A session of its own: kill9() and stop() reach every process of this daemon through
        # its process group, and none of the test runner's.
        self.proc = subprocess.Popen([*self.prefix, self.python, "-m", "mta_lite.cli", "-c", self.config_path,
                                      "serve"], stdout=log, stderr=log, env=self.env, start_new_session=True)
        self.secret_findings = None
        log.close()
        wait_until(lambda: self.proc.poll() is not None or self._serving(offset), timeout,
                   what="the relay's listeners and its 220 banner")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mta-lite exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def master_pid(self, timeout: float = 10.0) -> int:
        """The master's PID: the Popen child itself, or the child of the prefix command
        (faketime forks and waits for the program it runs)."""
        if not self.prefix:
            return self.proc.pid
        return wait_until(lambda: next(iter(_children_of(self.proc.pid)), None), timeout, what="the master under the prefix")

    def pids(self) -> list[int]:
        """Every live process of this daemon (its process group), the master first."""
        if self.proc is None:
            return []
        return sorted(_group_members(self.proc.pid), key=lambda pid: pid != self.proc.pid)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc and self.proc.poll() is None:
            try:
                os.kill(self.master_pid(), signal.SIGTERM)
            except (ProcessLookupError, TimeoutError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reap_group(timeout=10.0)
        return self.proc.returncode if self.proc else 0

    def kill9(self) -> None:
        """SIGKILL the whole daemon at once (master, smtpd, qmgr, helpers): a crash."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._reap_group(timeout=10.0)

    def _reap_group(self, timeout: float) -> None:
        """SIGKILL whatever is left of the group (a child whose master died) and wait for it."""
        if self.proc is None:
            return
        if _group_members(self.proc.pid):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_until(lambda: not _group_members(self.proc.pid), timeout, what="the daemon's processes to exit")

    # ---------------------------------------------------------------- S3: secret scan
    def scan_secrets(self) -> list[str]:
        """Where PASSWORD (or any password in the config), or its base64 in any AUTH form,
        appears in the log, the spool or `status --json`; [] when nowhere. Cached: a caller
        that must scan early (before a tmpfs spool is unmounted) scans once."""
        if self.secret_findings is not None:
            return self.secret_findings
        needles = secret_needles(_config_passwords(self.config) | {PASSWORD})
        haystacks: dict[str, bytes] = {"log": self.log().encode("utf-8", "replace")}
        for root, _, files in os.walk(self.spool):
            for name in files:
                path = os.path.join(root, name)
                try:
                    with open(path, "rb") as handle:
                        haystacks[path] = handle.read()
                except OSError:
                    continue        # a socket, or a file removed meanwhile
        if os.path.isdir(self.spool):
            status = self.cli("status", "--json")
            haystacks["status --json"] = status.stdout + status.stderr
        tokens = secret_needles({token for source in self.token_sources for token in source()})
        store = os.path.join(self.spool, "state", "oauth") + os.sep
        self.secret_findings = sorted({where for where, data in haystacks.items()
                                       for needle in needles | (set() if where.startswith(store) else tokens)
                                       if needle in data})
        return self.secret_findings

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def queue(self) -> list[dict]:
        result = self.cli("queue", "list", "--json")
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode())
        return json.loads(result.stdout)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
