"""Fuzz the envelope address parser (envelope.parse_path) with address-shaped input.

Peer: none (pure). Addresses are built from RFC 5321 pieces and every routing trick (percent,
bang, source route, quoted local part, address literal, controls, 8-bit), so hypothesis spends
its budget near the grammar's edges rather than on random text (tests/unit/test_envelope.py
has the random-text property). S1/S2: what the parser accepts is one plain local@domain,
idempotent, and the same for senders and recipients.
"""

from __future__ import annotations

import re

from hypothesis import example, given, strategies as st, target

from mta_lite.envelope import MAX_PATH_BYTES, parse_path
from mta_lite.errors import AddressError
from tests.fuzz.profiles import fuzz_settings

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
atom_chars = st.sampled_from(list("abcXYZ019#$&'*+/=?^_`{|}~-") + ["é", "ß", "\u0085", "\u2028", "\x00", "\t",
                                                                    "%", "!", "@", ":", ",", "[", "]", "<", ">",
                                                                    '"', "\\", " ", "."])
atom = st.text(atom_chars, min_size=0, max_size=10)
local = st.one_of(atom, st.lists(atom, min_size=1, max_size=4).map(".".join),
                  atom.map(lambda a: f'"{a}"'), st.sampled_from(['"a\\"b"', '"a\\\\"', '""', '"a b"']))
label = st.text(st.sampled_from(list("abz09-") + ["é", "_", "\x00", "%"]), min_size=0, max_size=8)
domain = st.one_of(st.lists(label, min_size=1, max_size=4).map(".".join),
                   st.sampled_from(["[192.0.2.1]", "[IPv6:::1]", "localhost", "EXAMPLE.ORG", "x" * 64 + ".example"]))
address = st.one_of(st.builds(lambda l, d: f"{l}@{d}", local, domain), local,
                    st.builds(lambda r, l, d: f"@{r}:{l}@{d}", domain, local, domain),
                    st.builds(lambda l, d, e: f"{l}@{d}@{e}", local, domain, domain))
raw_path = st.one_of(address.map(lambda a: f"<{a}>"), address)


def accepted(raw: str, sender: bool, smtputf8: bool) -> str | None:
    try:
        return parse_path(raw, sender=sender, smtputf8=smtputf8)
    except AddressError as exc:
        assert exc.reply is None or 500 <= exc.reply.code < 600
        return None


@fuzz_settings(500)
@given(raw=raw_path, smtputf8=st.booleans())
@example(raw="<a\u0085b@example.org>", smtputf8=True)
@example(raw='<"a@b"@example.org>', smtputf8=False)
def test_parse_path_accepts_only_plain_idempotent_addresses(raw, smtputf8):
    as_rcpt = accepted(raw, sender=False, smtputf8=smtputf8)
    as_sender = accepted(raw, sender=True, smtputf8=smtputf8)
    assert as_rcpt == as_sender or (as_rcpt is None and as_sender == "")
    if not as_rcpt:
        return
    target(float(len(as_rcpt).bit_length()), label="log2 of accepted address length")
    out = as_rcpt
    assert not _CONTROL.search(out) and len(out.encode("utf-8")) + 2 <= MAX_PATH_BYTES
    local_part, at, domain_part = out.rpartition("@")
    if at:
        assert domain_part == domain_part.lower() and not domain_part.startswith("[")
        assert all(part for part in domain_part.split("."))
    else:
        local_part, domain_part = out, ""       # unqualified: the session decides what it means
    assert not out.startswith("@") and ":" not in domain_part
    if local_part.startswith('"'):
        assert not any(c in local_part for c in "@%!")
    else:
        assert not any(c in local_part for c in '@%!<>[] "')
    assert parse_path(f"<{out}>", sender=False, smtputf8=smtputf8) == out       # idempotent
    if not smtputf8:
        assert out.isascii()
    else:
        ascii_only = accepted(raw, sender=False, smtputf8=False)
        assert ascii_only in (None, out)
