"""Address parsing: strict syntax, no routing hacks (GUARANTEES S1, S2)."""

import pytest
from hypothesis import given, strategies as st

import ipaddress

from mta_lite.envelope import client_ip, parse_path, split_path_and_params
from mta_lite.errors import AddressError


@pytest.mark.parametrize("raw, expected", [
    ("<Alice@Example.COM>", "Alice@example.com"),
    ("<>", ""),
    ("bob@example.org", "bob@example.org"),
    ("<first.last+tag@sub.example.org>", "first.last+tag@sub.example.org"),
    ('<"john doe"@example.org>', '"john doe"@example.org'),
])
def test_parse_path_valid_sender_is_normalised(raw, expected):
    assert parse_path(raw, sender=True) == expected


@pytest.mark.parametrize("raw, code", [
    ("<@relay.example:user@example.org>", "5.1.3"),     # source route
    ("<user%other.example@example.org>", "5.1.3"),      # percent hack
    ("<host!user@example.org>", "5.1.3"),               # bang path
    ('<"user@other.example"@example.org>', "5.1.3"),    # quoted local part hiding an @
    ("<user@[192.0.2.1]>", "5.1.3"),                    # address literal
    ("<>", "5.1.3"),                                    # empty recipient
    ("<user@exa mple.org>", "5.1.3"),
    ("<user@-bad-.org>", "5.1.3"),
    ("<a..b@example.org>", "5.1.3"),
    ("<" + "a" * 65 + "@example.org>", "5.1.3"),
    ("<user@example.org\x00>", "5.5.2"),
    ("<user\r@example.org>", "5.5.2"),
    ("<üser@example.org>", "5.1.3"),                    # 8-bit without SMTPUTF8
])
def test_parse_path_bad_recipient_raises_with_reply(raw, code):
    with pytest.raises(AddressError) as info:
        parse_path(raw, sender=False)
    assert info.value.reply.enhanced == code


def test_parse_path_utf8_with_smtputf8_is_accepted():
    assert parse_path("<üser@exämple.org>", sender=False, smtputf8=True) == "üser@exämple.org"


def test_parse_path_unqualified_name_is_returned_bare():
    assert parse_path("<root>", sender=False) == "root"


def test_split_path_and_params_keeps_quoted_spaces():
    assert split_path_and_params('<"a b"@x.org> SIZE=10') == ('<"a b"@x.org>', "SIZE=10")


@given(st.text(max_size=300))
def test_parse_path_arbitrary_text_never_crashes_and_output_is_clean(text):
    for sender in (True, False):
        try:
            out = parse_path(text, sender=sender, smtputf8=True)
        except AddressError:
            continue
        assert not any(c in out for c in "\r\n\x00<>%!") and not out.startswith("@")


def _reference_client_ip(text: str):
    try:
        addr = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    return addr.ipv4_mapped or addr if addr.version == 6 else addr


@pytest.mark.parametrize("text", ["192.0.2.1", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3",
                                  "256.1.1.1", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4.5", "", "x", "::1",
                                  "::ffff:192.0.2.1", "fe80::1%eth0", "2001:db8::1", "unknown"])
def test_client_ip_reads_what_ipaddress_reads(text):
    assert client_ip(text) == _reference_client_ip(text)


@given(st.one_of(st.text(alphabet="0123456789.:abcdef% x", max_size=20),
                 st.ip_addresses().map(str)))
def test_client_ip_agrees_with_ipaddress_on_any_text(text):
    assert client_ip(text) == _reference_client_ip(text)
