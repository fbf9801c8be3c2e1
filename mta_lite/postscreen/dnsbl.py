"""dnsbl — DNS blocklist sites, query names and scores; pure: no sockets, no clock.

    site    = domain [ "=" filter ] [ "*" weight ]        (Postfix postscreen_dnsbl_sites)
    filter  = octet "." octet "." octet "." octet
    octet   = number | "[" item *( ";" item ) "]"        item = number | number ".." number

parse_site() turns one entry into a DnsblSite (ValueError with a hint otherwise);
query_name() builds the reversed query name of a client address (IPv4 octets, IPv6
nibbles); score() adds the weights of the sites whose answers match, each site once, and
says which listing site had the highest weight; pass_ttl() tells how long a pass is good.
Guarantees (S6, fail open): only IPv4 answers in 127.0.0.0/8 that match the site's filter
count as listed; Spamhaus error codes (127.255.255.0/24), NXDOMAIN, SERVFAIL, REFUSED,
timeouts, missing answers and anything that is not an IPv4 address count as not listed.
A pass is cached for the smallest TTL seen, clamped to [DNSBL_MIN_TTL_S, DNSBL_MAX_TTL_S].
SECURITY: answers come from DNS servers we do not run; every field is checked before use.
Must never: count an answer outside 127.0.0.0/8, or raise on any answer.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Mapping

from mta_lite.envelope import client_ip as parse_client_ip

# Postfix postscreen_dnsbl_min_ttl / postscreen_dnsbl_max_ttl (3.1+): a pass is cached at
# least this long (fewer queries for chatty clients) and at most this long (a newly listed
# zombie is caught within the hour).
DNSBL_MIN_TTL_S = 60.0
DNSBL_MAX_TTL_S = 3600.0
# RFC 1035 section 2.3.4: 253 characters in a name; the query adds up to 64 characters
# (IPv6 nibbles) in front of the site's domain.
MAX_SITE_DOMAIN_CHARS = 253 - 64
# A weight is a small integer; Postfix scores are ints and a threshold far beyond any sum
# is a typo.
MAX_WEIGHT = 1000
DEFAULT_DNS_PORT = 53
LISTED_NET = ipaddress.ip_network("127.0.0.0/8")
# Spamhaus answers 127.255.255.252 (typo in the zone), .254 (query through a public
# resolver) and .255 (excessive queries): errors, never listings.
ERROR_NET = ipaddress.ip_network("127.255.255.0/24")

OK, NXDOMAIN, ERROR = "ok", "nxdomain", "error"

_SITE = re.compile(r"(?P<domain>[^=*\s]+)(?:=(?P<filter>[^*\s]+))?(?:\*(?P<weight>-?[0-9]{1,4}))?\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_NUMBER = re.compile(r"[0-9]{1,3}\Z")

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class DnsblSite:
    """One dnsbl_sites entry. `octets`: per octet the allowed (low, high) ranges, or None."""

    domain: str
    octets: tuple[Ranges, Ranges, Ranges, Ranges] | None = None
    weight: int = 1

    def matches(self, address: ipaddress.IPv4Address) -> bool:
        if self.octets is None:
            return True
        return all(any(lo <= value <= hi for lo, hi in ranges)
                   for value, ranges in zip(address.packed, self.octets))

    def __str__(self) -> str:
        text = self.domain
        if self.octets is not None:
            text += "=" + ".".join(_format_octet(ranges) for ranges in self.octets)
        if self.weight != 1:
            text += f"*{self.weight}"
        return text


@dataclass(frozen=True)
class Answer:
    """The outcome of one A lookup: OK with addresses, NXDOMAIN (or no A record), or ERROR."""

    status: str
    addresses: tuple[str, ...] = ()
    ttl_s: float | None = None


@dataclass(frozen=True)
class Score:
    total: int
    site: str           # the listing site with the highest weight ("" when none listed)
    complete: bool      # every site's lookup had finished


def _format_octet(ranges: Ranges) -> str:
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return str(ranges[0][0])
    return "[" + ";".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in ranges) + "]"


def _parse_number(text: str) -> int:
    if not _NUMBER.match(text) or int(text) > 255:
        raise ValueError(f"expected a number 0..255, got {text!r}")
    return int(text)


def _parse_octet(text: str) -> Ranges:
    if not (text.startswith("[") and text.endswith("]")):
        value = _parse_number(text)
        return ((value, value),)
    ranges = []
    for item in text[1:-1].split(";"):
        lo, sep, hi = item.partition("..")
        low = _parse_number(lo)
        high = _parse_number(hi) if sep else low
        if high < low:
            raise ValueError(f"empty range {item!r}")
        ranges.append((low, high))
    return tuple(ranges)


def _parse_filter(text: str) -> tuple[Ranges, Ranges, Ranges, Ranges]:
    parts = text.split(".")
    # "[0..255]" contains dots: rejoin pieces inside brackets.
    octets, current = [], ""
    for part in parts:
        current = f"{current}.{part}" if current else part
        if current.count("[") == current.count("]"):
            octets.append(current)
            current = ""
    if current or len(octets) != 4:
        raise ValueError(f"expected a filter like 127.0.0.[2..11], got {text!r}")
    a, b, c, d = (_parse_octet(octet) for octet in octets)
    return a, b, c, d


def _check_domain(domain: str) -> str:
    name = domain.rstrip(".").lower()
    if not name or len(name) > MAX_SITE_DOMAIN_CHARS or not all(_LABEL.match(x) for x in name.split(".")):
        raise ValueError(f"expected a DNS zone like zen.spamhaus.org, got {domain!r}")
    return name


def parse_site(text: str) -> DnsblSite:
    """`zen.spamhaus.org=127.0.0.[2..11]*3` -> DnsblSite; ValueError naming the problem."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {text!r}")
    match = _SITE.match(text.strip())
    if not match:
        raise ValueError(f'expected "domain[=d.d.d.d][*weight]", got {text!r}')
    domain = _check_domain(match.group("domain"))
    octets = _parse_filter(match.group("filter")) if match.group("filter") else None
    weight = int(match.group("weight")) if match.group("weight") else 1
    if abs(weight) > MAX_WEIGHT:
        raise ValueError(f"weight out of range -{MAX_WEIGHT}..{MAX_WEIGHT}: {weight}")
    return DnsblSite(domain, octets, weight)


