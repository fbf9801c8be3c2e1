"""Pytest fixtures for the OAuth2 peers: the loopback authorization server
(tests/support/oauthserver.py) and the Postfix + Dovecot smarthost that checks its tokens
(tests/support/oauthsmarthost.py). A test module takes them with
``from tests.support.oauthfixtures import *  # noqa: F403`` (they are not in a conftest so the
modules that do not use them never start them).

Guarantees: one server and one smarthost per module (Postfix's cold start is ~2.5 s); the
function-scoped ``oauth_server`` hands out the module's server and, after the test, puts it back
to normal service (no fault, default access-token lifetime and polling interval, no on_issued
hook), so a fault never leaks into the next test. ``oauth_server_factory`` makes private servers
(e.g. with another refresh-token policy) that are stopped at the end of the test.
"""
from __future__ import annotations

import os

import pytest

from tests.support.oauthserver import OAuthServer
from tests.support.oauthsmarthost import OAuthSmarthost
from tests.support.oauthstore import ACCESS_LIFETIME_S, DEVICE_INTERVAL_S

__all__ = ["oauth_server_module", "oauth_server", "oauth_smarthost", "oauth_server_factory"]


@pytest.fixture(scope="module")
def oauth_server_module(tmp_path_factory):
    """The module's authorization server (HTTPS with a test CA at ``ca_file``)."""
    with OAuthServer(tmp_path_factory.mktemp("oauthserver")) as server:
        yield server


@pytest.fixture
def oauth_server(oauth_server_module):
    """The module's authorization server, back to normal service after the test."""
    yield oauth_server_module
    oauth_server_module.set_fault(None)
    oauth_server_module.set_access_lifetime(ACCESS_LIFETIME_S)
    oauth_server_module.store.device_interval_s = DEVICE_INTERVAL_S
    oauth_server_module.on_issued = None


@pytest.fixture(scope="module")
def oauth_smarthost(tmp_path_factory, oauth_server_module):
    """Postfix (STARTTLS and implicit TLS) + Dovecot checking tokens at the module's server."""
    if os.geteuid() != 0:
        pytest.skip("the OAuth2 smarthost runs a private Postfix, which needs root")
    with OAuthSmarthost(tmp_path_factory.mktemp("oauthsmarthost"), oauth_server_module) as peer:
        yield peer


@pytest.fixture
def oauth_server_factory(tmp_path):
    """Private authorization servers with their own options; stopped after the test."""
    servers: list[OAuthServer] = []

    def make(**options) -> OAuthServer:
        server = OAuthServer(tmp_path / f"oauthserver{len(servers)}", **options)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
