"""dnsblclient — DNSBL lookups for one client, all in parallel, with a deadline.

DnsblCheck starts one A lookup per distinct site domain at connect time; score() can be
asked at any moment and counts only what has been answered (dnsbl.score()). The lookup
itself is injected (`Lookup`: query name -> dnsbl.Answer); DnsPythonLookup is the real
one, dnspython's asyncio resolver pointed at `resolver = "host:port"` or, without it, at
the system's resolvers. dnspython is imported only when DNSBL sites are configured.
Guarantees (S6, fail open): a lookup that fails in any way — timeout, SERVFAIL, REFUSED,
a malformed reply, a bug in the lookup — becomes Answer(ERROR), i.e. not listed; every
lookup ends by its deadline; cancel() leaves no task behind.
SECURITY: sends one query per site to the configured resolver and nowhere else; the
answers are untrusted and go through dnsbl.listed_addresses() only.
Must never: let a DNS problem delay a client beyond the deadline or block it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from mta_lite.postscreen.dnsbl import (ERROR, NXDOMAIN, OK, Answer, DnsblSite, Score, parse_resolver, pass_ttl, query_name,
                    score)

log = logging.getLogger("mta_lite.smtpd.postscreen")

Lookup = Callable[[str], Awaitable[Answer]]
# An answer with more records than this is garbage for a DNSBL (they return one or two).
MAX_ANSWER_RECORDS = 64


class DnsblCheck:
    """The DNSBL lookups of one connection; started on construction (needs a running loop)."""

    def __init__(self, sites: tuple[DnsblSite, ...], client_ip: str, lookup: Lookup, timeout_s: float) -> None:
        self.sites = sites
        self.answers: dict[str, Answer] = {}
        self._tasks: list[asyncio.Task] = []
        for domain in dict.fromkeys(site.domain for site in sites):
            qname = query_name(client_ip, domain)
            if qname is None:
                self.answers[domain] = Answer(ERROR)
                continue
            self._tasks.append(asyncio.ensure_future(self._one(domain, qname, lookup, timeout_s)))
        self.finished = asyncio.ensure_future(self._all())

    async def _one(self, domain: str, qname: str, lookup: Lookup, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                answer = await lookup(qname)
        except TimeoutError:
            answer = Answer(ERROR)
        except Exception as exc:  # noqa: BLE001 - S6: any failure to look up means "not listed"
            log.warning("warning: DNSBL lookup %s failed: %s", qname, type(exc).__name__)
            answer = Answer(ERROR)
        self.answers[domain] = answer if isinstance(answer, Answer) else Answer(ERROR)

    async def _all(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks)

    def score(self) -> Score:
        return score(self.sites, self.answers)

    def ttl_s(self) -> float:
        return pass_ttl(self.sites, self.answers)

    def cancel(self) -> None:
        for task in (*self._tasks, self.finished):
            task.cancel()


def preload() -> None:
    """Import what dnspython imports on first use, while the process can still read it
    (the master preloads; smtpd may then run as a user without access to the venv)."""
    import dns.asyncbackend
    import dns.asyncresolver  # noqa: F401
    import dns.rdtypes.ANY.CNAME  # noqa: F401
    import dns.rdtypes.ANY.SOA  # noqa: F401
    import dns.rdtypes.IN.A  # noqa: F401
    # Name the backend: otherwise dnspython tries to import sniffio on every query to find
    # out, a search of the interpreter's path each time (and after the drop, one that fails).
    dns.asyncbackend.set_default_backend("asyncio")


class DnsPythonLookup:
    """Lookup backed by dnspython's asyncio resolver; no cache (postscreen has its own)."""

    def __init__(self, resolver: str, timeout_s: float) -> None:
        import dns.asyncresolver
        import dns.resolver
        preload()
        self.resolver = None
        try:
            if resolver:
                host, port = parse_resolver(resolver)
                self.resolver = dns.asyncresolver.Resolver(configure=False)
                self.resolver.nameservers, self.resolver.port = [host], port
            else:
                self.resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            log.warning("warning: no DNS resolver configured; DNSBL lookups are skipped")
            return
        self.resolver.cache = None
        self.resolver.timeout = self.resolver.lifetime = timeout_s
        self.resolver.retry_servfail = False

    async def __call__(self, qname: str) -> Answer:
        import dns.exception
        import dns.resolver
        if self.resolver is None:
            return Answer(ERROR)
        try:
            answer = await self.resolver.resolve(qname, "A", search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return Answer(NXDOMAIN, ttl_s=negative_ttl(exc))
        except (dns.exception.DNSException, OSError, ValueError, EOFError):
            return Answer(ERROR)
        rrset = answer.rrset
        if rrset is None:                    # NOERROR without an A record: not listed
            return Answer(NXDOMAIN, ttl_s=_soa_ttl(answer.response))
        addresses = tuple(str(rdata.address) for rdata in list(rrset)[:MAX_ANSWER_RECORDS]
                          if hasattr(rdata, "address"))
        return Answer(OK, addresses, float(rrset.ttl))


def negative_ttl(exc) -> float | None:
    """RFC 2308 section 5: a negative answer lives min(SOA TTL, SOA MINIMUM)."""
    try:
        responses = exc.responses()
    except (AttributeError, KeyError, TypeError):
        return None
    ttls = [ttl for response in responses.values() if (ttl := _soa_ttl(response)) is not None]
    return min(ttls) if ttls else None


def _soa_ttl(response) -> float | None:
    for rrset in getattr(response, "authority", None) or ():
        for rdata in rrset:
            minimum = getattr(rdata, "minimum", None)
            if isinstance(minimum, int):
                return float(min(rrset.ttl, minimum))
    return None

