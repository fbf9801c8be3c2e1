"""service — postscreen keeps zombies away from the SMTP engine (Postfix's postscreen, reduced).

A Postscreen is the pre-greeting hook of one listener with `postscreen = true`, in two
stages (smtpd.listener.PreGreetStaged): begin() at connect, after the listener's connection
limits ([postscreen] max_connections and max_connections_per_client on that listener),
decides steps 1-2 and, when the pregreet test is the only one due, asks the listener to hold
the client with the teaser sent (smtpd.arrival: a bare socket per idle client); finish()
then runs on the connection's SmtpStream before its 220 banner:

  1. access list, first match wins: permit (default: permit_mynetworks) skips the tests;
     reject applies denylist_action.
  2. pass cache: a client whose passes are all still valid goes straight to the engine,
     with no greeting delay (PASS OLD).
  3. tests: the DNSBL lookups start at once, all in parallel; the `220-` teaser goes out;
     a client that talks before the final `220 ` within greet_wait is a pregreeter. DNSBL
     weights add up (each site once); a score at or below a negative allowlist threshold
     ends the wait early and passes the client.
  4. verdict: pass (PASS NEW, cached) -> the SMTP engine goes on with the same stream (not a
     proxy); drop -> 521 and close; enforce -> the mini engine (engine.py) answers 550 at RCPT
     and logs sender and recipients.
Stress (STRESS_FRACTION of max_connections busy): greet wait 2 s, SMTP timeouts 10 s with a
per-command deadline, hard error limit 1, for the tests and for the engine after them.
Guarantees: a DNS failure never blocks a client (S6); every wait has a deadline; the cache
survives restarts (cache.py) but never makes a client pass a test it did not pass.
SECURITY: faces the network before any authentication; peer bytes reach the log only
escaped, through text.printable(); peers get SMTP replies only.
Must never: hand a blocked client to the SMTP engine, or hold a client past its deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from mta_lite.config.schema import Config
from mta_lite.reply import R521_DENYLISTED, R521_PROTOCOL_ERROR, R550_DENYLISTED, R550_PROTOCOL_ERROR, Reply, dnsbl_reply
from mta_lite.postscreen.dnsbl import parse_site
from mta_lite.postscreen.dnsblclient import DnsblCheck, DnsPythonLookup, Lookup
from mta_lite.smtpd.arrival import INPUT, TIMEOUT, Hold
from mta_lite.smtpd.handoff import Handoff
from mta_lite.postscreen.engine import EnforceSession
from mta_lite.postscreen.cache import DNSBL, PREGREET, PREGREET_TTL_S, PassCache, cache_path
from mta_lite.postscreen.policy import PERMIT, REJECT, StressLimits, Verdict, access, parse_access, under_stress
from mta_lite.smtpd.stream import READ_CHUNK_BYTES, SmtpStream
from mta_lite.text import printable

log = logging.getLogger("mta_lite.smtpd.postscreen")

# How often new passes are written to the cache file; a crash loses at most this much
# (the clients concerned just take the tests once more).
CACHE_SAVE_INTERVAL_S = 30.0
# A blocked client gets this long to show its envelope to the mini engine, then 421.
ENFORCE_SESSION_LIMIT_S = 300.0
# How much of a pregreeter's text goes into the log line.
PREGREET_LOG_BYTES = 100


@dataclass
class PostscreenCounters:
    """Totals since start over all screened listeners, for the status snapshot."""

    passed: int = 0         # took the tests and passed (PASS NEW)
    cache_hits: int = 0     # passed on a cached result, no tests (PASS OLD)
    pregreet: int = 0       # spoke before their turn
    dnsbl: int = 0          # DNSBL score at or above dnsbl_threshold
    dropped: int = 0        # closed with 521
    enforced: int = 0       # handed to the mini engine (550 at RCPT)
    allowlisted: int = 0    # access list permit, or a DNSBL score at the allowlist threshold
    denylisted: int = 0     # access list reject
    stress: int = 0         # connections that arrived while the listener was under stress

    def items(self):
        return ((f"postscreen_{key}", value) for key, value in asdict(self).items())


@dataclass(slots=True)
class Screening:
    """One client's screening from begin() to finish(): `decided` when no test is due."""

    ip: str
    stress: bool
    started: float = 0.0                  # loop time at begin()
    decided: bool | Handoff | None = None
    verdict: Verdict | None = None        # made when a test fails, or at finish()
    due: tuple[str, ...] = ()
    hold: Hold | None = None              # the pregreet test alone, waited in the listener


