"""Fixtures for the fault and attack suite: the real daemon, real smarthosts, real mounts.

relay_factory / sink_factory are the integration suite's (the real `mta-lite serve`, Postfix's
smtp-sink). Added here: an event-loop thread for in-process smarthosts (tests/support/faults.py),
a test PKI made with `cryptography`, and a size-capped tmpfs for the spool, unmounted at the end
even when the test failed (the daemons on it are stopped and scanned for secrets first).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import relay as relay_module
from tests.support.faults import LoopThread, Pki
from tests.support.relay import SMARTHOST_USER, relay_config
from tests.integration.conftest import relay_factory, sink_factory  # noqa: F401  (fixtures)
from tests.support.relay import PASSWORD


def fault_config(port: int, **top) -> dict:
    """The fault tests' relay (tests/support/relay.py relay_config): a short smarthost
    timeout, and a second account with PASSWORD loaded for the secret scan."""
    return relay_config(port, **{"timeout": "5s", "with_secret": True, **top})


def tls_relay_config(port: int, ca_file: str, *, host: str = "127.0.0.1", timeout: str = "5s", **top) -> dict:
    """A relay that must use STARTTLS with a verified certificate and AUTH as SMARTHOST_USER."""
    return {
        "default_relay": "isp",
        "relays": {"isp": {"host": host, "port": port, "tls": "starttls", "ca_file": ca_file,
                           "username": SMARTHOST_USER, "password": PASSWORD, "timeout": timeout}},
        "queue": {"min_backoff": "1s", "max_backoff": "2s"},
        **top,
    }


@pytest.fixture
def peers_loop():
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _mounted(path: str) -> bool:
    with open("/proc/self/mounts") as handle:
        return any(line.split()[1] == path for line in handle)


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs at tmp_path/spoolfs (root only; skipped where mount is not allowed)."""
    mountpoint = str(tmp_path / "spoolfs")
    os.mkdir(mountpoint)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", mountpoint],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        for instance in relay_module.INSTANCES:
            if instance.spool.startswith(mountpoint + os.sep):
                instance.stop()
                if _mounted(mountpoint):
                    subprocess.run(["mount", "-o", "remount,rw", mountpoint], capture_output=True)
                instance.scan_secrets()         # before the spool disappears with the mount
        if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)
