"""S3: the session-wide secret scan (tests/conftest.py, RelayProcess.scan_secrets) can find what
it looks for: the password in clear and its base64 in AUTH PLAIN and AUTH LOGIN framing, in the
log, in a spool file and in `status --json`. The controls for every other test's scan.

Peer: a RelayProcess work directory (its config, log and spool), never started; status --json
runs the real CLI against it.
"""

from __future__ import annotations

import base64
import os

import pytest

from tests.support import relay as relay_module
from tests.faults.conftest import fault_config
from tests.support.faults import SMARTHOST_USER
from tests.support.relay import PASSWORD, RelayProcess


@pytest.fixture
def unstarted(tmp_path):
    relay = RelayProcess(str(tmp_path), fault_config(9))
    os.makedirs(os.path.join(relay.spool, "state"))
    yield relay
    relay_module.INSTANCES.remove(relay)     # planted secrets must not fail the session-wide scan


LEAKS = {
    "clear": PASSWORD.encode(),
    "auth plain": base64.b64encode(f"\0{SMARTHOST_USER}\0{PASSWORD}".encode()),
    "auth plain with authzid": base64.b64encode(f"{SMARTHOST_USER}\0{SMARTHOST_USER}\0{PASSWORD}".encode()),
    "auth login": base64.b64encode(PASSWORD.encode()),
    "inside a longer blob": base64.b64encode(b"xy" + PASSWORD.encode() + b"z"),
}


@pytest.mark.parametrize("form", sorted(LEAKS))
def test_secret_scan_finds_each_form_in_the_log(unstarted, form):
    with open(unstarted.log_path, "wb") as handle:
        handle.write(b"Nov 25 mta-lite/smtp[1]: AUTH " + LEAKS[form] + b"\n")
    assert unstarted.scan_secrets() == ["log"]


def test_secret_scan_finds_the_password_in_a_spool_file(unstarted):
    path = os.path.join(unstarted.spool, "state", "0123456789ABCDEF.json")
    with open(path, "wb") as handle:
        handle.write(b'{"last_error": "535 ' + LEAKS["auth plain"] + b'"}')
    assert unstarted.scan_secrets() == [path]


def test_secret_scan_is_clean_for_a_clean_work_directory(unstarted):
    with open(unstarted.log_path, "w") as handle:
        handle.write("Nov 25 mta-lite/smtp[1]: SASL authentication failed; password ********\n")
    assert unstarted.scan_secrets() == []


# ---------------------------------------------------------------- OAuth2 (tokens, client secrets)

TOKEN = "eyJ0eXAi.access-Token-For-Scan-7Qx"
CLIENT_SECRET = "cs~Scan-Client-Secret-3Wd"


@pytest.fixture
def with_tokens(unstarted):
    unstarted.token_sources.append(lambda: [TOKEN])
    unstarted.config["oauth"] = {"p": {"grant": "client_credentials", "client_id": "c",
                                       "client_secret": CLIENT_SECRET}}
    return unstarted


@pytest.mark.parametrize("leak", [TOKEN.encode(), base64.b64encode(f"user=u@x\x01auth=Bearer {TOKEN}\x01\x01".encode()),
                                  CLIENT_SECRET.encode()], ids=["token", "xoauth2 blob", "client secret"])
def test_secret_scan_finds_oauth_secrets_in_the_log(with_tokens, leak):
    with open(with_tokens.log_path, "wb") as handle:
        handle.write(b"Nov 25 mta-lite/smtp[1]: AUTH XOAUTH2 " + leak + b"\n")
    assert with_tokens.scan_secrets() == ["log"]


def test_secret_scan_finds_a_token_in_the_public_status_file(with_tokens):
    os.makedirs(os.path.join(with_tokens.spool, "public"))
    path = os.path.join(with_tokens.spool, "public", "status.json")
    with open(path, "w") as handle:
        handle.write('{"relays": {"o365": {"last_error": "535 Bearer ' + TOKEN + '"}}}')
    assert path in with_tokens.scan_secrets()


def test_token_store_may_hold_tokens_but_never_the_client_secret(with_tokens):
    store = os.path.join(with_tokens.spool, "state", "oauth")
    os.makedirs(store)
    with open(os.path.join(store, "p.json"), "w") as handle:
        handle.write('{"access_token": "' + TOKEN + '"}')
    assert with_tokens.scan_secrets() == []             # the queue manager's own store
    with_tokens.secret_findings = None
    with open(os.path.join(store, "p.json"), "a") as handle:
        handle.write(CLIENT_SECRET)
    assert with_tokens.scan_secrets() == [os.path.join(store, "p.json")]
