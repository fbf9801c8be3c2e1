"""Fuzz the queue-file reader (queue/queuefile.py) with damaged and with forged files.

Peer: none (real files in a temporary directory). Damaged: a valid file changed by flips,
insertions, deletions, duplicated or foreign ranges, another file's trailer; the reader must
refuse it or return exactly the original (G4: nothing is ever delivered half). Forged: files
whose trailer and checksum are right but whose envelope is anything JSON can say, as a local
user can drop into maildrop/; the reader must return well-typed fields or raise
CorruptQueueFileError, never another exception. (tests/unit/test_queue.py has every truncation
offset, single bit flips and random bytes.)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile

from hypothesis import example, given, strategies as st, target

from mta_lite.errors import CorruptQueueFileError
from mta_lite.queue.queuefile import MAGIC, encode_trailer, parse_bytes, parse_open, read_queue_file
from tests.fuzz.profiles import fuzz_settings

ENVELOPE = {"sender": "scanner@lan.test", "recipients": ["ops@remote.example", "b@remote.example"],
            "arrival": 1700000000.25, "client_address": "192.168.1.7", "client_helo": "scanner.lan",
            "smtputf8": False, "body": "7BIT", "is_bounce": False}
CONTENT = b"Received: from scanner\r\nSubject: scan\r\n\r\n.line\r\nbody\r\n"


def build(envelope, content: bytes, raw_envelope: bytes | None = None) -> bytes:
    line = raw_envelope if raw_envelope is not None else json.dumps(envelope, separators=(",", ":")).encode()
    head = MAGIC + line + b"\n" + content
    return head + encode_trailer(len(content), hashlib.sha256(head).hexdigest())


ORIGINAL = build(ENVELOPE, CONTENT)
OTHER = build({**ENVELOPE, "sender": "other@lan.test"}, CONTENT + b"more\r\n")


def read_bytes(data: bytes):
    fd, path = tempfile.mkstemp(prefix="mta-fuzz-q-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        entry = read_queue_file(path)
        return entry, entry.read_content()
    finally:
        os.unlink(path)


def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for kind, position, value in ops:
        at = position % (len(out) + 1)
        if kind == "flip" and out:
            out[at % len(out)] ^= 1 << (value % 8)
        elif kind == "insert":
            out[at:at] = bytes([value % 256])
        elif kind == "delete" and out:
            del out[at % len(out)]
        elif kind == "duplicate":
            out[at:at] = out[at:at + value % 64]
        elif kind == "foreign":
            out[at:at + value % 64] = OTHER[at:at + value % 64]
        elif kind == "trailer":
            out = out[:out.rfind(b"\nEND ")] + OTHER[OTHER.rfind(b"\nEND "):]
    return bytes(out)


OPS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "duplicate", "foreign", "trailer"]),
                         st.integers(min_value=0), st.integers(min_value=0, max_value=1000)), min_size=1, max_size=4)


@fuzz_settings(400)
@given(ops=OPS)
def test_queue_file_damaged_in_any_way_is_refused_or_read_exactly(ops):
    damaged = mutate(ORIGINAL, ops)
    try:
        entry, content = read_bytes(damaged)
    except CorruptQueueFileError:
        return
    assert damaged == ORIGINAL, "a changed queue file was accepted"
    assert content == CONTENT and entry.sender == ENVELOPE["sender"]


def verdict(parse, data: bytes):
    try:
        return parse(data)
    except CorruptQueueFileError as exc:
        return str(exc)


@fuzz_settings(400)
@given(ops=OPS)
def test_both_readers_agree_on_any_damaged_file(ops):
    """A small queue file is validated in memory (one read), a big one from the open file:
    the same verdict, the same error and the same entry either way."""
    damaged = mutate(ORIGINAL, ops)
    in_memory = verdict(lambda d: parse_bytes(d, "q", keep_content=True), damaged)
    streamed = verdict(lambda d: parse_open(io.BytesIO(d), "q"), damaged)
    assert in_memory == streamed
    if not isinstance(in_memory, str):
        assert in_memory.content == CONTENT


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=8)
field_values = {
    "sender": st.one_of(st.text(max_size=30), json_value),
    "recipients": st.one_of(st.lists(st.text(max_size=30), max_size=3), json_value),
    "arrival": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**400, max_value=10**400),
                         json_value),
    "client_address": st.one_of(st.text(max_size=20), json_value),
    "client_helo": st.one_of(st.text(max_size=20), json_value),
    "smtputf8": st.one_of(st.booleans(), json_value),
    "body": st.one_of(st.sampled_from(["7BIT", "8BITMIME"]), json_value),
    "is_bounce": st.one_of(st.booleans(), json_value),
}
forged_envelope = st.fixed_dictionaries({}, optional=field_values).flatmap(
    lambda present: st.just({**ENVELOPE, **present}) if len(present) < 3 else st.just(present))


@fuzz_settings(400)
@given(envelope=forged_envelope, content=st.binary(max_size=200), raw=st.one_of(st.none(), st.binary(max_size=80)))
@example(envelope={**ENVELOPE, "arrival": 10**400}, content=b"x\r\n", raw=None)
@example(envelope={**ENVELOPE, "arrival": float("nan")}, content=b"x\r\n", raw=None)
def test_queue_file_forged_with_a_valid_checksum_is_typed_or_refused(envelope, content, raw):
    raw_line = raw.replace(b"\n", b"") if raw is not None else None
    try:
        entry, read = read_bytes(build(envelope, content, raw_line))
    except CorruptQueueFileError:
        return
    target(float(len(entry.recipients)), label="recipients in an accepted forged file")
    assert read == content and entry.size == len(content)
    assert isinstance(entry.sender, str) and isinstance(entry.body, str)
    assert entry.recipients and all(isinstance(r, str) and r for r in entry.recipients)
    assert isinstance(entry.arrival, float) and math.isfinite(entry.arrival)
    assert isinstance(entry.smtputf8, bool) and isinstance(entry.is_bounce, bool)
