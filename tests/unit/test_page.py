"""The status page's pure parts: data from hostile or garbled files, escaping, the SVG plots,
the routes, the JSON schema, and how the page learns its address."""

import json
import os
import pathlib
import xml.etree.ElementTree as ET

import jsonschema
import pytest
import tomli_w

from mta_lite import history
from mta_lite.config import generations
from mta_lite.status import StatusSnapshot
from mta_lite_board.page import cli, data, render, svg
from mta_lite_board.page.server import HEADERS, Page, parse_request_line
from tests.support.page import HOSTILE_REPLY, HOSTILE_SENDER, busy_spool
from tests.support.relay import relay_config

NOW = 1_800_000_000.0
SCHEMA = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "status.schema.json").read_text())


def busy(tmp_path) -> dict:
    busy_spool(str(tmp_path / "spool"), str(tmp_path / "run"), NOW)
    return data.collect(str(tmp_path / "spool"), str(tmp_path / "run"), NOW)


def test_busy_status_matches_the_schema_and_says_what_the_leds_mean(tmp_path):
    page = busy(tmp_path)
    jsonschema.validate(page, SCHEMA)
    assert page["relay"]["running"] is True
    assert page["mail"]["waiting"] == 3 and 2 * 3600 <= page["mail"]["oldest_age_s"] < 3 * 3600
    assert page["leds"]["alert"] == {"pattern": "on", "meaning": data.ALERT_WORDS[data.patterns.ON]}
    office = next(a for a in page["accounts"] if a["name"] == "office365")
    assert office["state"] == "auth_failed" and office["since"] == NOW - 3 * 3600
    assert page["clock"]["state"] == "ok" and page["clock"]["ntp_offset_s"] == pytest.approx(0.0123)
    assert page["postscreen"]["stress"] == 4 and page["smtpd"]["rejected"] == 14
    assert sum(b["relayed"] for b in page["history"]["hours"]) > 0


GARBAGE = [
    StatusSnapshot(),
    StatusSnapshot(pid=-1, written="x", queue=[1], relays={"a": 5, "b": {"state": 7, "since": "y"}},
                   smtpd={"rejects": "many", "postscreen_stress": float("nan")}, processes=[]),
    StatusSnapshot(pid=os.getpid(), written=NOW, running=True, relays={"a": {"paused_until": 1e308, "state": "auth_failed"}},
                   recent=[None, {"time": "now", "reply": ["x"]}, 3], disk={"free_bytes": -5, "total_bytes": True},
                   oldest="yesterday", queue={"deferred": 2.5}),
]


@pytest.mark.parametrize("snapshot", GARBAGE)
@pytest.mark.parametrize("relay_clock, ntp", [(None, {}), ("ok", {"offset_s": "far", "alert": 1, "checked": -3}),
                                              ({"state": "broken"}, {"offset_s": float("inf")})])
def test_garbled_files_give_a_valid_status_and_a_page(snapshot, relay_clock, ntp):
    page = data.build(snapshot, history.Book(), relay_clock, ntp, NOW)
    jsonschema.validate(page, SCHEMA)
    json.dumps(page, allow_nan=False)           # Home Assistant's parser takes no NaN
    assert page["clock"]["state"] == "unknown"
    assert "<html" in render.page(page)


def test_missing_clock_reports_show_unknown(tmp_path):
    page = data.collect(str(tmp_path / "none"), str(tmp_path / "none"), NOW)
    assert page["clock"]["state"] == "unknown" and page["clock"]["ntp_offset_s"] is None
    assert "NTP offset</td><td>unknown" in render.page(page)


def test_hostile_sender_and_reply_are_escaped_text(tmp_path):
    html_text = render.page(busy(tmp_path))
    assert "<script" not in html_text.lower() and "<img" not in html_text.lower()
    assert "onerror=alert" in html_text             # present as text ...
    assert render._e(HOSTILE_SENDER) in html_text and render._e(HOSTILE_REPLY) in html_text
    assert "<b>blocked" not in html_text            # ... never as markup


def test_every_value_is_escaped_even_an_account_name_and_a_config_error(tmp_path):
    snapshot = StatusSnapshot(relays={"<i>x</i>": {"state": "<u>", "last_error": "</td><script>"}},
                              processes={"smtpd": {"state": "config_error", "reason": "<b>bad</b>"}},
                              config="<svg onload=x>")
    html_text = render.page(data.build(snapshot, history.Book(), None, {}, NOW))
    for markup in ("<i>", "<u>", "<script>", "<b>", "<svg onload"):
        assert markup not in html_text


def test_plots_are_well_formed_svg_with_a_bar_per_bucket(tmp_path):
    page = busy(tmp_path)
    for buckets, every, fmt in ((page["history"]["hours"], 6, "%H:00"), (page["history"]["days"], 5, "%m-%d")):
        root = ET.fromstring(svg.bar_chart(buckets, every, fmt, "t"))
        groups = root.findall("{http://www.w3.org/2000/svg}g")
        assert len(groups) == len(buckets)
    empty = ET.fromstring(svg.bar_chart(history.series(history.Book(), NOW)["hours"], 6, "%H:00", "t"))
    assert not empty.findall(".//{http://www.w3.org/2000/svg}rect")


@pytest.mark.parametrize("value, top", [(0, 1), (1, 1), (3, 5), (11, 20), (250, 250), (251, 500), (10 ** 9 + 1, 2 * 10 ** 9)])
def test_scale_top_is_a_round_number_at_least_the_value(value, top):
    assert svg.nice_top(value) == top


