"""sockets — the master's listening sockets: bind the [[listen]] ports, keep them across a
reload, and answer clients with 421 while smtpd is down.

    listen_keys(cfg)             what identifies each [[listen]]'s socket across a reload
    bind_listeners(cfg, bound)   one listening socket per [[listen]], reusing those in `bound`
    rebind(old, socks, new)      the sockets for a reloaded config; closes those it dropped
    turn_away(socks, plain)      answer waiting clients `421 4.3.2` (plain ports) or close

The master (master.py) binds once before it forks, hands the sockets to smtpd, and calls
these again on a reload and while smtpd is down; it runs no event loop, so the sockets are
non-blocking and turn_away() never waits.
Guarantees: a port that stays in the config across a reload keeps its socket (never closed,
so no client is refused during the switch); a failed bind closes only the sockets it opened
itself and leaves the running ones as they were; turn_away() handles at most
TURN_AWAY_PER_ROUND clients per socket per call and stops when descriptors run out.
Must never: block, read from a client, or send anything but the 421 line on a plain port
(an implicit-TLS client would take plain text for garbage: it is closed instead).
"""

from __future__ import annotations

import errno
import select
import socket

from mta_lite.config.schema import Config

LISTEN_BACKLOG = 128
TURN_AWAY_PER_ROUND = 64
R421_DOWN = b"421 4.3.2 Service currently unavailable\r\n"


def listen_keys(cfg: Config) -> list[tuple]:
    """Each [[listen]]'s socket across a reload: its (host, port); port 0 (the kernel picks the
    port, as the tests do) adds the entry's index, since such entries share one address."""
    return [(item.host, item.port, *(() if item.port else (index,))) for index, item in enumerate(cfg.listen)]


def bind_listeners(cfg: Config, bound: dict | None = None) -> list[socket.socket]:
    """One listening socket per [[listen]], in order; those in `bound` (listen_keys() ->
    socket, from before a reload) are reused: a port that stays open is never closed."""
    socks = []
    bound = bound or {}
    try:
        for item, key in zip(cfg.listen, listen_keys(cfg)):
            sock = bound.get(key)
            if sock is None:
                family = socket.AF_INET6 if ":" in item.host else socket.AF_INET
                sock = socket.create_server((item.host, item.port), family=family, backlog=LISTEN_BACKLOG)
                sock.setblocking(False)     # smtpd's event loop wants it so; turn_away() too
            socks.append(sock)
    except OSError:
        for sock in socks:
            if sock not in bound.values():
                sock.close()
        raise
    return socks


def rebind(old: Config, old_socks: list[socket.socket], new: Config) -> list[socket.socket]:
    """The sockets for a reloaded config `new`: unchanged ports keep their socket, the others
    are bound; the old sockets `new` no longer has are closed. On OSError (a port that
    cannot be bound) nothing of the running set is closed."""
    bound = dict(zip(listen_keys(old), old_socks))
    socks = bind_listeners(new, bound)
    for sock in bound.values():
        if sock not in socks:
            sock.close()
    return socks


def turn_away(socks: list[socket.socket], plain: list[bool]) -> int:
    """Answer clients waiting on the listening sockets with 421 (close only on implicit-TLS
    ports, where plain text would be garbage to the client); how many were turned away."""
    ready, _, _ = select.select(socks, [], [], 0)
    count = 0
    for sock in ready:
        for _ in range(TURN_AWAY_PER_ROUND):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:      # ECONNABORTED and the like: that client is gone
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return count
                continue
            with conn:
                conn.setblocking(False)
                if plain[socks.index(sock)]:
                    try:
                        conn.send(R421_DOWN)
                    except OSError:
                        pass
            count += 1
    return count
