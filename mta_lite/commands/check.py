"""preflight — `mta-lite check`: what would break, or leak, once the relay runs as its users.

    run_checks(cfg, fix=False) -> list[Problem]     as root, before any port is bound

`mta-lite serve` runs `mta-lite check` (a short-lived process: it may read the secrets, the
master may not) before it binds a port and before it accepts a reloaded config; any fatal
problem stops it with exit 78 (Postfix: `postfix check`, `postfix set-permissions`).

The relay's children read what they need while still root, change into the spool and only
then drop (privsep.py), so an admin's root-owned 0600 password file or TLS key, or a spool
under a 0700 directory, just works. What can still be wrong, per path and service user:

    kind              problem (fatal unless marked)                     fix printed
    config, password  mta-smtpd can write it, or replace it through a    chown root / chmod go-w
    file, TLS key or  directory above it; the queue manager's user
    certificate, CA   likewise for the config and the TLS files (it may
    file, template    own its own inputs: it holds those secrets anyway)
    password file,    mta-smtpd can read it (S7: the process facing the  chmod o-rwx / g-rwx /
    inline password   network never holds a smarthost secret)            chown root
    TLS key and cert  unusable (wrong key, encrypted, not PEM)           the loader's reason
    spool directory   owner or mode differs from queue/perms.py (a       mta-lite check --fix
                      missing one is no problem: serve creates it)
    interpreter       (warning) a service user cannot read Python's or   a Python outside the
                      mta-lite's files: serve preloads its modules, so   directory named
                      the relay works; tracebacks lose their source
    local users       (warning) `sendmail` as a local user cannot reach  chmod o+x / o+r
                      the config file or maildrop/

Each Problem is one line naming the path, the user and the command that fixes it.
Guarantees: a secret's content is never read here (stat and access(2) only; the config was
loaded by the caller); each user is probed in a forked child that really became that user.
Must never: change anything outside the spool (`--fix` applies the spool layout only).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import sysconfig
from dataclasses import dataclass

from mta_lite.config.schema import Config
from mta_lite.errors import ConfigError
from mta_lite.process.privsep import PrivilegeError, ServiceUser, drop_to
from mta_lite.queue.perms import LAYOUT, OWNER, ROOT_MODE, prepare_spool
from mta_lite.smtpd.listener import server_tls_context

# What a probe child may send back: a few hundred paths at most, a line each.
MAX_PROBE_REPLY_BYTES = 1 << 20
EX_CONFIG = 78
LOCAL_USER = "nobody"       # stands in for "any local user" running sendmail
SMTPD_INPUTS = ("config file", "TLS certificate", "TLS key")


@dataclass(frozen=True)
class Problem:
    path: str
    user: str
    what: str
    fix: str
    fatal: bool = True

    def line(self) -> str:
        prefix = "" if self.fatal else "warning: "
        who = f"{self.user}: " if self.user else ""
        return f"{prefix}{self.path}: {who}{self.what}; fix: {self.fix}"


@dataclass(frozen=True)
class Access:
    """What one user can do with one path, as its own processes would find out."""

    blocked_at: str = ""        # the first directory above the path it may not enter
    readable: bool = False
    writable: bool = False
    replaceable_at: str = ""    # a directory above it where it could swap the entry


# ---------------------------------------------------------------- facts (I/O)

def _probe_paths(paths: list[str], uid: int) -> dict[str, dict]:
    facts = {}
    for path in paths:
        blocked, replaceable, current = "", "", "/"
        for part in [p for p in path.split("/") if p]:
            if not os.access(current, os.X_OK):
                blocked = current
                break
            child = os.path.join(current, part)
            if not replaceable and os.access(current, os.W_OK) and _may_swap(current, child, uid):
                replaceable = current
            current = child
        facts[path] = {"blocked_at": blocked, "replaceable_at": replaceable,
                       "readable": not blocked and os.access(path, os.R_OK),
                       "writable": not blocked and os.access(path, os.W_OK)}
    return facts


def _may_swap(directory: str, child: str, uid: int) -> bool:
    """In a writable directory a user may rename over an entry, unless the directory is
    sticky (like /tmp) and the entry is someone else's."""
    try:
        if not os.stat(directory).st_mode & stat.S_ISVTX:
            return True
        return os.lstat(child).st_uid == uid
    except OSError:
        return False


