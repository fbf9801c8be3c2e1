"""Session-wide checks and modes for every test.

S3, credentials stay out of logs: every test that ran the real daemon (tests/support/relay.py
RelayProcess, configured with the distinctive PASSWORD) has, after it, that daemon's log,
every file in its spool and its `status --json` scanned for the password and for its base64
in any AUTH framing; a find fails the test. A test that unmounts its spool early (tmpfs)
scans before the unmount (RelayProcess.scan_secrets() caches the result).

The deployed mode: a test marked `@pytest.mark.deployed` runs twice, once as today (one
user) and once with the daemon started as root, dropping to mta-smtpd and mta-lite, with
its files written as an admin writes them (tests/support/relay.py, deployed=True). Its `deployed`
fixture says which; relay factories pass it on. A deployed daemon whose log shows a late
import or a traceback fails the test.
"""

import os
import pwd

import pytest

from tests.support import relay as relay_module


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("deployed") and "deployed" in metafunc.fixturenames:
        metafunc.parametrize("deployed", [False, True], ids=["one-user", "deployed"], indirect=True)


@pytest.fixture
def deployed(request) -> bool:
    """True when this run of the test is the deployed one (see the module docstring)."""
    wanted = bool(getattr(request, "param", False))
    if wanted and os.geteuid() != 0:
        pytest.skip("the deployed mode starts the daemon as root")
    if wanted:
        try:
            for user in relay_module.SERVICE_USERS.values():
                pwd.getpwnam(user)
        except KeyError:
            pytest.skip("service users missing (tools/install-test-deps.sh creates them)")
    return wanted


@pytest.fixture(autouse=True)
def no_secret_in_relay_output():
    first = len(relay_module.INSTANCES)
    yield
    leaks, defects = [], []
    for instance in relay_module.INSTANCES[first:]:
        instance.stop()
        leaks += [f"{instance.workdir}: {where}" for where in instance.scan_secrets()]
        if instance.deployed:
            defects += instance.deployed_defects()
    if leaks:
        pytest.fail("the smarthost password (or its base64) was found in: " + ", ".join(leaks))
    if defects:
        pytest.fail("the deployed daemon broke after its privilege drop:\n" + "\n".join(defects))
