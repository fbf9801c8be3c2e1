"""Session-wide checks for every test.

S3, credentials stay out of logs: every test that ran the real daemon (tests/relay.py
RelayProcess, configured with the distinctive PASSWORD) has, after it, that daemon's log,
every file in its spool and its `status --json` scanned for the password and for its base64
in any AUTH framing; a find fails the test. A test that unmounts its spool early (tmpfs)
scans before the unmount (RelayProcess.scan_secrets() caches the result).
"""

import pytest

from tests import relay as relay_module


@pytest.fixture(autouse=True)
def no_secret_in_relay_output():
    first = len(relay_module.INSTANCES)
    yield
    leaks = []
    for instance in relay_module.INSTANCES[first:]:
        instance.stop()
        leaks += [f"{instance.workdir}: {where}" for where in instance.scan_secrets()]
    if leaks:
        pytest.fail("the smarthost password (or its base64) was found in: " + ", ".join(leaks))
