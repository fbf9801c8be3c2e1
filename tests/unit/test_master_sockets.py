"""The master's listening sockets across a reload (process/sockets.py), on real sockets: a port
that stays in the config keeps its socket (clients queued on it are not refused), a port
that goes is closed, and a port that cannot be bound leaves the running sockets open."""

import socket

import pytest

from mta_lite.config.load import parse_config
from mta_lite.process.sockets import bind_listeners, rebind

BASE = {"admin_address": "admin@example.com",
        "relays": {"isp": {"host": "smtp.isp.example", "username": "u", "password": "isp-secret-1"}}}


def _config(*addresses: str):
    return parse_config({**BASE, "listen": [{"address": a} for a in addresses]}, "t.toml")


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def test_rebind_keeps_an_unchanged_port_and_closes_a_dropped_one():
    kept, dropped = _free_port(), _free_port()
    old = _config(f"127.0.0.1:{kept}", f"127.0.0.1:{dropped}")
    socks = bind_listeners(old)
    client = socket.create_connection(("127.0.0.1", kept), timeout=5)   # waits in the backlog
    try:
        new_socks = rebind(old, socks, _config(f"127.0.0.1:{kept}"))
        assert new_socks == [socks[0]]
        assert socks[1].fileno() == -1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", dropped), timeout=5)
        conn, _ = socks[0].accept()          # the waiting client is still there
        conn.close()
    finally:
        client.close()
        for sock in socks:
            sock.close()


def test_rebind_failing_to_bind_leaves_the_running_sockets_open():
    port = _free_port()
    old = _config(f"127.0.0.1:{port}")
    socks = bind_listeners(old)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        try:
            with pytest.raises(OSError):
                rebind(old, socks, _config(f"127.0.0.1:{port}", f"127.0.0.1:{busy}"))
            assert socks[0].fileno() != -1
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        finally:
            for sock in socks:
                sock.close()