def query_name(client_ip: str, domain: str) -> str | None:
    """`2.0.0.127.zen.test` for 127.0.0.2; IPv6 as 32 nibbles; None for a non-address."""
    addr = parse_client_ip(client_ip)
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv4Address):
        labels = reversed(str(addr).split("."))
    else:
        labels = reversed(addr.exploded.replace(":", ""))
    return ".".join(labels) + "." + domain


def listed_addresses(answer: Answer | None) -> list[ipaddress.IPv4Address]:
    """The answer's addresses that may count as a listing (S6); [] for anything else."""
    if answer is None or answer.status != OK:
        return []
    found = []
    for text in answer.addresses[:64]:       # a sane answer has a handful of records
        try:
            addr = ipaddress.ip_address(text) if isinstance(text, str) else None
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv4Address) and addr in LISTED_NET and addr not in ERROR_NET:
            found.append(addr)
    return found


def score(sites: tuple[DnsblSite, ...], answers: Mapping[str, Answer]) -> Score:
    """Sum of the weights of matching sites (each once); `answers` is keyed by domain."""
    total, best, best_weight = 0, "", 0
    for site in sites:
        addresses = listed_addresses(answers.get(site.domain))
        if not any(site.matches(addr) for addr in addresses):
            continue
        total += site.weight
        if site.weight > best_weight:
            best, best_weight = site.domain, site.weight
    complete = all(site.domain in answers for site in sites)
    return Score(total, best, complete)


def pass_ttl(sites: tuple[DnsblSite, ...], answers: Mapping[str, Answer]) -> float:
    """How long a DNSBL pass is cached: the smallest TTL seen, clamped. A failed or missing
    lookup counts as the minimum: the client passed only because we failed open."""
    ttl = DNSBL_MAX_TTL_S
    for domain in {site.domain for site in sites}:
        answer = answers.get(domain)
        if answer is None or answer.status not in (OK, NXDOMAIN):
            ttl = DNSBL_MIN_TTL_S
        elif isinstance(answer.ttl_s, (int, float)) and answer.ttl_s == answer.ttl_s:   # not NaN
            ttl = min(ttl, float(answer.ttl_s))
    return min(max(ttl, DNSBL_MIN_TTL_S), DNSBL_MAX_TTL_S)


def parse_resolver(spec: str) -> tuple[str, int]:
    """`127.0.0.1:53`, `127.0.0.1`, `[::1]:5353` -> (address, port); ValueError otherwise."""
    host = spec
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f'expected "address:port", got {spec!r}')
        port_text = rest[1:] if rest else str(DEFAULT_DNS_PORT)
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
    else:
        port_text = str(DEFAULT_DNS_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected a port 1..65535, got {port_text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address (no host names: they would need DNS), got {host!r}") from None
    return host, int(port_text)
