"""DNSBL sites, query names and scores (smtpd/dnsbl.py), and DnsblCheck with a fake lookup.

The site parser and the scorer face text from the config and answers from DNS servers we
do not run: hypothesis feeds both arbitrary input. S6: only answers in 127.0.0.0/8 that
match the site's filter count; error codes, garbage and failures never do.
"""

import asyncio
import ipaddress
import math

import pytest
from hypothesis import given, settings, strategies as st

from mta_lite.postscreen.dnsbl import (DNSBL_MAX_TTL_S, DNSBL_MIN_TTL_S, ERROR, NXDOMAIN, OK, Answer, DnsblSite,
                                  parse_resolver, parse_site, pass_ttl, query_name, score)
from mta_lite.postscreen.dnsblclient import DnsblCheck

ZEN = parse_site("zen.spamhaus.org=127.0.0.[2..11]*3")
BL = parse_site("bl.example*2")
WL = parse_site("list.dnswl.org=127.0.[0..255].[1..3]*-2")


# ---------------------------------------------------------------- the site syntax

def test_parse_site_with_filter_and_weight_reads_all_parts():
    assert ZEN == DnsblSite("zen.spamhaus.org", ((( 127, 127),), ((0, 0),), ((0, 0),), ((2, 11),)), 3)
    assert BL == DnsblSite("bl.example", None, 2)
    assert WL.weight == -2 and WL.octets[2] == ((0, 255),) and WL.octets[3] == ((1, 3),)


def test_parse_site_with_semicolon_list_keeps_every_item():
    site = parse_site("b.example=127.0.0.[2;4;10..11]")
    assert site.octets[3] == ((2, 2), (4, 4), (10, 11)) and site.weight == 1


def test_parse_site_default_weight_is_one_and_domain_is_lowercased():
    assert parse_site("BL.Example.").domain == "bl.example"
    assert parse_site("bl.example").weight == 1


@pytest.mark.parametrize("text", [
    "", "=127.0.0.2", "bl.example=", "bl.example=127.0.0", "bl.example=127.0.0.256",
    "bl.example=127.0.0.[5..2]", "bl.example=127.0.0.[2..]", "bl.example*", "bl.example*x",
    "bl.example*2*3", "-bad.example", "bl..example", "bl example", "bl.example=127.0.0.[2",
    "bl.example*99999", "bl.example=127.0.0.2.5", "a" * 64 + ".example",
])
def test_parse_site_bad_syntax_raises_value_error(text):
    with pytest.raises(ValueError):
        parse_site(text)


def test_parse_site_non_string_raises_value_error():
    with pytest.raises(ValueError):
        parse_site(42)


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)
_range = st.tuples(st.integers(0, 255), st.integers(0, 255)).map(sorted).map(tuple)
_octet = st.lists(_range, min_size=1, max_size=3).map(tuple)
_site = st.builds(DnsblSite, _domain, st.none() | st.tuples(_octet, _octet, _octet, _octet),
                  st.integers(-1000, 1000))


@given(_site)
def test_parse_site_of_formatted_site_round_trips(site):
    assert parse_site(str(site)) == site


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_parse_site_any_text_gives_site_or_value_error(text):
    try:
        site = parse_site(text)
    except ValueError:
        return
    assert parse_site(str(site)) == site


# ---------------------------------------------------------------- query names

def test_query_name_ipv4_reverses_octets():
    assert query_name("192.0.2.99", "zen.test") == "99.2.0.192.zen.test"


def test_query_name_ipv4_mapped_uses_ipv4_form():
    assert query_name("::ffff:192.0.2.99", "zen.test") == "99.2.0.192.zen.test"


def test_query_name_ipv6_uses_32_nibbles():
    name = query_name("2001:db8::1", "zen.test")
    assert name.startswith("1.0.0.0.") and name.endswith(".8.b.d.0.1.0.0.2.zen.test")
    assert len(name.split(".")) == 32 + 2


def test_query_name_not_an_address_is_none():
    assert query_name("unknown", "zen.test") is None


# ---------------------------------------------------------------- scores (S6)

def ok(*addresses: str, ttl: float = 300.0) -> Answer:
    return Answer(OK, addresses, ttl)


def test_score_weights_add_per_site_and_name_the_heaviest():
    result = score((ZEN, BL, WL), {"zen.spamhaus.org": ok("127.0.0.4"), "bl.example": ok("127.0.0.2"),
                                   "list.dnswl.org": Answer(NXDOMAIN)})
    assert (result.total, result.site, result.complete) == (5, "zen.spamhaus.org", True)


def test_score_site_counts_once_whatever_the_number_of_records():
    result = score((BL,), {"bl.example": ok("127.0.0.2", "127.0.0.3", "127.0.0.4")})
    assert result.total == 2


def test_score_filter_mismatch_is_not_listed():
    assert score((ZEN,), {"zen.spamhaus.org": ok("127.0.0.12")}).total == 0


def test_score_allowlist_weight_is_negative():
    result = score((ZEN, WL), {"zen.spamhaus.org": Answer(NXDOMAIN), "list.dnswl.org": ok("127.0.10.2")})
    assert (result.total, result.site) == (-2, "")


@pytest.mark.parametrize("answer", [
    ok("127.255.255.254"), ok("127.255.255.252"), ok("127.255.255.255"),   # Spamhaus error codes
    ok("10.0.0.2"), ok("192.0.2.1"), ok("::1"), ok("not an address"), ok(""),   # garbage
    Answer(NXDOMAIN), Answer(ERROR), Answer(ERROR, ("127.0.0.2",)),        # failures
])
def test_score_errors_and_garbage_count_as_not_listed(answer):
    assert score((BL,), {"bl.example": answer}).total == 0