def probe_as(user: ServiceUser, paths: list[str]) -> dict[str, Access]:
    """Fork, become `user` for good, and find out what it can do with each path."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            drop_to(user)
            os.write(write_fd, json.dumps(_probe_paths(paths, user.uid)).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as reader:
        while chunk := reader.read(65536):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_PROBE_REPLY_BYTES:
                break
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise PrivilegeError(f"cannot check the paths as user {user.name!r}")
    return {path: Access(**fact) for path, fact in json.loads(b"".join(chunks)).items()}


# ---------------------------------------------------------------- what to check

def root_read_files(cfg: Config) -> dict[str, str]:
    """path -> kind: every file the relay reads as root before its children drop."""
    files = {cfg.path: "config file"}
    for relay in cfg.relays.values():
        if relay.ca_file:
            files[relay.ca_file] = "CA file"
    for item in cfg.listen:
        if item.tls_cert:
            files[item.tls_cert], files[item.tls_key] = "TLS certificate", "TLS key"
    if cfg.bounce_template:
        files[cfg.bounce_template] = "bounce template"
    files.update({path: "password file" for path in password_files(cfg)})
    return {os.path.abspath(path): kind for path, kind in files.items()}


def _secrets(cfg: Config) -> list:
    """Every password and OAuth client secret of the config (None where there is none)."""
    return ([r.password for r in cfg.relays.values()] + [s.password for s in cfg.senders]
            + [p.client_secret for p in cfg.oauth.values()])


def password_files(cfg: Config) -> set[str]:
    return {secret.source for secret in _secrets(cfg) if secret is not None and secret.source}


def has_inline_password(cfg: Config) -> bool:
    return any(secret is not None and not secret.source for secret in _secrets(cfg))


def interpreter_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return sorted({os.path.realpath(p) for p in (paths["stdlib"], paths["purelib"], here)})


# ---------------------------------------------------------------- rules (pure)

def tamper_problems(files: dict[str, str], user: str, uid: int, facts: dict[str, Access],
                    owners: dict[str, tuple[int, int]]) -> list[Problem]:
    """A service user who can change what root reads could take the relay over."""
    problems = []
    for path, kind in files.items():
        fact = facts.get(path, Access())
        if fact.writable:
            owner, mode = owners.get(path, (0, 0))
            fix = f"chown root {path}" if owner == uid else f"chmod go-w {path}"
            problems.append(Problem(path, user, f"can change this {kind}", fix))
        elif fact.replaceable_at:
            where = fact.replaceable_at
            owner, _ = owners.get(where, (0, 0))
            fix = f"chown root {where}" if owner == uid else f"chmod go-w {where}"
            problems.append(Problem(path, user, f"can replace this {kind} through {where}", fix))
    return problems


def secret_problems(paths: list[str], user: ServiceUser, facts: dict[str, Access],
                    owners: dict[str, tuple[int, int]], inline_in: str = "") -> list[Problem]:
    """S7: the network-facing user must not be able to read a smarthost secret."""
    problems = []
    for path in paths:
        if not facts.get(path, Access()).readable:
            continue
        owner, mode = owners.get(path, (0, 0))
        if owner == user.uid:
            fix = f"chown root {path}"
        elif mode & stat.S_IROTH:
            fix = f"chmod o-rwx {path}"
        else:
            fix = f"chmod g-rwx {path}"
        what = ("can read this config, which holds a smarthost password inline (move it to a "
                "password_file, or install the config with `mta-lite config apply`)" if path == inline_in
                else "can read this password file")
        problems.append(Problem(path, user.name, what, fix))
    return problems


def layout_problems(root: str, owner: ServiceUser, smtpd: ServiceUser,
                    found: dict[str, tuple[int, int, int]]) -> list[Problem]:
    """Spool directories whose owner, group or mode differ from queue/perms.py."""
    wanted = {root: (owner.uid, smtpd.gid, ROOT_MODE)}
    for name, (mode, group) in LAYOUT.items():
        wanted[os.path.join(root, name)] = (owner.uid, owner.gid if group == OWNER else smtpd.gid, mode)
    problems = []
    for path, want in wanted.items():
        have = found.get(path)
        if have is not None and have != want:      # a missing one: serve (or --fix) creates it
            what = (f"is {have[0]}:{have[1]} mode {have[2]:04o}, the spool layout wants {want[0]}:{want[1]} "
                    f"mode {want[2]:04o}")
            problems.append(Problem(path, "", what, "mta-lite check --fix"))
    return problems


def reach_problems(paths: dict[str, tuple[str, str]], user: str, facts: dict[str, Access],
                   why: str) -> list[Problem]:
    """Warnings for paths (kind, "read" or "write") a user should reach but cannot; the
    relay itself still works."""
    problems = []
    for path, (kind, need) in paths.items():
        fact = facts.get(path, Access())
        if fact.blocked_at:
            fix = f"chmod o+x {fact.blocked_at} (or keep it out of {fact.blocked_at})"
            problems.append(Problem(path, user, f"cannot reach this {kind}: {why}", fix, fatal=False))
        elif not (fact.readable if need == "read" else fact.writable):
            problems.append(Problem(path, user, f"cannot {need} this {kind}: {why}",
                                    f"chmod o+{need[0]} {path}", fatal=False))
    return problems


def tls_problems(cfg: Config) -> list[Problem]:
    """Load each listener's certificate and key as smtpd will (as root, before the drop)."""
    problems = []
    for item in cfg.listen:
        try:
            server_tls_context(item, cfg.path)
        except ConfigError as exc:
            problems.append(Problem(item.tls_key, "", exc.problem,
                                    "give a PEM certificate and its unencrypted private key"))
    return problems