@pytest.mark.parametrize("head, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/")),
    (b"GET /status.json?x=1 HTTP/1.0\r\n\r\n", ("GET", "/status.json")),
    (b"GET /\r\n\r\n", None),
    (b"\x16\x03\x01\x02\x00", None),
    (b"GET /\xff HTTP/1.1\r\n\r\n", None),
])
def test_request_line(head, expected):
    assert parse_request_line(head) == expected


@pytest.mark.parametrize("method, path", [("GET", "/admin"), ("GET", "/status.json/"), ("POST", "/"),
                                          ("GET", "/../etc/mta-lite/mta-lite.toml"), ("PUT", "/status.json"),
                                          ("GET", "//"), ("GET", "/index.html")])
def test_anything_but_the_routes_is_404(tmp_path, method, path):
    assert Page(str(tmp_path), None).respond(method, path).status == 404


def test_responses_carry_a_strict_policy(tmp_path):
    response = Page(str(tmp_path), None).respond("GET", "/")
    head = response.head().decode()
    assert response.status == 200 and "default-src 'none'" in head and "script-src" not in head
    assert "X-Content-Type-Options: nosniff" in head and HEADERS["Cache-Control"] == "no-store"


def _config(tmp_path, **board) -> str:
    config = relay_config(2525, hostname="relay.lan.test", spool_dir=str(tmp_path / "spool"),
                          mynetworks=["127.0.0.0/8"], admin_address="admin@lan.test",
                          listen=[{"address": "127.0.0.1:2525"}], board=board)
    path = tmp_path / "mta-lite.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    return str(path)


def test_address_step_writes_board_http_and_serve_reads_it(tmp_path):
    out = str(tmp_path / "listen")
    assert cli.write_address(_config(tmp_path, http="0.0.0.0:8080"), out) == 0
    assert cli.parse_address(open(out).read()) == ("0.0.0.0", 8080)
    assert cli.write_address(_config(tmp_path), out) == 0
    assert cli.parse_address(open(out).read()) is None          # off by default
    assert cli.main(["serve", "--listen-file", out, "--spool", str(tmp_path)]) == 0


def test_address_step_keeps_the_last_address_when_the_config_breaks(tmp_path):
    out = str(tmp_path / "listen")
    cli.write_address(_config(tmp_path, http="[::]:8080"), out)
    (tmp_path / "mta-lite.toml").write_text("this is = not [toml")
    assert cli.write_address(str(tmp_path / "mta-lite.toml"), out) == 0
    assert cli.parse_address(open(out).read()) == ("::", 8080)
    # No address yet and no config that loads (a fresh card): off, and not a failed start.
    assert cli.write_address(str(tmp_path / "missing.toml"), str(tmp_path / "new")) == 0
    assert cli.parse_address(open(tmp_path / "new").read()) is None


@pytest.mark.parametrize("text", ["8080", "host:0", "host:70000", "a b:1", "[zz]:1"])
def test_bad_addresses_are_refused(text):
    with pytest.raises(ValueError):
        cli.parse_address(text)


def test_address_step_tells_the_page_the_generation_of_the_config_the_relay_runs(tmp_path):
    raw = open(_config(tmp_path, http="0.0.0.0:8080"), "rb").read()
    (tmp_path / "etc").mkdir()
    installed = str(tmp_path / "etc" / "mta-lite.toml")
    result = generations.apply_config(installed, raw, "test")
    out = str(tmp_path / "run" / "listen")
    os.makedirs(os.path.dirname(out))
    assert cli.write_address(installed, out) == 0
    info = json.loads(open(cli.config_info_path(out)).read())
    running = data.build(StatusSnapshot(config=result.digest), history.Book(), None, {}, NOW, info)
    assert running["relay"]["config_generation"] == result.generation
    assert f"generation {result.generation} ({result.digest})" in render.page(running)
    other = data.build(StatusSnapshot(config="0123456789ab"), history.Book(), None, {}, NOW, info)
    assert other["relay"]["config_generation"] is None          # the relay runs another file


def test_a_clock_not_set_and_a_large_ntp_offset_are_said_plainly():
    ntp = {"checked": NOW - 5, "server": "pool.ntp.org", "offset_s": -3600.5, "error": "", "alert": True,
           "alert_after_s": 10.0}
    running = StatusSnapshot(pid=os.getpid(), written=NOW, running=True, clock={"state": "not_set", "since": NOW})
    page = data.build(running, history.Book(), running.clock, ntp, NOW)
    jsonschema.validate(page, SCHEMA)
    assert (page["clock"]["state"], page["clock"]["ntp_offset_s"], page["clock"]["ntp_alert"]) == ("not_set", -3600.5, True)
    assert page["leds"]["alert"] == {"pattern": "wink", "meaning": data.ALERT_CLOCK_NOT_SET}
    text = render.page(page)
    assert "not set: deliveries that need a certificate wait" in text
    assert "-3600.500 s against pool.ntp.org" in text and "off by more than 10 s" in text
    failed = data.build(StatusSnapshot(), history.Book(), {"state": "not_set"}, {**ntp, "offset_s": None,
                                                                                 "error": "timed out"}, NOW)
    assert "unknown (last check failed: timed out)" in render.page(failed)
    assert failed["clock"]["state"] == "unknown"        # a stopped relay's view is stale
    assert failed["leds"]["alert"]["pattern"] == "wink"  # the board's own NTP check still shows
    assert failed["leds"]["alert"]["meaning"].startswith("the clock is off")
