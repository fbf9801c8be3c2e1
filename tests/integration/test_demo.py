"""`mta-lite demo` (what `make run` runs): relays sample mail through two capture smarthosts.

Peers: the demo's own aiosmtpd capture smarthosts (STARTTLS + AUTH) on loopback.
"""

import os
import signal
import subprocess
import sys

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_demo_relays_samples_with_their_accounts_and_keeps_running(tmp_path):
    out = tmp_path / "demo.out"
    with open(out, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "mta_lite.cli", "demo"], stdout=handle,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        text = wait_until(lambda: "Try:" in out.read_text() and out.read_text(), 60, what="the demo table")
        assert proc.poll() is None, "the demo must keep running"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    rows = [line for line in text.splitlines() if line.strip().startswith("relay=")]
    assert len(rows) == 3
    assert any("relay=mail" in r and "account=alice@mail.demo" in r and "alice@example.com" in r for r in rows)
    assert any("relay=isp" in r and "account=office@isp.demo" in r and "scanner@office.lan" in r for r in rows)
    assert any("to=<admin@example.com>" in r for r in rows)     # the bare name "root" reached the admin