# ---------------------------------------------------------------- the whole check

def _owners(paths) -> dict[str, tuple[int, int]]:
    found = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found[path] = (st.st_uid, stat.S_IMODE(st.st_mode))
    return found


def _spool_found(root: str) -> dict[str, tuple[int, int, int]]:
    found = {}
    for path in [root, *(os.path.join(root, name) for name in LAYOUT)]:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            found[path] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return found


def _ancestors(paths) -> set[str]:
    found = set()
    for path in paths:
        parent = os.path.dirname(path)
        while parent and parent not in found:
            found.add(parent)
            parent = os.path.dirname(parent) if parent != "/" else ""
    return found


def run_checks(cfg: Config, fix: bool = False) -> list[Problem]:
    """Every problem the relay would meet as root dropping to its users; [] when none.
    fix=True first applies the spool layout (the only thing it ever changes)."""
    problems = tls_problems(cfg)
    if os.geteuid() != 0 or not cfg.master.smtpd_user:
        return problems         # one user: nothing to separate, nobody else to probe for
    smtpd = ServiceUser.lookup(cfg.master.smtpd_user)
    owner = ServiceUser.lookup(cfg.master.qmgr_user, cfg.master.smtpd_user) if cfg.master.qmgr_user else None
    spool = os.path.abspath(cfg.spool_dir)
    if fix and owner:
        prepare_spool(spool, owner.uid, smtpd.gid)
    if owner:
        problems += layout_problems(spool, owner, smtpd, _spool_found(spool))
    files = root_read_files(cfg)
    secrets = sorted(password_files(cfg)) + ([os.path.abspath(cfg.path)] if has_inline_password(cfg) else [])
    interpreter = {path: ("directory of the interpreter's files", "read") for path in interpreter_dirs()}
    owners = _owners([*files, *_ancestors(files)])
    for user in [smtpd] + ([owner] if owner else []):
        facts = probe_as(user, [*files, *interpreter])
        # The queue manager may own its own inputs (an older layout gave it the password
        # files): it holds those secrets anyway. What steers smtpd must stay root's.
        guarded = files if user is smtpd else {p: k for p, k in files.items() if k in SMTPD_INPUTS}
        problems += tamper_problems(guarded, user.name, user.uid, facts, owners)
        problems += reach_problems(interpreter, user.name, facts,
                                   "serve preloads its modules, but tracebacks lose their source lines")
    facts = probe_as(smtpd, secrets)
    problems += secret_problems(secrets, smtpd, facts, owners, os.path.abspath(cfg.path))
    return problems + _local_user_problems(cfg, spool)


def _local_user_problems(cfg: Config, spool: str) -> list[Problem]:
    """`sendmail` runs as whoever calls it: it reads the config and writes into maildrop/."""
    try:
        nobody = ServiceUser.lookup(LOCAL_USER)
    except PrivilegeError:
        return []
    paths = {os.path.abspath(cfg.path): ("config file", "read"),
             os.path.join(spool, "maildrop"): ("maildrop directory", "write")}
    return reach_problems(paths, LOCAL_USER, probe_as(nobody, list(paths)),
                          "`sendmail` as a local user (cron, scripts) will fail")


def check_main(cfg: Config, fix: bool) -> int:
    """`mta-lite check`: one line per problem on stderr; exit 78 if any is fatal."""
    problems = run_checks(cfg, fix)
    for problem in problems:
        print(f"mta-lite: check: {problem.line()}", file=sys.stderr)
    if any(problem.fatal for problem in problems):
        return EX_CONFIG
    print(f"mta-lite: check: {cfg.path}: ok" + (f" ({len(problems)} warnings)" if problems else ""))
    return 0
