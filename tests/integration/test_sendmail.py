"""G1 for local submission: `mta-lite sendmail` queues while the daemon is down, under its own
name too, and says so when it cannot.

Peers: the real daemon (tests/support/relay.py), Postfix's smtp-sink as smarthost. (kill -9 of
the daemon under load: tests/faults/test_crash_loop.py; of one half: test_privsep.py.)
"""

import os
import subprocess
import sys

import pytest

from tests.support.relay import relay_config

pytestmark = pytest.mark.integration


def test_sendmail_queues_while_daemon_is_stopped(sink_factory, relay_factory):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port), start=False)
    message = b"To: ops@remote.example\nSubject: cron output\n\nbackup ok\n.\nnot the end\n"
    result = relay.cli("sendmail", "-t", "-i", "-f", "cron@lan.test", stdin=message)
    assert result.returncode == 0, result.stderr
    assert [i["recipients"] for i in relay.queue()] == [["ops@remote.example"]]
    relay.start()
    dumps = sink.wait_for(1, timeout=60)
    body = dumps[0].replace(b"\r", b"")
    assert b"Subject: cron output" in body and b"\n.\nnot the end\n" in body


def test_sendmail_name_behaves_as_sendmail(relay_factory, sink_factory, tmp_path):
    sink = sink_factory()
    relay = relay_factory(relay_config(sink.port), start=False)
    link = tmp_path / "sendmail"
    os.symlink(os.path.join(os.path.dirname(sys.executable), "mta-lite"), link)
    env = {**os.environ, "MTA_LITE_CONFIG": relay.config_path}
    result = subprocess.run([str(link), "-f", "ups@lan.test", "admin@remote.example"],
                            input=b"Subject: on battery\n\npower lost\n", env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert [i["sender"] for i in relay.queue()] == ["ups@lan.test"]


def test_sendmail_unwritable_spool_exits_75(relay_factory, sink_factory):
    sink = sink_factory()
    relay = relay_factory({**relay_config(sink.port), "spool_dir": "/proc/mta-lite-no-spool"}, start=False)
    result = relay.cli("sendmail", "a@remote.example", stdin=b"Subject: x\n\nbody\n")
    assert result.returncode == 75 and b"cannot queue" in result.stderr
