"""master — `mta-lite serve`: start and supervise the smtpd and qmgr processes.

Postfix's air gap, small: the process that parses bytes from the network (smtpd) and the
process that holds the smarthost credentials (qmgr) are separate programs that share only
the queue directories and the queue manager's doorbell socket.

    master (this)  binds the [[listen]] ports, prepares the spool, starts both children,
                   restarts a child that dies (with backoff), forwards SIGTERM and SIGHUP.
    smtpd          `mta-lite smtpd --from-master`: its config arrives on stdin with every
                   secret left out, its listening sockets as inherited descriptors.
    qmgr           `mta-lite qmgr`: reads the config file and the password files itself.

Started as root, smtpd runs as user mta-smtpd and qmgr as mta-lite (with supplementary
group mta-smtpd to read what smtpd queued); started as anyone else, both keep that user.
Guarantees: a child's death never stops the other (mail keeps being accepted while qmgr is
down, and delivered while smtpd is down); children are execed, never forked from a process
that has read a secret.
Must never: hand a secret to smtpd, or restart a crashing child in a tight loop.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import tomli_w

from .config import Config
from .config_load import effective_dict
from .errors import MtaLiteError

log = logging.getLogger("mta_lite.master")

LISTEN_FDS_ENV = "MTA_LITE_LISTEN_FDS"
LISTEN_BACKLOG = 128
# A child that dies is restarted after 1 s, then 2, 4 ... up to a minute; a child that
# stayed up for STABLE_AFTER_S starts again from 1 s.
RESTART_MIN_S, RESTART_MAX_S, STABLE_AFTER_S = 1.0, 60.0, 60.0
STOP_GRACE_S = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    stdin: bytes = b""
    pass_fds: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    extra_groups: list[str] | None = None
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    delay_s: float = RESTART_MIN_S


def smtpd_config_toml(cfg: Config) -> bytes:
    """The config for the receiving side: everything but secrets and files it has no use for."""
    data = effective_dict(cfg)
    data.pop("bounce_template", None)
    for table in [*data["relays"].values(), *data["senders"]]:
        for key in ("password", "password_file", "ca_file"):
            table.pop(key, None)
    return tomli_w.dumps(data).encode()


def bind_listeners(cfg: Config) -> list[socket.socket]:
    socks = []
    for item in cfg.listen:
        family = socket.AF_INET6 if ":" in item.host else socket.AF_INET
        sock = socket.create_server((item.host, item.port), family=family, backlog=LISTEN_BACKLOG)
        sock.set_inheritable(True)
        socks.append(sock)
    return socks


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "mta_lite.cli", *args]


def plan_children(cfg: Config, socks: list[socket.socket], switch: bool) -> list[Child]:
    """The two children; `switch`: started as root with users configured."""
    fds = tuple(sock.fileno() for sock in socks)
    smtpd_user, qmgr_user = cfg.master.smtpd_user, cfg.master.qmgr_user
    return [
        Child("qmgr", _python("-c", cfg.path, "qmgr"), user=qmgr_user if switch and qmgr_user else None,
              extra_groups=[smtpd_user] if switch and qmgr_user else None),
        Child("smtpd", _python("-c", cfg.path, "smtpd", "--from-master"), stdin=smtpd_config_toml(cfg),
              pass_fds=fds, env={LISTEN_FDS_ENV: ",".join(map(str, fds))},
              user=smtpd_user if switch and smtpd_user else None),
    ]


def check_users(cfg: Config) -> tuple[int, int]:
    """(uid of the qmgr user, gid of the smtpd user) or a clear error naming what to create."""
    qmgr_user, smtpd_user = cfg.master.qmgr_user, cfg.master.smtpd_user
    try:
        return pwd.getpwnam(qmgr_user).pw_uid, grp.getgrnam(smtpd_user).gr_gid
    except KeyError:
        raise MtaLiteError(f"started as root, but the users {qmgr_user} and {smtpd_user} do not exist; "
                           f"create them (firmware/sysusers.d/mta-lite.conf) or start as an ordinary user") from None


class Master:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.switch = os.geteuid() == 0 and bool(cfg.master.smtpd_user)
        self._stopping = asyncio.Event()

    def prepare(self) -> list[socket.socket]:
        try:
            from .queue.perms import prepare_spool
        except ImportError:
            from .queue import Spool

            def prepare_spool(root, owner_uid, smtpd_gid):
                Spool(root).ensure()
        if self.switch:
            owner_uid, smtpd_gid = check_users(self.cfg)
            prepare_spool(self.cfg.spool_dir, owner_uid, smtpd_gid)
        else:
            prepare_spool(self.cfg.spool_dir, None, None)
        return bind_listeners(self.cfg)

    async def _spawn(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv, stdin=asyncio.subprocess.PIPE if child.stdin else asyncio.subprocess.DEVNULL,
            pass_fds=child.pass_fds, env={**os.environ, **child.env},
            user=child.user, group=child.user, extra_groups=child.extra_groups)
        child.started = time.monotonic()
        if child.stdin:
            child.proc.stdin.write(child.stdin)
            await child.proc.stdin.drain()
            child.proc.stdin.close()
        log.info("%s started, pid %d", child.name, child.proc.pid)

    async def _supervise(self, child: Child) -> None:
        """Keep one child running until the master stops."""
        while not self._stopping.is_set():
            await self._spawn(child)
            status = await child.proc.wait()
            if self._stopping.is_set():
                return
            how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
            if time.monotonic() - child.started > STABLE_AFTER_S:
                child.delay_s = RESTART_MIN_S
            log.warning("warning: process %s pid %d %s; restarting in %.0fs",
                        child.name, child.proc.pid, how, child.delay_s)
            try:
                await asyncio.wait_for(self._stopping.wait(), child.delay_s)
            except TimeoutError:
                pass
            child.delay_s = min(child.delay_s * 2, RESTART_MAX_S)

    def _signal_children(self, children: list[Child], sig: int) -> None:
        for child in children:
            if child.proc and child.proc.returncode is None:
                child.proc.send_signal(sig)

    async def run(self) -> None:
        socks = self.prepare()
        children = plan_children(self.cfg, socks, self.switch)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_children, children, signal.SIGHUP)
        if self.switch:
            log.info("master started -- version 0.1.0, smtpd as %s, qmgr as %s",
                     self.cfg.master.smtpd_user, self.cfg.master.qmgr_user or "root")
        elif os.geteuid() == 0:
            log.warning("warning: master started as root with master.smtpd_user empty: "
                        "privilege separation is OFF, the network-facing process runs as root")
        else:
            log.info("master started -- version 0.1.0, both halves as uid %d", os.geteuid())
        tasks = [asyncio.create_task(self._supervise(child), name=child.name) for child in children]
        await self._stopping.wait()
        log.info("terminating on signal")
        self._signal_children(children, signal.SIGTERM)
        await self._reap(children)
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in socks:
            sock.close()
        log.info("master stopped")

    async def _reap(self, children: list[Child]) -> None:
        procs = [c.proc for c in children if c.proc and c.proc.returncode is None]
        if not procs:
            return
        _, late = await asyncio.wait([asyncio.create_task(p.wait()) for p in procs], timeout=STOP_GRACE_S)
        if late:
            self._signal_children(children, signal.SIGKILL)
            await asyncio.gather(*late, return_exceptions=True)


def serve(cfg: Config) -> int:
    try:
        asyncio.run(Master(cfg).run())
    except (MtaLiteError, OSError) as exc:
        log.error("fatal: %s", exc)
        return 71
    return 0
