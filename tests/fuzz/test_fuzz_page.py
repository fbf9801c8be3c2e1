"""Fuzz the status page's readers: whatever the status, history and clock files hold, the page
answers with data that match its schema and HTML in which no value became markup.

Peer: none (pure: page.data.build and page.render, mta_lite.history.from_json,
page.server.parse_request_line). The files are another process's and may be torn or
garbage; the request line comes from anyone on the LAN. Properties: nothing raises but the
ValueError from_json() promises; /status.json validates against docs/status.schema.json and
holds no NaN; every string from the files appears in the HTML only escaped (a marker tag
planted in them never appears as a tag).
"""

from __future__ import annotations

import json
import pathlib

import jsonschema
from hypothesis import given, strategies as st

from mta_lite import history
from mta_lite.status import StatusSnapshot
from mta_lite_board.page import data, render
from mta_lite_board.page.server import parse_request_line
from tests.fuzz.profiles import fuzz_settings

NOW = 1_800_000_000.0
SCHEMA = json.loads((pathlib.Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
MARKER = "<zz-planted>"
texts = st.one_of(st.text(max_size=30), st.just(MARKER), st.text(max_size=10).map(lambda s: s + MARKER))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(texts, inner, max_size=4)), max_leaves=20)
RELAY_KEYS = ("state", "since", "paused_until", "throttled_until", "unreachable_since", "auth_failed_since",
              "sent_last_hour", "max_per_hour", "last_error", "sent")
RECENT_KEYS = ("time", "queue_id", "sender", "recipient_domain", "status", "reply", "relay")


def keyed(keys) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


snapshots = st.builds(
    StatusSnapshot, pid=values, started=values, written=values, running=values, queue=values,
    relays=st.one_of(values, st.dictionaries(texts, keyed(RELAY_KEYS), max_size=3)),
    smtpd=st.one_of(values, st.dictionaries(st.sampled_from(["rejects", "postscreen_stress", "accepted"]), values)),
    config=values, processes=st.one_of(values, st.dictionaries(texts, keyed(("state", "since", "reason")))),
    recent=st.one_of(values, st.lists(keyed(RECENT_KEYS), max_size=5)), disk=values, oldest=values)


@fuzz_settings(300)
@given(snapshot=snapshots, relay_clock=values, ntp=st.dictionaries(st.sampled_from(
    ["checked", "server", "offset_s", "error", "alert", "alert_after_s"]), values), info=values)
def test_any_files_give_schema_valid_data_and_escaped_html(snapshot, relay_clock, ntp, info):
    page = data.build(snapshot, history.Book(), relay_clock, ntp, NOW, info if isinstance(info, dict) else None)
    jsonschema.validate(page, SCHEMA)
    json.dumps(page, allow_nan=False)
    assert MARKER not in render.page(page)


@fuzz_settings(300)
@given(raw=st.one_of(st.binary(max_size=200), values.map(lambda v: json.dumps(v).encode()),
                     st.dictionaries(st.sampled_from(["version", "hours", "days", "smtpd"]), values)
                     .map(lambda d: json.dumps({**d, "version": 1}).encode())))
def test_any_history_file_is_read_or_refused_never_obeyed_blindly(raw):
    try:
        book = history.from_json(raw, NOW)
    except ValueError:
        return
    assert len(book.hours) <= history.HOURS and len(book.days) <= history.DAYS
    plots = history.series(book, NOW)
    assert all(isinstance(b[k], int) and b[k] >= 0 for b in plots["hours"] + plots["days"] for k in history.KINDS)


@fuzz_settings(300)
@given(head=st.binary(max_size=300))
def test_any_request_head_parses_or_is_refused(head):
    request = parse_request_line(head)
    assert request is None or (isinstance(request[0], str) and "?" not in request[1])
