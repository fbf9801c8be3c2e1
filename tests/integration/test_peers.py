"""Proves the real peers in tests/support/peers.py behave as the integration tests assume: the Postfix
smarthost demands STARTTLS + SASL and records who logged in, smtp-sink records what it got and
its fault flags bite. Each test starts its own peers on free loopback ports (tmp_path workdirs).
Never: talks to anything but 127.0.0.1, or mocks a peer. Needs root and
tools/install-test-deps.sh (CI is root); skipped with a reason otherwise.
"""
from __future__ import annotations

import os
import shutil

import pytest

from tests.support import peers
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="Postfix peers and smtp-sink -u need root"),
    pytest.mark.skipif(not (shutil.which("swaks") and os.path.exists(peers.SMTP_SINK)),
                       reason="run tools/install-test-deps.sh"),
]

ALICE, ALICE_PW = "alice@example.test", "correct horse"


@pytest.fixture(scope="module")
def smarthost(tmp_path_factory):
    with peers.PostfixSmarthost(tmp_path_factory.mktemp("smarthost"), {ALICE: ALICE_PW}) as host:
        yield host


def smarthost_swaks(host: peers.PostfixSmarthost, *extra: str, msg_id: str = "<t@lan.test>"):
    return peers.swaks("--server", f"127.0.0.1:{host.port}", "-f", "a@lan.test",
                       "-t", "b@ext.test", "--tls", "--tls-verify", "--tls-ca-path",
                       str(host.ca_file), "--header", f"Message-Id: {msg_id}", *extra)


def test_authenticated_relay_is_delivered_with_sasl_username(smarthost):
    before = len(smarthost.delivered())
    result = smarthost_swaks(smarthost, "--auth", "PLAIN", "--au", ALICE, "--ap", ALICE_PW,
                             msg_id="<ok-1@lan.test>")
    assert result.returncode == 0, result.stdout + result.stderr
    got = [d for d in smarthost.wait_for(before + 1, timeout=20)
           if d.message_id == "<ok-1@lan.test>"]
    assert len(got) == 1
    assert got[0].sasl_username == ALICE
    assert got[0].sender == "a@lan.test"
    assert got[0].recipients == ["b@ext.test"]
    assert b"(Authenticated sender: alice@example.test)" in got[0].raw


def test_relay_without_auth_is_rejected_at_rcpt(smarthost):
    result = smarthost_swaks(smarthost)
    assert result.returncode == 24, result.stdout
    assert "554 5.7.1" in result.stdout


def test_auth_is_not_offered_before_starttls(smarthost):
    result = peers.swaks("--server", f"127.0.0.1:{smarthost.port}", "-f", "a@lan.test",
                         "-t", "b@ext.test", "--auth", "PLAIN", "--au", ALICE, "--ap", ALICE_PW)
    assert result.returncode == 28, result.stdout


def test_wrong_password_fails_and_is_counted(smarthost):
    attempts, failures = smarthost.auth_attempts(), smarthost.auth_failures()
    result = smarthost_swaks(smarthost, "--auth", "PLAIN", "--au", ALICE, "--ap", "wrong")
    assert result.returncode == 28, result.stdout
    wait_until(lambda: smarthost.auth_attempts() == attempts + 1, 10, "AUTH logged")
    assert smarthost.auth_failures() == failures + 1


def test_auth_counting_from_maillog_lines():
    log = [
        "x postfix-s-1/smtpd[7]: connect from localhost[127.0.0.1]",
        "x postfix-s-1/smtpd[7]: warning: localhost[127.0.0.1]: SASL LOGIN authentication "
        "failed: UGFzc3dvcmQ6",
        "x postfix-s-1/smtpd[7]: disconnect from localhost[127.0.0.1] ehlo=2 auth=0/1 quit=1",
        "x postfix-s-1/smtpd[7]: connect from localhost[127.0.0.1]",
        "x postfix-s-1/smtpd[7]: disconnect from localhost[127.0.0.1] ehlo=2 auth=1 quit=1",
        "x postfix-s-1/smtpd[8]: connect from localhost[127.0.0.1]",
        "x postfix-s-1/smtpd[8]: warning: localhost[127.0.0.1]: SASL PLAIN authentication "
        "failed: authentication failure, sasl_username=alice@example.test",
    ]
    assert peers.count_auth(log) == (3, 2)


def test_smtp_sink_records_message_id(tmp_path):
    with peers.SmtpSink(tmp_path) as sink:
        result = peers.swaks("--server", f"127.0.0.1:{sink.port}", "-f", "a@lan.test",
                             "-t", "b@ext.test,c@ext.test", "--header",
                             "Message-Id: <sink-1@lan.test>")
        assert result.returncode == 0, result.stdout
        dumps = sink.wait_for(1, timeout=10)
        assert sink.count() == 1
    assert sink.message_ids() == ["<sink-1@lan.test>"]
    envelope = peers.dump_envelope(dumps[0])
    assert envelope["X-Mail-Args"] == ["<a@lan.test>"]
    assert envelope["X-Rcpt-Args"] == ["<b@ext.test>", "<c@ext.test>"]
    assert peers.dump_message(dumps[0]).startswith(b"Date: ")


@pytest.mark.parametrize("flags, exit_code", [
    (["-Q", "DATA"], 25),                           # 421 and close after DATA
    (["-r", "RCPT", "-b", "451 4.3.0 later"], 24),  # soft reject of every RCPT
    (["-f", ".", "-B", "550 5.7.1 no"], 26),        # hard reject at end of DATA
])
def test_smtp_sink_fault_flags_make_the_client_fail(tmp_path, flags, exit_code):
    with peers.SmtpSink(tmp_path, flags) as sink:
        result = peers.swaks("--server", f"127.0.0.1:{sink.port}", "-f", "a@lan.test",
                             "-t", "b@ext.test")
        assert result.returncode == exit_code, result.stdout
    # "." rejected still counts and dumps: smtp-sink records DATA before answering it.
    assert sink.count() == (1 if flags[1] == "." else 0)


def test_null_client_relays_to_sink(tmp_path):
    with peers.SmtpSink(tmp_path, dump=False) as sink, \
            peers.PostfixNullClient(tmp_path, sink.port) as relay:
        result = peers.swaks("--server", f"127.0.0.1:{relay.port}", "-f", "a@lan.test",
                             "-t", "b@ext.test")
        assert result.returncode == 0, result.stdout
        assert sink.wait_count(1, timeout=20) == 1
        pids = relay.pids()
        assert relay.master_pid() in pids and peers.pss_kib(pids) > 0
    assert not any(peers.pid_alive(pid) for pid in pids)
