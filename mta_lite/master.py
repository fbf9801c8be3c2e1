"""master — `mta-lite serve`: start and supervise the smtpd and qmgr processes.

Postfix's air gap, small: the process that parses bytes from the network (smtpd) and the
process that holds the smarthost credentials (qmgr) are separate processes that share only
the queue directories and the queue manager's doorbell socket.

    master (this)  never reads a secret: it gets the config without secrets from a short-
                   lived `config public` process, prepares the spool, binds the [[listen]]
                   ports, loads the code both children run, then forks them and restarts a
                   child that dies (with backoff); it stops on SIGTERM. On SIGHUP, or when
                   the config file changes, it validates the new config, has qmgr reload
                   and replaces smtpd (same sockets for unchanged ports).
    smtpd          a fork of the master: switches to `master.smtpd_user` and serves the
                   inherited sockets with the secret-free config.
    qmgr           a fork of the master: switches to `master.qmgr_user` (plus the smtpd
                   group, to read what smtpd queued), then reads the full config itself.

Forking from a master that already imported everything lets the three processes share
those pages (gc.freeze() keeps the collector from touching them): about one interpreter's
memory instead of three. The master runs no event loop; it waits for signals only.
Guarantees: a child's death never stops the other (mail is accepted while qmgr is down and
delivered while smtpd is down); no secret ever enters the master, so none reaches smtpd; a
child whose master died (even by SIGKILL) gets SIGTERM and stops, so a restarted master can
bind the ports again and is the only one running a queue manager.
Must never: read the config file itself, or restart a crashing child in a tight loop.
"""

from __future__ import annotations

import gc
import grp
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, replace

import tomli_w

from .config import Config
from .config_load import effective_dict, parse_config
from .errors import ConfigError, MtaLiteError

log = logging.getLogger("mta_lite.master")

LISTEN_BACKLOG = 128
# A child that dies is restarted after 1 s, then 2, 4 ... up to a minute; a child that
# stayed up for STABLE_AFTER_S starts again from 1 s.
RESTART_MIN_S, RESTART_MAX_S, STABLE_AFTER_S = 1.0, 60.0, 60.0
# How often the master looks at the config file's inode and mtime: a config installed by
# `config apply`, the serial console or a USB stick is in use within this time.
CONFIG_POLL_S = 2.0
STOP_GRACE_S = 60.0
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def public_config_toml(cfg: Config) -> bytes:
    """The config without secrets (and without files the receiving side has no use for).
    Submission users' password hashes stay: the smtpd checks the logins (they are no
    smarthost secret); so do the senders' client bindings and the rewrite maps (S4)."""
    data = effective_dict(cfg, hashes=True)
    data.pop("bounce_template", None)
    for table in [*data["relays"].values(), *data["senders"]]:
        for key in ("password", "password_file", "ca_file"):
            table.pop(key, None)
    return tomli_w.dumps(data).encode()


