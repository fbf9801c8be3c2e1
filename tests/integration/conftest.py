"""Fixtures for integration tests: real peers on loopback, and the real daemon."""

import pytest

from tests.support.peers import PostfixSmarthost, SmtpSink
from tests.support.relay import ALICE_PASSWORD, PASSWORD, RelayProcess

SMARTHOST_USERS = {"office@example.test": PASSWORD, "alice@example.test": ALICE_PASSWORD}


@pytest.fixture(scope="module")
def smarthost(tmp_path_factory):
    """A real Postfix as ISP-like smarthost: STARTTLS + SASL (PLAIN, LOGIN) required."""
    with PostfixSmarthost(tmp_path_factory.mktemp("smarthost"), users=SMARTHOST_USERS) as peer:
        yield peer


@pytest.fixture
def sink_factory(tmp_path):
    """smtp-sink with fault flags; every sink is stopped at the end of the test."""
    sinks = []

    def make(*flags: str) -> SmtpSink:
        sink = SmtpSink(tmp_path / f"sink{len(sinks)}", flags)
        sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


@pytest.fixture
def relay_factory(tmp_path, deployed):
    """The real `mta-lite serve` daemon with a given config; stopped at the end of the test.
    In a test marked `deployed`, its deployed run starts the daemon the way the box does."""
    relays = []

    def make(config: dict, start: bool = True) -> RelayProcess:
        workdir = tmp_path / f"relay{len(relays)}"
        workdir.mkdir()
        relay = RelayProcess(str(workdir), config, deployed=deployed)
        relays.append(relay)
        return relay.start() if start else relay

    yield make
    for relay in relays:
        relay.stop()