def test_score_missing_answer_is_not_listed_and_incomplete():
    result = score((ZEN, BL), {"bl.example": ok("127.0.0.2")})
    assert (result.total, result.complete) == (2, False)


_address_text = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.ip_addresses(network="127.0.0.0/8").map(str), st.text(max_size=20))
_answer = st.builds(Answer, st.sampled_from([OK, NXDOMAIN, ERROR, "weird"]),
                    st.lists(_address_text, max_size=5).map(tuple),
                    st.none() | st.floats(allow_nan=True, allow_infinity=True))


@given(st.dictionaries(st.sampled_from(["zen.spamhaus.org", "bl.example", "list.dnswl.org", "other"]), _answer))
@settings(max_examples=300)
def test_score_any_answers_count_only_listed_127_addresses(answers):
    result = score((ZEN, BL, WL), answers)
    expected = 0
    for site in (ZEN, BL, WL):
        answer = answers.get(site.domain)
        if answer is None or answer.status != OK:
            continue
        good = []
        for text in answer.addresses:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if addr.version == 4 and addr in ipaddress.ip_network("127.0.0.0/8") \
                    and addr not in ipaddress.ip_network("127.255.255.0/24"):
                good.append(addr)
        expected += site.weight if any(site.matches(a) for a in good) else 0
    assert result.total == expected
    ttl = pass_ttl((ZEN, BL, WL), answers)
    assert DNSBL_MIN_TTL_S <= ttl <= DNSBL_MAX_TTL_S and not math.isnan(ttl)


# ---------------------------------------------------------------- pass TTL

@pytest.mark.parametrize("ttl, expected", [(5.0, 60.0), (300.0, 300.0), (86400.0, 3600.0)])
def test_pass_ttl_is_clamped_between_60s_and_1h(ttl, expected):
    assert pass_ttl((BL,), {"bl.example": Answer(NXDOMAIN, ttl_s=ttl)}) == expected


def test_pass_ttl_smallest_ttl_wins():
    answers = {"zen.spamhaus.org": Answer(NXDOMAIN, ttl_s=900.0), "bl.example": ok("127.0.0.2", ttl=120.0)}
    assert pass_ttl((ZEN, BL), answers) == 120.0


def test_pass_ttl_failed_lookup_is_the_minimum():
    answers = {"zen.spamhaus.org": Answer(NXDOMAIN, ttl_s=900.0), "bl.example": Answer(ERROR)}
    assert pass_ttl((ZEN, BL), answers) == DNSBL_MIN_TTL_S


def test_pass_ttl_nxdomain_without_soa_is_the_maximum():
    assert pass_ttl((BL,), {"bl.example": Answer(NXDOMAIN)}) == DNSBL_MAX_TTL_S


# ---------------------------------------------------------------- resolver setting

@pytest.mark.parametrize("spec, expected", [
    ("127.0.0.1:53", ("127.0.0.1", 53)), ("127.0.0.1", ("127.0.0.1", 53)),
    ("[::1]:5353", ("::1", 5353)), ("::1", ("::1", 53)),
])
def test_parse_resolver_address_and_port(spec, expected):
    assert parse_resolver(spec) == expected


@pytest.mark.parametrize("spec", ["dns.example:53", "127.0.0.1:0", "127.0.0.1:99999", "[::1", "127.0.0.1:x"])
def test_parse_resolver_bad_value_raises_value_error(spec):
    with pytest.raises(ValueError):
        parse_resolver(spec)


# ---------------------------------------------------------------- DnsblCheck (fake lookup)

def test_dnsbl_check_queries_each_domain_once_in_parallel():
    seen: list[str] = []

    async def lookup(qname):
        seen.append(qname)
        await asyncio.sleep(0)
        return ok("127.0.0.2")

    async def main():
        sites = (parse_site("zen.test*2"), parse_site("zen.test=127.0.0.3*5"), parse_site("bl.test"))
        check = DnsblCheck(sites, "192.0.2.1", lookup, 1.0)
        await check.finished
        return check.score()
    result = asyncio.run(main())
    assert sorted(seen) == ["1.2.0.192.bl.test", "1.2.0.192.zen.test"]
    assert result.total == 3 and result.complete


def test_dnsbl_check_slow_or_failing_lookup_counts_as_not_listed():
    async def lookup(qname):
        if qname.endswith("slow.test"):
            await asyncio.Event().wait()
        if qname.endswith("bug.test"):
            raise RuntimeError("a bug in the lookup")
        return ok("127.0.0.2")

    async def main():
        sites = (parse_site("slow.test"), parse_site("bug.test"), parse_site("ok.test"))
        check = DnsblCheck(sites, "192.0.2.1", lookup, 0.05)
        await check.finished
        return check.score(), check.ttl_s()
    result, ttl = asyncio.run(main())
    assert result.total == 1 and ttl == DNSBL_MIN_TTL_S


def test_dnsbl_check_cancel_leaves_no_task_running():
    async def lookup(qname):
        await asyncio.Event().wait()

    async def main():
        check = DnsblCheck((parse_site("slow.test"),), "192.0.2.1", lookup, 30.0)
        await asyncio.sleep(0)
        check.cancel()
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert asyncio.run(main()) == []