def load_public_config(path: str) -> Config:
    """Ask a short-lived process for the secret-free config, so no secret enters this one."""
    result = subprocess.run([sys.executable, "-m", "mta_lite.cli", "-c", path, "config", "public"],
                            capture_output=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ConfigError(path, "", result.stderr.decode(errors="replace").strip().removeprefix("mta-lite: ")
                          .removeprefix(f"{path}: "))
    return parse_config(tomllib.loads(result.stdout.decode()), path, secrets=False)


def bind_listeners(cfg: Config, bound: dict | None = None) -> list[socket.socket]:
    """One listening socket per [[listen]], in order; those in `bound` ((host, port) ->
    socket, from before a reload) are reused: a port that stays open is never closed."""
    socks = []
    bound = bound or {}
    try:
        for item in cfg.listen:
            sock = bound.get((item.host, item.port))
            if sock is None:
                family = socket.AF_INET6 if ":" in item.host else socket.AF_INET
                sock = socket.create_server((item.host, item.port), family=family, backlog=LISTEN_BACKLOG)
            socks.append(sock)
    except OSError:
        for sock in socks:
            if sock not in bound.values():
                sock.close()
        raise
    return socks


def config_file_id(path: str) -> tuple | None:
    """What changes when the config file is replaced or edited (a stat, not a read)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


PR_SET_PDEATHSIG = 1


def _die_with_master(master_pid: int) -> bool:
    """Have the kernel send SIGTERM to this child when the master dies (kill -9, OOM killer);
    False if the master is already gone. Without it an orphaned smtpd keeps the listening
    port and an orphaned qmgr the queue, so a restarted master could not bind, or would run
    a second queue manager. Called after the user switch, which clears the setting."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass    # not Linux: systemd's control group (or the admin) cleans up instead
    return os.getppid() == master_pid


def _set_process_name(name: str) -> None:
    """Name the child in ps/top and /proc/PID/comm (Linux prctl PR_SET_NAME); best effort."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    run: object                 # callable, runs in the forked child, returns an exit status
    pid: int = 0
    started: float = 0.0
    delay_s: float = RESTART_MIN_S
    restart_at: float | None = None


class Master:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.switch = os.geteuid() == 0 and bool(cfg.master.smtpd_user)
        self.socks: list[socket.socket] = []
        self.children: list[Child] = []
        self.pid = os.getpid()
        self.config_id = config_file_id(cfg.path)
        self.retired: set[int] = set()      # old smtpd processes finishing after a reload

    # ---------------------------------------------------------------- set-up
    def _ids(self, user: str, extra_group: str | None = None) -> tuple[int, int, list[int]]:
        try:
            entry = pwd.getpwnam(user)
            groups = [grp.getgrnam(extra_group).gr_gid] if extra_group else []
        except KeyError:
            raise MtaLiteError(f"started as root, but user or group {user!r}/{extra_group!r} does not exist; "
                               "create them (firmware/sysusers.d/mta-lite.conf)") from None
        return entry.pw_uid, entry.pw_gid, groups

    def prepare(self) -> None:
        from .queue.perms import prepare_spool
        if self.switch:
            owner_uid = self._ids(self.cfg.master.qmgr_user)[0] if self.cfg.master.qmgr_user else 0
            prepare_spool(self.cfg.spool_dir, owner_uid, self._ids(self.cfg.master.smtpd_user)[1])
        else:
            prepare_spool(self.cfg.spool_dir, None, None)
        self.socks = bind_listeners(self.cfg)
        # Load the children's code here, once: shared between the three processes, and
        # already in memory when a child has dropped to a user who may not be able to read
        # the interpreter's directory. The codecs are otherwise imported on first use.
        from . import daemon   # noqa: F401
        import concurrent.futures.thread  # noqa: F401  (asyncio.to_thread)
        import encodings.ascii  # noqa: F401
        import encodings.idna  # noqa: F401  (host names in getaddrinfo)
        if self.cfg.postscreen.dnsbl_sites and any(item.postscreen for item in self.cfg.listen):
            from .smtpd.dnsblclient import preload
            preload()           # dnspython imports its record types on first use
        self.children = [Child("qmgr", self._run_qmgr), Child("smtpd", self._run_smtpd)]

    def _drop(self, user: str, extra_group: str | None = None) -> None:
        if not (self.switch and user):
            return
        uid, gid, groups = self._ids(user, extra_group)
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)

    def _run_smtpd(self) -> int:
        from .daemon import SmtpdService, run_service
        self._drop(self.cfg.master.smtpd_user)
        if not _die_with_master(self.pid):
            return 0
        return run_service(SmtpdService(self.cfg, socks=self.socks))

    def _run_qmgr(self) -> int:
        from .config_load import load_config
        from .daemon import QmgrService, run_service
        from .maillog import setup_logging
        for sock in self.socks:
            sock.close()        # the delivering side never listens
        self._drop(self.cfg.master.qmgr_user, self.cfg.master.smtpd_user or None)
        if not _die_with_master(self.pid):
            return 0
        try:
            cfg = load_config(self.cfg.path)
        except ConfigError as exc:
            log.error("fatal: %s", exc)
            return 78
        setup_logging(cfg)
        return run_service(QmgrService(cfg))

    # ---------------------------------------------------------------- children
    def _fork(self, child: Child, mask: set) -> None:
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                for sig in SIGNALS:
                    # SIGHUP ignored until the child's own handler is in place: a reload
                    # sent during start-up must not kill it.
                    signal.signal(sig, signal.SIG_IGN if sig == signal.SIGHUP else signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                gc.unfreeze()
                _set_process_name(f"mta-{child.name}")
                status = child.run()
            except BaseException:       # the child must never return into the master's loop
                log.exception("%s: fatal error", child.name)
            finally:
                logging.shutdown()
                os._exit(status)
        child.pid, child.started, child.restart_at = pid, time.monotonic(), None
        log.info("%s started, pid %d", child.name, pid)

    def _reaped(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.retired.discard(pid)
            for child in self.children:
                if child.pid == pid:
                    self._died(child, status)

    def _died(self, child: Child, status: int) -> None:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")
        if time.monotonic() - child.started > STABLE_AFTER_S:
            child.delay_s = RESTART_MIN_S
        log.warning("warning: process %s pid %d %s; restarting in %.0fs", child.name, child.pid, how, child.delay_s)
        child.pid, child.restart_at = 0, time.monotonic() + child.delay_s
        child.delay_s = min(child.delay_s * 2, RESTART_MAX_S)

    def _signal(self, sig: int) -> None:
        for pid in [child.pid for child in self.children if child.pid] + list(self.retired):
            _kill(pid, sig)

    # ---------------------------------------------------------------- main loop
    def run(self) -> None:
        self.prepare()
        signal.signal(signal.SIGCHLD, lambda *_: None)   # so that SIGCHLD is never discarded
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        gc.freeze()
        self._log_start()
        for child in self.children:
            self._fork(child, mask)
        while True:
            info = signal.sigtimedwait(SIGNALS, self._next_timeout())
            if info is None or info.si_signo == signal.SIGCHLD:
                self._reaped()
            elif info.si_signo == signal.SIGHUP:
                self._reload("SIGHUP")
            else:
                break
            if config_file_id(self.cfg.path) != self.config_id:
                self._reload("config file changed")
            for child in self.children:
                if child.restart_at is not None and time.monotonic() >= child.restart_at:
                    self._fork(child, mask)
        self._stop()

    def _next_timeout(self) -> float:
        due = [c.restart_at - time.monotonic() for c in self.children if c.restart_at is not None]
        return max(0.0, min(due + [CONFIG_POLL_S]))

    # ---------------------------------------------------------------- reload
    def _reload(self, why: str) -> None:
        """Validate the new config completely (C1), then the qmgr re-reads it (SIGHUP) and
        smtpd is replaced by one with the new config on the same sockets. On any error the
        running config stays; spool_dir and [master] change only with a restart."""
        self.config_id = config_file_id(self.cfg.path)
        try:
            cfg = load_public_config(self.cfg.path)
        except ConfigError as exc:
            log.error("reload (%s) failed, keeping the running configuration: %s", why, exc)
            return
        for key in ("spool_dir", "master"):
            if getattr(cfg, key) != getattr(self.cfg, key):
                log.warning("reload: %s changes only with a restart; keeping the running value", key)
        cfg = replace(cfg, spool_dir=self.cfg.spool_dir, master=self.cfg.master)
        bound = {(item.host, item.port): sock for item, sock in zip(self.cfg.listen, self.socks)}
        try:
            socks = bind_listeners(cfg, bound)
        except OSError as exc:
            log.error("reload (%s) failed, keeping the running configuration: cannot listen: %s", why, exc.strerror)
            return
        for key, sock in bound.items():
            if sock not in socks:
                sock.close()
        self.cfg, self.socks = cfg, socks
        log.info("reload (%s): configuration accepted, replacing smtpd", why)
        for child in self.children:
            if child.pid and child.name == "smtpd":
                # The old smtpd stops accepting and finishes its sessions in DATA while the
                # new one, forked at once, serves new connections on the same sockets.
                self.retired.add(child.pid)
                _kill(child.pid, signal.SIGTERM)
                child.pid, child.restart_at = 0, time.monotonic()
            elif child.pid:
                _kill(child.pid, signal.SIGHUP)

    def _stop(self) -> None:
        log.info("terminating on signal")
        for child in self.children:
            child.restart_at = None
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while (any(c.pid for c in self.children) or self.retired) and time.monotonic() < deadline:
            signal.sigtimedwait([signal.SIGCHLD], max(0.0, deadline - time.monotonic()))
            self._reap_quietly()
        self._signal(signal.SIGKILL)
        self._reap_quietly()
        log.info("master stopped")

    def _reap_quietly(self) -> None:
        for pid in list(self.retired):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    self.retired.discard(pid)
            except ChildProcessError:
                self.retired.discard(pid)
        for child in self.children:
            try:
                if child.pid and os.waitpid(child.pid, os.WNOHANG)[0] == child.pid:
                    child.pid = 0
            except ChildProcessError:
                child.pid = 0

    def _log_start(self) -> None:
        if self.switch:
            log.info("master started -- version 0.1.0, smtpd as %s, qmgr as %s",
                     self.cfg.master.smtpd_user, self.cfg.master.qmgr_user or "root")
        elif os.geteuid() == 0:
            log.warning("warning: master started as root with master.smtpd_user empty: "
                        "privilege separation is OFF, the network-facing process runs as root")
        else:
            log.info("master started -- version 0.1.0, both halves as uid %d", os.geteuid())


def serve(path: str) -> int:
    """`mta-lite serve`: exit 78 on a config error, 71 if the ports or the spool fail."""
    from .maillog import setup_logging
    setup_logging(None)
    try:
        cfg = load_public_config(path)
        Master(cfg).run()
    except ConfigError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return 78
    except (MtaLiteError, OSError) as exc:
        log.error("fatal: %s", exc)
        return 71
    return 0
