"""`relay test` and the clock (commands/relaytest.py): it uses the queue manager's rule and
record (qmgr/clock.py, spool/state/clock.json), so while deliveries wait with `clock not
set` the test says the same and connects nowhere; a relay without TLS is tested anyway.
The faketime run at 1970 against Postfix is tests/integration/test_relay_clock.py."""

import json
import os
import socket
import time

from mta_lite.commands.relaytest import EX_UNAVAILABLE, clock_problem, relay_test
from mta_lite.config.load import parse_config
from mta_lite.qmgr import clock

YEAR_S = 365 * 86400.0


def _config(tmp_path, port: int, tls: str = "starttls"):
    return parse_config({"admin_address": "admin@example.com", "spool_dir": str(tmp_path / "spool"),
                         "relays": {"isp": {"host": "127.0.0.1", "port": port, "tls": tls,
                                            **({"username": "u", "password": "isp-secret-1"}
                                               if tls != "none" else {})}}},
                        str(tmp_path / "mta-lite.toml"))


def _record_seen_at(tmp_path, last_seen: float) -> None:
    path = clock.clock_path(str(tmp_path / "spool"))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        json.dump({"last_seen": last_seen, "state": "ok", "since": last_seen,
                   "good_since": last_seen, "suspect_before": clock.BUILD_TIME}, handle)


def test_relay_test_with_the_clock_behind_the_record_says_so_and_connects_nowhere(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as smarthost:
        smarthost.setblocking(False)
        cfg = _config(tmp_path, smarthost.getsockname()[1])
        _record_seen_at(tmp_path, time.time() + YEAR_S)       # the relay once saw a later time
        lines = []
        assert relay_test(cfg, "isp", lines.append) == EX_UNAVAILABLE
        assert lines[0].startswith("clock: clock not set: it reads ")
        assert "(the last time this relay saw)" in lines[0] and "(by NTP" in lines[0]
        assert lines[1].startswith("relay isp: FAILED at clock")
        time.sleep(0.2)
        try:
            smarthost.accept()[0].close()
            connected = True
        except BlockingIOError:
            connected = False
        assert not connected


def test_clock_problem_follows_the_queue_managers_rule(tmp_path):
    spool = str(tmp_path / "spool")
    cfg = _config(tmp_path, 25)
    relay = cfg.relays["isp"]
    assert clock_problem(relay, spool, time.time()) == ""                  # no record, clock good
    assert clock_problem(relay, spool, 7.0) == clock.not_set_reason(clock.ClockRecord(), 7.0)
    assert "(this software's release)" in clock_problem(relay, spool, 7.0)
    assert clock_problem(_config(tmp_path, 25, tls="none").relays["isp"], spool, 7.0) == ""
    _record_seen_at(tmp_path, time.time() + YEAR_S)
    assert clock_problem(relay, spool, time.time()).startswith("clock not set: ")
    assert clock_problem(relay, spool, time.time() + 2 * YEAR_S) == ""