class PostscreenService:
    """What the screened listeners of one smtpd share: the cache, the resolver, counters."""

    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.time, lookup: Lookup | None = None,
                 stress: StressLimits = StressLimits()) -> None:
        ps = cfg.postscreen
        self.cfg, self.stress = cfg, stress
        self.sites = tuple(parse_site(text) for text in ps.dnsbl_sites)
        self.access = tuple(parse_access(text) for text in ps.access)
        self.tests = (PREGREET, DNSBL) if self.sites else (PREGREET,)
        self.banner = ps.greet_banner.replace("$hostname", cfg.hostname)
        # The `220-` teaser as sent, made once; b"" when greet_banner is "".
        self.teaser = f"220-{self.banner}\r\n".encode() if self.banner else b""
        # The pregreet test's wait, by stress (False, True): shared by all held clients.
        self.holds = (Hold(ps.greet_wait_s, self.teaser), Hold(stress.greet_wait_s, self.teaser))
        self.cache = PassCache(cache_path(cfg.spool_dir, ps.cache_file), clock)
        if lookup is None and self.sites:
            lookup = DnsPythonLookup(ps.resolver, ps.dnsbl_timeout_s)
        self.lookup = lookup
        self.counters = PostscreenCounters()
        self._save_task: asyncio.Task | None = None

    def listener_config(self) -> Config:
        """The config a screened listener runs with: postscreen's connection limits."""
        ps = self.cfg.postscreen
        return replace(self.cfg, smtpd=replace(self.cfg.smtpd, max_connections=ps.max_connections,
                                               max_connections_per_client=ps.max_connections_per_client))

    def screen(self, active: Callable[[], int]) -> "Postscreen":
        """The pre-greeting hook for one listener; `active()` counts its open connections."""
        return Postscreen(self, active)

    async def start(self) -> None:
        loaded = self.cache.load()
        log.info("postscreen: %d cached clients, %d DNSBL sites", loaded, len(self.sites))
        self._save_task = asyncio.create_task(self._save_loop(), name="postscreen-cache")

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(CACHE_SAVE_INTERVAL_S)
            self.cache.save()

    def close(self) -> None:
        if self._save_task is not None:
            self._save_task.cancel()
        self.cache.save()


