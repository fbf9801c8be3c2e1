"""privsep — become a service user after everything that needs root has been read.

    ServiceUser.lookup(name, extra_group)  the user's uid, gid and groups (from passwd/group)
    enter_spool(path)                      chdir into the spool while still root
    drop_to(user)                          setgroups, setgid, setuid: no way back
    preload(names)                         import what a process would otherwise import later
    LateImportWatch                        logs any module imported after the drop

Postfix's order, followed here: a daemon started as root opens its key files, lookup tables
and secrets, changes into the queue directory, and only then gives up root. Files an admin
writes by hand (a password file root-owned 0600, a TLS key in /etc/ssl/private, a config
under a 0700 directory) are read while still root; the queue is reached through the working
directory, so the directories above it need not be open to the service users.
Guarantees: drop_to() is complete (supplementary groups first, then gid, then uid) and
checked; after it nothing in this process can regain root. Every module a child may import
later is imported before the drop (the interpreter's own files may be unreadable to the
service users: a Python under /root); one that slips through is logged by name, once.
Must never: drop to a user that does not exist (that is a config error, named), or leave a
supplementary group of root's behind.
"""

from __future__ import annotations

import grp
import importlib
import logging
import os
import pwd
import sys
from dataclasses import dataclass

from mta_lite.errors import MtaLiteError

log = logging.getLogger("mta_lite.master")

# What the master imports before it forks, by which process runs it, each with its reason.
# Whole halves, and what Python imports on first use deep inside the standard library or a
# dependency. All three lists are loaded by the master (PRELOADS): shared between the three
# processes, and already in memory when a child has dropped to a user who may not be able
# to read the interpreter's directory. Measured (docs/benchmark.md, "Memory"): a child that
# imported its own half after the fork, still as root, held more, not less (idle +1.7 MiB
# anonymous for the relay): the imports run the shared import machinery, re, dataclasses
# and typing, and copy more of the master's pages than the master's copy of the half costs.
# LateImportWatch logs any module these lists miss, and a deployed test
# (tests/support/relay.py, deployed=True) fails on such a line.
SHARED_PRELOAD = (
    # Both halves' runner: the event loop, signals, the allocator tuning (ctypes).
    "mta_lite.process.runner",
    # The spool: smtpd writes incoming/ and rings the doorbell; qmgr reads, moves, rings back.
    "mta_lite.queue", "mta_lite.queue.doorbell", "mta_lite.maillog",
    # Codecs looked up by name: SMTP lines (ascii, latin-1, utf-8), the unicode_escape of
    # mta_lite.text.printable (the log lines of both: a pregreet, a pickup file's name),
    # host name encoding in any getaddrinfo (idna, punycode). Small, and either may need them.
    "encodings.ascii", "encodings.idna", "encodings.latin_1", "encodings.raw_unicode_escape",
    "encodings.unicode_escape", "encodings.utf_8", "encodings.punycode",
    # The thread pool behind asyncio.to_thread: the queue's group commit (both), AUTH's
    # password check (smtpd).
    "concurrent.futures.thread",
    # email.utils for the Received: and Date: headers (smtpd) and aiosmtplib (qmgr); the
    # charset and transfer-encoding helpers it brings in.
    "email.utils", "email.charset", "email.encoders", "email.quoprimime", "email.base64mime",
    # TLS for STARTTLS in (smtpd) and out (qmgr); hmac for AUTH (smtpd's password hashes,
    # aiosmtplib's CRAM-MD5); secrets for safeio's temporary names.
    "asyncio.sslproto", "ssl", "hmac", "secrets",
)
SMTPD_PRELOAD = (
    # The receiving half: listeners, SMTP engine, postscreen (smtpd.*, postscreen.*).
    "mta_lite.process.smtpd_service",
)
QMGR_PRELOAD = (
    # The delivering half: queue manager, smarthost client (qmgr.*, smarthost.*, aiosmtplib).
    "mta_lite.process.qmgr_service",
    # The email package's header machinery that aiosmtplib imports and touches per message.
    "email.generator", "email.header", "email.headerregistry", "email.message", "email.policy",
    "email._header_value_parser",
)
PRELOADS = (SHARED_PRELOAD, SMTPD_PRELOAD, QMGR_PRELOAD)


class PrivilegeError(MtaLiteError, PermissionError):
    """The switch to a service user is not possible as configured; the message says why."""


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]         # supplementary groups: the primary plus any extra

    @classmethod
    def lookup(cls, name: str, extra_group: str | None = None) -> "ServiceUser":
        try:
            entry = pwd.getpwnam(name)
            extra = (grp.getgrnam(extra_group).gr_gid,) if extra_group else ()
        except KeyError:
            missing = extra_group if name_exists(name) else name
            raise PrivilegeError(f"started as root, but user or group {missing!r} does not exist; create the "
                                 "service users (firmware/sysusers.d/mta-lite.conf, or useradd --system)") from None
        return cls(name, entry.pw_uid, entry.pw_gid, (entry.pw_gid, *extra))


def name_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def enter_spool(path: str) -> None:
    """Make the spool the working directory (still root): after the drop, the queue is
    reached by relative names, whatever the modes of the directories above it."""
    os.chdir(path)


def drop_to(user: ServiceUser) -> None:
    """Become `user` for good; raises PrivilegeError if the kernel kept any root id."""
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
    if os.getuid() == 0 or os.geteuid() == 0 or 0 in os.getgroups() and user.gid != 0:
        raise PrivilegeError(f"could not give up root for user {user.name!r}")


def preload(names: tuple[str, ...]) -> None:
    """Import `names` now (the master: each of PRELOADS), so that no child imports them
    after its privilege drop."""
    for name in names:
        importlib.import_module(name)


class LateImportWatch:
    """A meta path finder that only watches: a module imported after the drop is logged
    once by name (the import then goes on, and may fail if the user cannot read it). It is
    consulted only for modules not yet loaded, so it costs nothing on the hot path."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.seen: set[str] = set()

    def find_spec(self, name: str, path=None, target=None):
        if name not in self.seen:
            self.seen.add(name)
            log.warning("warning: %s: module %s imported after the privilege drop", self.who, name)
        return None

    def install(self) -> "LateImportWatch":
        sys.meta_path.insert(0, self)
        return self
