"""master — `mta-lite serve`: start and supervise the smtpd and qmgr processes.

Postfix's air gap, small: the process that parses bytes from the network (smtpd) and the
process that holds the smarthost credentials (qmgr) are separate processes that share only
the queue directories and the queue manager's doorbell socket.

    master (this)  never reads a secret: it gets the config without secrets from a short-
                   lived `config public` process, prepares the spool, binds the [[listen]]
                   ports, loads the code both children run, then forks them and restarts a
                   child that dies (with backoff); it stops on SIGTERM. On SIGHUP, or when
                   the config file changes, it validates the new config, replaces qmgr (or,
                   running as one user, has it reload) and replaces smtpd (same sockets for
                   unchanged ports).
    smtpd          a fork of the master (smtpd_service.py): loads the listeners'
                   certificates and keys while still root, changes into the spool, drops
                   to `master.smtpd_user` and serves the inherited sockets with the
                   secret-free config.
    qmgr           a fork of the master (qmgr_service.py): reads the full config (the
                   passwords) while still root, changes into the spool, then drops to
                   `master.qmgr_user` (plus the smtpd group, to read what smtpd queued). A
                   reload restarts it, so it reads the new config as root again (Postfix's
                   `postfix reload` does the same).

Before it binds a port, and before it accepts a reloaded config, the master runs `mta-lite
check` (preflight.py): a problem the service users would meet is one line naming path,
user and fix, and exit 78, never a crash loop. While smtpd is down (crashed, or unable to
start), the master answers its ports itself with `421 4.3.2` at once, so clients do not
wait in a backlog nobody reads; the queue manager goes on delivering.

Forking from a master that already imported everything lets the three processes share
those pages: about one interpreter's memory instead of three. gc.freeze() puts every object
the master made into the collector's permanent generation, and the children leave them
there (spawn.py): a full collection in a child would otherwise write to every one of them
and copy all those pages. The master runs no event loop; it waits for signals only.
Guarantees: a child's death never stops the other (mail is accepted while qmgr is down and
delivered while smtpd is down); no secret ever enters the master, so none reaches smtpd; a
child whose master died (even by SIGKILL) gets SIGTERM and stops, so a restarted master can
bind the ports again and is the only one running a queue manager.
Must never: read the config file itself, or restart a crashing child in a tight loop.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import replace

from mta_lite import __version__
from mta_lite.process import privsep, sockets, spawn
from mta_lite.config.schema import Config
from mta_lite.config.public import load_public_config, preflight
from mta_lite.errors import ConfigError, MtaLiteError, PreflightError
from mta_lite.process.spawn import Child
from mta_lite.status import write_processes

log = logging.getLogger("mta_lite.master")

# How often the master looks at the config file's inode and mtime: a config installed by
# `config apply`, the serial console or a USB stick is in use within this time.
CONFIG_POLL_S = 2.0
STOP_GRACE_S = 60.0
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# While smtpd is down the master looks for waiting clients this often: a client is turned
# away within a tenth of a second, at ten cheap wake-ups a second only while smtpd is down.
TURN_AWAY_POLL_S = 0.1


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


class Master:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.switch = os.geteuid() == 0 and bool(cfg.master.smtpd_user)
        self.socks: list[socket.socket] = []
        self.children: list[Child] = []
        self.pid = os.getpid()
        self.config_id = config_file_id(cfg.path)
        self.retired: set[int] = set()      # old smtpd processes finishing after a reload
        self.turned_away = 0                # clients answered 421 while smtpd was down
        self.qmgr_reload = False            # the next qmgr replaces one stopped for a reload

    # ---------------------------------------------------------------- set-up
    def _user(self, name: str, extra_group: str | None = None) -> privsep.ServiceUser:
        return privsep.ServiceUser.lookup(name, extra_group)

    def prepare(self) -> None:
        from mta_lite.queue.perms import prepare_spool
        if self.switch:
            owner_uid = self._user(self.cfg.master.qmgr_user).uid if self.cfg.master.qmgr_user else 0
            prepare_spool(self.cfg.spool_dir, owner_uid, self._user(self.cfg.master.smtpd_user).gid)
        else:
            prepare_spool(self.cfg.spool_dir, None, None)
        for line in preflight(self.cfg.path):
            log.warning("%s", line)
        self.socks = sockets.bind_listeners(self.cfg)
        # Load the children's code here, once: shared between the three processes, and
        # already in memory when a child has dropped to a user who may not be able to read
        # the interpreter's directory. Each half's own code too: a child that imported it
        # after the fork copied more of the master's pages than it saved (privsep.PRELOADS).
        for names in privsep.PRELOADS:
            privsep.preload(names)
        if self.cfg.postscreen.dnsbl_sites and any(item.postscreen for item in self.cfg.listen):
            from mta_lite.postscreen.dnsblclient import preload
            preload()           # dnspython imports its record types on first use
        self.children = [Child("qmgr", self._run_qmgr), Child("smtpd", self._run_smtpd)]

    def _drop(self, name: str, user: str, extra_group: str | None = None) -> None:
        """Started as root: become `user` for good. Then watch for late imports."""
        if self.switch and user:
            privsep.drop_to(self._user(user, extra_group))
        privsep.LateImportWatch(name).install()

    def _run_smtpd(self) -> int:
        from mta_lite.process.runner import run_service
        from mta_lite.process.smtpd_service import SmtpdService
        privsep.enter_spool(self.cfg.spool_dir)
        try:
            # As root: the listeners' keys may be readable by root alone (/etc/ssl/private).
            service = SmtpdService(replace(self.cfg, spool_dir="."), socks=self.socks)
        except ConfigError as exc:
            return spawn.REPORT.config_error(str(exc))
        self._drop("smtpd", self.cfg.master.smtpd_user)
        if not spawn.die_with_master(self.pid):
            return 0
        return run_service(service)

    def _run_qmgr(self) -> int:
        from mta_lite.config.load import load_config
        from mta_lite.process.qmgr_service import QmgrService
        from mta_lite.process.runner import run_service
        from mta_lite.maillog import setup_logging
        for sock in self.socks:
            sock.close()        # the delivering side never listens
        try:
            # As root: password files may be root's alone (an admin's `chmod 600`).
            cfg = load_config(self.cfg.path)
        except ConfigError as exc:
            return spawn.REPORT.config_error(str(exc))
        setup_logging(cfg)
        # The spool from here on is the working directory (its parents may be root's alone);
        # the config's own path stays absolute (reload, the OAuth seeds beside it).
        cfg = replace(cfg, path=os.path.abspath(cfg.path))
        privsep.enter_spool(self.cfg.spool_dir)
        cfg = replace(cfg, spool_dir=".", master=self.cfg.master)
        service = QmgrService(cfg, spool_name=self.cfg.spool_dir, after_reload=self.qmgr_reload)
        self._drop("qmgr", self.cfg.master.qmgr_user, self.cfg.master.smtpd_user or None)
        if not spawn.die_with_master(self.pid):
            return 0
        return run_service(service)

    # ---------------------------------------------------------------- children
    def _fork(self, child: Child, mask: set) -> None:
        spawn.fork_child(child, mask, self.children)
        if child.name == "qmgr":
            self.qmgr_reload = False
        self._write_processes()

    def _write_processes(self) -> None:
        try:
            write_processes(self.cfg.spool_dir, spawn.processes_record(self.pid, self.children))
        except OSError as exc:
            log.warning("cannot write the process status: %s", exc.strerror)

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
                    child.died(status)
                    self._write_processes()

    def _signal(self, sig: int) -> None:
        for pid in [child.pid for child in self.children if child.pid] + list(self.retired):
            _kill(pid, sig)

    def _smtpd_down(self) -> bool:
        return any(child.name == "smtpd" and not child.pid for child in self.children)

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
                elif child.settled():
                    log.info("%s pid %d runs again: configuration error cleared", child.name, child.pid)
                    self._write_processes()
            self._turn_away()
        self._stop()

    def _next_timeout(self) -> float:
        due = [c.restart_at - time.monotonic() for c in self.children if c.restart_at is not None]
        due += [spawn.CONFIG_OK_AFTER_S for c in self.children if c.state == spawn.STATE_CONFIG_ERROR]
        poll = TURN_AWAY_POLL_S if self._smtpd_down() else CONFIG_POLL_S
        return max(0.0, min(due + [poll]))

    def _turn_away(self) -> None:
        if not self._smtpd_down():
            if self.turned_away:
                log.info("smtpd is back; %d connections were answered 421 while it was down", self.turned_away)
                self.turned_away = 0
            return
        self.turned_away += sockets.turn_away(self.socks, [item.tls != "implicit" for item in self.cfg.listen])

    # ---------------------------------------------------------------- reload
    def _reload(self, why: str) -> None:
        """Validate the new config completely (C1) and run the preflight on it, then replace
        qmgr (as one user: it re-reads the file on SIGHUP) and smtpd, which gets the new
        config on the same sockets. On any error the running config stays; spool_dir and
        [master] change only with a restart."""
        self.config_id = config_file_id(self.cfg.path)
        try:
            for line in preflight(self.cfg.path):
                log.warning("%s", line)
            cfg = load_public_config(self.cfg.path)
        except PreflightError as exc:
            for line in exc.lines:
                log.error("reload (%s) failed, keeping the running configuration: %s", why, line)
            return
        except ConfigError as exc:
            log.error("reload (%s) failed, keeping the running configuration: %s", why, exc)
            return
        for key in ("spool_dir", "master"):
            if getattr(cfg, key) != getattr(self.cfg, key):
                log.warning("reload: %s changes only with a restart; keeping the running value", key)
        cfg = replace(cfg, spool_dir=self.cfg.spool_dir, master=self.cfg.master)
        try:
            socks = sockets.rebind(self.cfg, self.socks, cfg)
        except OSError as exc:
            log.error("reload (%s) failed, keeping the running configuration: cannot listen: %s", why, exc.strerror)
            return
        self.cfg, self.socks = cfg, socks
        log.info("reload (%s): configuration accepted, replacing smtpd%s", why, " and qmgr" if self.switch else "")
        for child in self.children:
            if child.pid and child.name == "smtpd":
                # The old smtpd stops accepting and finishes its sessions in DATA while the
                # new one, forked at once, serves new connections on the same sockets.
                self.retired.add(child.pid)
                _kill(child.pid, signal.SIGTERM)
                child.pid, child.restart_at = 0, time.monotonic()
            elif child.pid and self.switch:
                # Dropped to its user, qmgr may no longer read what root wrote: it finishes
                # its deliveries and a new one reads the config as root (child.died()).
                child.replace, self.qmgr_reload = True, True
                _kill(child.pid, signal.SIGTERM)
            elif child.pid:
                _kill(child.pid, signal.SIGHUP)
            if child.state == spawn.STATE_CONFIG_ERROR:
                child.restart_at = time.monotonic()     # the fix may be this very reload

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
            log.info("master started -- version %s, smtpd as %s, qmgr as %s", __version__,
                     self.cfg.master.smtpd_user, self.cfg.master.qmgr_user or "root")
        elif os.geteuid() == 0:
            log.warning("warning: master started as root with master.smtpd_user empty: "
                        "privilege separation is OFF, the network-facing process runs as root")
        else:
            log.info("master started -- version %s, both halves as uid %d", __version__, os.geteuid())


def serve(path: str) -> int:
    """`mta-lite serve`: exit 78 on a config error, 71 if the ports or the spool fail."""
    from mta_lite.maillog import setup_logging
    setup_logging(None)
    try:
        cfg = load_public_config(path)
        Master(cfg).run()
    except ConfigError as exc:
        print(f"mta-lite: {exc}", file=sys.stderr)
        return 78
    except PreflightError as exc:
        for line in exc.lines:
            print(f"mta-lite: {line}", file=sys.stderr)
        return 78
    except privsep.PrivilegeError as exc:
        print(f"mta-lite: {path}: master: {exc}", file=sys.stderr)
        return 78
    except (MtaLiteError, OSError) as exc:
        log.error("fatal: %s", exc)
        return 71
    return 0
