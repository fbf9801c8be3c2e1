"""page.server — mta-lite-page: the status page's own small HTTP server (asyncio streams).

    GET /              the page (text/html)             HEAD as well
    GET /status.json   the same data for scripts (application/json, docs/status.schema.json)
    anything else      404; a request head over MAX_REQUEST_BYTES 431; a client that has
                       not sent its request head within REQUEST_TIMEOUT_S is dropped

SECURITY: faces the LAN, unauthenticated, read-only by construction: it parses one request
line and ignores every header and any body; there is no form, no action and no login. At
most MAX_CONNECTIONS clients are served at once: a new one takes the place of the connection
that has waited longest without sending its request (so a flood of idle connections cannot
lock a browser out), else it is answered 503 and closed; slow readers and writers are cut
off after their timeouts. Every response carries a strict Content-Security-Policy (no script at
all, only the page's own hashed style, inline images), nosniff, no-referrer, no framing,
no-store. The data are rebuilt at most once every CACHE_S, however many requests come.
Started as root with --user, it binds, enters the spool, then drops to that user (no
supplementary groups) before it reads anything; under systemd it starts as that user.
Guarantees: it only reads files (page/data.py); the relay never waits for it, so nothing it
does can slow or stop mail.
Must never: read the config or the queue, write anything, or run a script in the browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import time
from dataclasses import dataclass

from mta_lite_board.page import data as page_data
from mta_lite_board.page import render

log = logging.getLogger("page")

# Clients served at once: a family's phones and a Home Assistant poll need a handful; the
# bound keeps a flood of connections from taking memory or file descriptors.
MAX_CONNECTIONS = 32
# The request head (request line and headers): a browser's is well under 2 KB.
MAX_REQUEST_BYTES = 8192
# A client has this long to send its request head, and to take the answer: a slow client
# holds one of MAX_CONNECTIONS for at most this long.
REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
# The files change every 2 s at most (the status file); rebuilding the page more often than
# once a second would only cost CPU under load.
CACHE_S = 1.0
ROUTES = {"/": "text/html; charset=utf-8", "/status.json": "application/json"}
REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable", 400: "Bad Request"}
HEADERS = {
    "Content-Security-Policy": (f"default-src 'none'; style-src '{render.STYLE_HASH}'; img-src data:; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Connection": "close",
}


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    def head(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, '')}",
                 f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                 *(f"{name}: {value}" for name, value in HEADERS.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def plain(status: int) -> Response:
    return Response(status, "text/plain; charset=utf-8", f"{status} {REASONS[status]}\n".encode())


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """(method, path without query) of a request head; None if it is not HTTP/1.x."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    return method, target.split("?", 1)[0]


class Page:
    """The two routes over the files in `spool_dir` and `board_run_dir` (and the root step's
    config.json, for the config's generation); data cached CACHE_S."""

    def __init__(self, spool_dir: str, board_run_dir: str | None, config_info: str | None = None,
                 clock=time.time) -> None:
        self.spool_dir, self.board_run_dir, self.clock = spool_dir, board_run_dir, clock
        self.config_info = config_info
        self._cache: dict[str, tuple[float, bytes]] = {}

    def respond(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD") or path not in ROUTES:
            return plain(404)
        now = self.clock()
        made, body = self._cache.get(path, (-CACHE_S, b""))
        if not 0 <= now - made < CACHE_S:
            body = self._build(path, now)
            self._cache[path] = (now, body)
        return Response(200, ROUTES[path], body)

    def _build(self, path: str, now: float) -> bytes:
        data = page_data.collect(self.spool_dir, self.board_run_dir, now, self.config_info)
        if path == "/status.json":
            return json.dumps(data, indent=1, sort_keys=True).encode()
        return render.page(data).encode()


class Server:
    """The listener: bounded connections, request size and time."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.active = 0
        self.served = 0
        self.turned_away = 0
        self.evicted = 0
        # Connections still waiting for their request head, oldest first: a flood of idle
        # connections is what fills the slots, so a new client takes the oldest idle one's.
        self._idle: dict[asyncio.StreamWriter, None] = {}

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=MAX_REQUEST_BYTES,
                                          reuse_address=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= MAX_CONNECTIONS and not self._evict_idle():
            self.turned_away += 1
            await self._send(writer, plain(503), head_only=False)
            return
        self.active += 1
        self._idle[writer] = None
        try:
            method, response = await self._read(reader)
            self._idle.pop(writer, None)
            if not writer.transport.is_closing():
                await self._send(writer, response, head_only=method == "HEAD")
                self.served += 1
        finally:
            self._idle.pop(writer, None)
            self.active -= 1

    def _evict_idle(self) -> bool:
        """Drop the connection that has waited longest without sending its request."""
        if not self._idle:
            return False
        victim = next(iter(self._idle))
        del self._idle[victim]
        victim.transport.abort()
        self.evicted += 1
        return True

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str, Response]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            return "", plain(431)
        except asyncio.IncompleteReadError as exc:      # a bare "GET /\n\n" or a closed client
            head = exc.partial
        except (asyncio.TimeoutError, ConnectionError):
            return "", plain(408)
        request = parse_request_line(head)
        if request is None:
            return "", plain(400)
        try:
            return request[0], self.page.respond(*request)
        except Exception:       # a bug must cost one answer, never the server
            log.exception("internal error answering %s %s", *request)
            return request[0], plain(500)

    async def _send(self, writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
        try:
            writer.write(response.head() + (b"" if head_only else response.body))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()        # a client that does not read: dropped
            else:
                writer.close()


def drop_privileges(user: str) -> None:
    """Become `user` for good: no supplementary groups, its own group, its uid."""
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise PermissionError(f"still root after dropping to {user}")
