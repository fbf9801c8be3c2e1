"""cache — postscreen's pass cache: which clients passed which test, and until when.

A client that passed every enabled test goes straight to the SMTP engine on its next
connection, without the greeting delay. Each test's pass is kept separately (Postfix
postscreen_cache_map): pregreet for PREGREET_TTL_S, DNSBL for the TTL the answers allowed.
The cache lives in memory and is saved as a small JSON file in spool/postscreen/ (the one
spool directory besides incoming/ that smtpd may write) so passes survive a
restart: save() writes it with safeio.atomic_write() when something changed.
Guarantees: lookups use the injected clock only; a missing, unreadable or corrupt file
means an empty cache (and a warning), never a crash; at most MAX_ENTRIES clients are kept
(the ones whose passes expire last), so the file and the memory stay small (G5).
SECURITY: the file is written by smtpd only, but is still parsed defensively: anything
that is not an address with numeric expiry times is dropped.
Must never: make a client pass a test it did not pass, or block a client because of it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
from typing import Callable

from mta_lite import safeio

log = logging.getLogger("mta_lite.smtpd.postscreen")

PREGREET, DNSBL = "pregreet", "dnsbl"
TESTS = (PREGREET, DNSBL)
# Postfix postscreen_greet_ttl = 1d: a client that waited for its turn once is a real MTA.
PREGREET_TTL_S = 86400.0
# A home-office relay sees few distinct clients; 10,000 entries are about 1 MB of memory
# and 700 KB on disk. Past this the passes that expire first are forgotten first.
MAX_ENTRIES = 10_000
# The file is ours, but a runaway one must not be read into memory whole.
MAX_FILE_BYTES = 4 * 1024 * 1024
FILE_VERSION = 1
FILE_MODE = 0o600


class PassCache:
    """ip -> [pregreet_until, dnsbl_until] (epoch seconds; 0: not passed)."""

    def __init__(self, path: str = "", clock: Callable[[], float] | None = None) -> None:
        self.path = path
        self.clock = clock or _no_clock
        self.entries: dict[str, list[float]] = {}
        self.dirty = False

    def passed(self, ip: str, test: str) -> bool:
        entry = self.entries.get(ip)
        return entry is not None and entry[TESTS.index(test)] > self.clock()

    def due(self, ip: str, tests: tuple[str, ...]) -> tuple[str, ...]:
        """Which of `tests` this client must take now."""
        return tuple(test for test in tests if not self.passed(ip, test))

    def record(self, ip: str, test: str, ttl_s: float) -> None:
        until = self.clock() + ttl_s
        entry = self.entries.setdefault(ip, [0.0, 0.0])
        index = TESTS.index(test)
        if until > entry[index]:
            entry[index] = until
            self.dirty = True
        if len(self.entries) > MAX_ENTRIES:
            self._evict()

    def _evict(self) -> None:
        keep = sorted(self.entries.items(), key=lambda item: max(item[1]), reverse=True)[:MAX_ENTRIES]
        self.entries = dict(keep)

    def prune(self) -> None:
        now = self.clock()
        expired = [ip for ip, entry in self.entries.items() if max(entry) <= now]
        for ip in expired:
            del self.entries[ip]
        self.dirty = self.dirty or bool(expired)

    # ------------------------------------------------------------ the file

    def load(self) -> int:
        """Read the file (if any); returns the number of clients loaded."""
        if not self.path:
            return 0
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("warning: cannot read postscreen cache %s: %s", self.path, exc.strerror)
            return 0
        self.entries = decode(data)
        if not self.entries and data.strip():
            log.warning("warning: postscreen cache %s is not valid; starting empty", self.path)
        self.prune()
        self.dirty = False
        return len(self.entries)

    def save(self) -> bool:
        """Write the file if anything changed; False (and a warning) if it could not be."""
        if not self.path or not self.dirty:
            return True
        self.prune()
        try:
            safeio.atomic_write(self.path, encode(self.entries), mode=FILE_MODE)
        except OSError as exc:
            log.warning("warning: cannot write postscreen cache %s: %s", self.path, exc.strerror)
            return False
        self.dirty = False
        return True


def _no_clock() -> float:
    raise RuntimeError("PassCache needs a clock")


def encode(entries: dict[str, list[float]]) -> bytes:
    return json.dumps({"version": FILE_VERSION, "clients": entries}, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, list[float]]:
    """The cache file -> entries; anything malformed is left out (never raises)."""
    if len(data) > MAX_FILE_BYTES:
        return {}
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    clients = doc.get("clients") if isinstance(doc, dict) and doc.get("version") == FILE_VERSION else None
    if not isinstance(clients, dict):
        return {}
    entries = {}
    for ip, times in list(clients.items())[:MAX_ENTRIES]:
        if _valid_entry(ip, times):
            entries[ip] = [float(t) for t in times]
    return entries


def _valid_entry(ip: object, times: object) -> bool:
    if not isinstance(ip, str) or not isinstance(times, list) or len(times) != len(TESTS):
        return False
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        return False
    try:
        ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return False
    return True


def cache_path(spool_dir: str, cache_file: str) -> str:
    """Where the cache lives: spool/postscreen/NAME ("" keeps it in memory only)."""
    return os.path.join(spool_dir, "postscreen", cache_file) if cache_file else ""