class Postscreen:
    """The pre-greeting hook of one listener (see the module docstring)."""

    def __init__(self, service: PostscreenService, active: Callable[[], int]) -> None:
        self.svc, self.active = service, active
        self.ps, self.counters = service.cfg.postscreen, service.counters

    async def __call__(self, stream: SmtpStream, ip: str) -> bool | Handoff:
        """Both stages in the session's task (a listener that cannot hold clients)."""
        state, hold = self.begin(ip)
        if hold is not None and hold.teaser:
            stream.writer.write(hold.teaser)
        return await self.finish(stream, state, None)

    def begin(self, ip: str) -> tuple[Screening, Hold | None]:
        """At connect: the access list and the cache; the Hold when only pregreet is due."""
        stress = under_stress(self.active(), self.ps.max_connections)
        if stress:
            self.counters.stress += 1
        state = Screening(ip, stress, asyncio.get_running_loop().time())
        rule = access(self.svc.access, ip, self.svc.cfg.in_mynetworks(ip))
        if rule == PERMIT:
            self.counters.allowlisted += 1
            log.info("ALLOWLISTED [%s]", ip)
            state.decided = self._handoff(stress)
            return state, None
        if rule == REJECT:
            self.counters.denylisted += 1
            log.info("DENYLISTED [%s]", ip)
            state.verdict = Verdict()
            state.verdict.fail("denylist", self.ps.denylist_action, R550_DENYLISTED, R521_DENYLISTED)
        state.due = self.svc.cache.due(ip, self.svc.tests)
        verdict = state.verdict
        if not state.due and (verdict is None or not verdict.blocked):
            self.counters.cache_hits += 1
            log.info("PASS OLD [%s]", ip)
            state.decided = self._handoff(stress)
        elif PREGREET in state.due and DNSBL not in state.due and (verdict is None or verdict.drop is None):
            state.hold = self.svc.holds[stress]
        return state, state.hold

    async def finish(self, stream: SmtpStream, state: Screening, waited: str | None) -> bool | Handoff:
        """Screen the client on the listener's stream before its banner; the listener goes on
        with the same stream when the answer is True or a Handoff."""
        if state.decided is not None:
            return state.decided
        if state.verdict is None:
            state.verdict = Verdict()
        ip, stress, verdict = state.ip, state.stress, state.verdict
        stream.timeout_s = self._timeout_s(stress)
        if state.hold is not None:
            if not await self._pregreet_only(stream, state, waited):
                return False
        elif state.due and verdict.drop is None and not await self._tests(stream, ip, state.due, stress, verdict):
            return False
        return await self._conclude(stream, ip, stress, verdict)

    # ------------------------------------------------------------ limits

    def _timeout_s(self, stress: bool) -> float:
        smtpd = self.svc.cfg.smtpd
        return min(smtpd.timeout_s, self.svc.stress.timeout_s) if stress else smtpd.timeout_s

    def _error_limit(self, stress: bool) -> int:
        smtpd = self.svc.cfg.smtpd
        return min(smtpd.hard_error_limit, self.svc.stress.hard_error_limit) if stress else smtpd.hard_error_limit

    def _handoff(self, stress: bool) -> bool | Handoff:
        if not stress:
            return True
        timeout_s = self._timeout_s(True)
        return Handoff(timeout_s=timeout_s, command_deadline_s=timeout_s, hard_error_limit=self._error_limit(True))

    # ------------------------------------------------------------ tests

    async def _tests(self, stream: SmtpStream, ip: str, due: tuple[str, ...], stress: bool,
                     verdict: Verdict) -> bool:
        """Pregreet and DNSBL, in parallel within the greet wait; False if the client left.
        The teaser goes out at once, past the stream's held replies; what a pregreeter sends
        is read past the stream's buffer and dropped, so the SMTP engine never takes it for
        commands."""
        wait_s = self.svc.stress.greet_wait_s if stress else self.ps.greet_wait_s
        dnsbl_wait_s = min(self.ps.dnsbl_timeout_s, wait_s)
        check = DnsblCheck(self.svc.sites, ip, self.svc.lookup, dnsbl_wait_s) if DNSBL in due else None
        reading = None
        if PREGREET in due:
            stream.writer.write(self.svc.teaser)
            reading = asyncio.ensure_future(stream.reader.read(READ_CHUNK_BYTES))
        try:
            return await self._watch(ip, reading, check, wait_s if reading else dnsbl_wait_s, verdict)
        finally:
            if check is not None:
                check.cancel()
            if reading is not None and not reading.done():
                # The SMTP engine reads next: the cancelled read must be off the stream
                # first. A cancelled StreamReader.read() leaves any data in its buffer.
                reading.cancel()
                await asyncio.wait([reading])

    def hung_up(self, state: Screening) -> None:
        """The client closed while held in the pregreet test, without a word."""
        self._hangup(state.ip, asyncio.get_running_loop().time() - state.started)

    def _hangup(self, ip: str, after_s: float) -> None:
        log.info("HANGUP after %.1f from [%s] in tests before SMTP handshake", after_s, ip)

    async def _pregreet_only(self, stream: SmtpStream, state: Screening, waited: str | None) -> bool:
        """The pregreet test alone (no DNSBL test due): the common case, and the one that
        holds thousands of idle connections. The listener held the client (`waited` says
        what ended the wait; what the client sent is in the stream's reader), or, with
        waited None, the wait is this one read."""
        ip, loop = state.ip, asyncio.get_running_loop()
        data = None
        if waited != TIMEOUT:
            # Held until the client sent something: it is there, read it past the deadline.
            deadline = None if waited == INPUT else state.started + state.hold.wait_s
            try:
                async with asyncio.timeout_at(deadline):
                    data = await stream.reader.read(READ_CHUNK_BYTES)
            except TimeoutError:
                pass                  # quiet until the end of the wait: the test is passed
        if data is None:
            self.svc.cache.record(ip, PREGREET, PREGREET_TTL_S)
            return True
        if not data:
            self._hangup(ip, loop.time() - state.started)
            return False
        self._pregreeted(ip, data, loop.time() - state.started, state.verdict)
        return True

    async def _watch(self, ip: str, reading: asyncio.Future | None, check: DnsblCheck | None,
                     wait_s: float, verdict: Verdict) -> bool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = {task for task in (reading, check.finished if check else None) if task is not None}
        talked, judged = False, False
        while waiting and not verdict.drop:
            left = started + wait_s - loop.time()
            if left <= 0:
                break
            done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            waiting -= done
            if reading in done:
                data = reading.result()
                if not data:
                    self._hangup(ip, loop.time() - started)
                    return False
                talked = True
                self._pregreeted(ip, data, loop.time() - started, verdict)
            if check is not None and check.finished in done:
                judged = True
                if self._judge_dnsbl(ip, check, verdict, allowlist=not talked):
                    return True           # allowlisted by DNS: skip the rest of the wait
        if check is not None and not judged:
            self._judge_dnsbl(ip, check, verdict, allowlist=False)
        if reading is not None and not talked and not verdict.drop:
            self.svc.cache.record(ip, PREGREET, PREGREET_TTL_S)
        return True

    def _pregreeted(self, ip: str, data: bytes, after_s: float, verdict: Verdict) -> None:
        self.counters.pregreet += 1
        shown = printable(data[:PREGREET_LOG_BYTES].decode("latin-1"), escape=True)
        log.info("PREGREET %d after %.2f from [%s]: %s", len(data), after_s, ip, shown)
        verdict.fail(PREGREET, self.ps.greet_action, R550_PROTOCOL_ERROR, R521_PROTOCOL_ERROR)

    def _judge_dnsbl(self, ip: str, check: DnsblCheck, verdict: Verdict, allowlist: bool) -> bool:
        """Score the answers so far; True if the client is allowlisted by its score."""
        result = check.score()
        threshold = self.ps.dnsbl_allowlist_threshold
        if allowlist and threshold < 0 and result.total <= threshold and not verdict.failed:
            self.counters.allowlisted += 1
            log.info("DNSBL rank %d for [%s]: allowlisted", result.total, ip)
            ttl_s = check.ttl_s()
            self.svc.cache.record(ip, PREGREET, ttl_s)
            self.svc.cache.record(ip, DNSBL, ttl_s)
            return True
        if result.total >= self.ps.dnsbl_threshold:
            self.counters.dnsbl += 1
            log.info("DNSBL rank %d for [%s]", result.total, ip)
            verdict.fail(DNSBL, self.ps.dnsbl_action, dnsbl_reply(550, ip, result.site),
                         dnsbl_reply(521, ip, result.site))
        else:
            self.svc.cache.record(ip, DNSBL, check.ttl_s())
        return False

    # ------------------------------------------------------------ outcome

    async def _conclude(self, stream: SmtpStream, ip: str, stress: bool, verdict: Verdict) -> bool | Handoff:
        if verdict.drop is not None:
            self.counters.dropped += 1
            log.info("DISCONNECT [%s]: %s", ip, verdict.drop)
            stream.hang_up_now(verdict.drop)
            return False
        if verdict.enforce is not None:
            self.counters.enforced += 1
            await self._enforce(stream, ip, verdict.enforce, stress)
            return False
        self.counters.passed += 1
        log.info("PASS NEW [%s]", ip)
        return self._handoff(stress)

    async def _enforce(self, stream: SmtpStream, ip: str, reject: Reply, stress: bool) -> None:
        """The mini SMTP engine: per-command and per-session deadlines, 550 at RCPT."""
        engine = EnforceSession(self.svc.cfg.hostname, ip, reject, self._error_limit(stress))
        stream.command_deadline_s = stream.timeout_s
        stream.queue(engine.greeting())
        async with asyncio.timeout(min(ENFORCE_SESSION_LIMIT_S, self.svc.cfg.smtpd.session_limit_s)):
            while not engine.closing:
                limit = engine.over_limit()
                if limit is not None:
                    stream.queue(limit)
                    break
                line, overlong = await stream.read_line()
                reply = engine.handle_overlong() if overlong else engine.handle_line(line)
                if reply is reject:
                    log.info("%s", engine.rejected())
                stream.queue(reply)
            await stream.flush()
