"""A real OAuth2 authorization server on loopback for the OAuth2 smarthost tests: oauthlib's
server classes over the state in tests/support/oauthstore.py, served by stdlib
``ThreadingHTTPServer`` threads in the test's own process.

Endpoints (POST, form-encoded, as RFC 6749/8628/7662/7009 say): ``/token`` (client_credentials,
refresh_token with rotation, the RFC 8628 device_code grant), ``/devicecode`` (device
authorisation), ``/introspect`` (RFC 7662, the resource server authenticates with HTTP basic
auth), ``/revoke`` (RFC 7009), and GET ``/device``, the verification page a person would open.

Two listeners, both HTTPS by default with a certificate for 127.0.0.1 from a trustme CA written
to ``ca_file``, which every client must verify: the main one (``port``), the provider as the
relay sees it, and one for the resource server's introspection (``introspect_port``, Dovecot),
which never takes a fault, as a provider's login service and its mail service fail apart. Fault
modes act on the main listener only, as the relay sees its provider: "down" (the listener is
closed: connection refused), "slow" (answers after ``slow_s``; hangs up if the fault is lifted
first), "garbage" (200 with an HTML page), "garbage_json" (200 with JSON without access_token),
"error" (400 invalid_grant); they apply to the token and device-authorisation endpoints.
``on_issued`` runs after a token answer has left, so a test can kill -9 the relay right there.

Guarantees: ``start`` returns once both ports accept; ``stop`` closes both and releases any
request held by "slow" (dropped unanswered). Counters: ``requests`` per endpoint, ``grants`` per
grant type asked for, ``store.issued`` per grant type answered with tokens.
Never: listens on anything but 127.0.0.1, logs a token, a secret or a request body (the access
log has the method, the path and the status only). Does not import pytest.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import sys
import tempfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from pathlib import Path
import urllib.error
import urllib.parse
import urllib.request
from urllib.parse import parse_qs

from oauthlib.oauth2 import BearerToken
from oauthlib.oauth2.rfc6749.endpoints import IntrospectEndpoint, RevocationEndpoint, TokenEndpoint
from oauthlib.oauth2.rfc6749.grant_types import ClientCredentialsGrant, RefreshTokenGrant
from oauthlib.oauth2.rfc8628.endpoints import DeviceAuthorizationEndpoint
from oauthlib.oauth2.rfc8628.grant_types import DeviceCodeGrant

from tests.support.oauthstore import (GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE, GRANT_REFRESH,
                                      Client, Store, _new_user_code, basic_credentials)

LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 64 * 1024    # a token request is a few hundred bytes
SLOW_S = 60.0                 # longer than any client's token-endpoint timeout
FAULTS = ("down", "slow", "garbage", "garbage_json", "error")
FAULTY_PATHS = ("/token", "/devicecode")
DROP = 0                      # the status of an answer that is never sent: the server hangs up
Answer = tuple[int, dict[str, str], bytes]



def loopback_tls_context(ca_file) -> ssl.SSLContext:
    """A server context for 127.0.0.1 and localhost from a fresh test CA, whose certificate
    is written world-readable to `ca_file` (a relay that dropped privileges verifies with it)."""
    import trustme  # test dependency, only needed for TLS peers

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(ca_file))
    os.chmod(ca_file, 0o644)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOOPBACK, "localhost").configure_cert(context)
    return context

class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: OAuthServer, port: int, context: ssl.SSLContext | None,
                 main: bool):
        super().__init__((LOOPBACK, port), _Handler)
        self.owner = owner
        self.main = main
        if context is not None:
            # Handshake in the request thread, so a silent client cannot stall accept().
            self.socket = context.wrap_socket(self.socket, server_side=True,
                                              do_handshake_on_connect=False)

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (timeout, bad TLS) is logged, not printed to stderr."""
        self.owner.log_line(f"{client_address[0]} request failed: {sys.exc_info()[1]!r}")


class _Handler(BaseHTTPRequestHandler):
    server: _Listener

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._send((400, {"Content-Type": "text/plain"}, b"bad Content-Length\n"))
            return
        body = self.rfile.read(length).decode("utf-8", "replace")
        answer = self.server.owner.answer(self.path, "POST", body, dict(self.headers),
                                          self.server.main)
        self._send(answer)
        self.wfile.flush()
        self.server.owner.after_answer(self.path, body, answer)

    def do_GET(self) -> None:
        self._send(self.server.owner.answer(self.path, "GET", "", dict(self.headers),
                                            self.server.main))

    def _send(self, answer: Answer) -> None:
        status, headers, body = answer
        if status == DROP:
            self.close_connection = True    # hang up without a word
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib's name)
        self.server.owner.log_line(f"{self.address_string()} {format % args}")


def _form(body: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(body).items()}


class OAuthServer:
    """The authorization server; use as a context manager. See the module docstring."""

    def __init__(self, workdir: os.PathLike | str, *, tls: bool = True,
                 refresh_policy: str = "rotate", slow_s: float = SLOW_S):
        self.workdir = Path(workdir)
        self.tls = tls
        self.slow_s = slow_s
        self.store = Store(refresh_policy=refresh_policy)
        # Called in the request thread after a token answer (200) has been written and flushed,
        # with the grant type and the answer: a test can kill -9 the relay's queue manager there,
        # between "the new refresh token left the server" and "the relay stored it".
        self.on_issued: Callable[[str, dict], None] | None = None
        self.fault: str | None = None
        self.requests: Counter[str] = Counter()
        self.grants: Counter[str] = Counter()
        self.port = 0
        self.introspect_port = 0
        # World-readable, so a relay that dropped to its own user can read the CA file.
        self.root = Path(tempfile.mkdtemp(prefix="mta-oauth-", dir="/tmp"))
        self.root.chmod(0o755)
        self.ca_file = self.root / "oauth-ca.pem"
        self.log = self.workdir / "oauthserver.log"
        self._context: ssl.SSLContext | None = None
        self._main: _Listener | None = None
        self._resource: _Listener | None = None
        self._release = threading.Event()
        self._log_lock = threading.Lock()
        self._build_endpoints()

    def _build_endpoints(self) -> None:
        store = self.store
        bearer = BearerToken(store, expires_in=lambda request: int(store.access_lifetime_s))
        refresh = RefreshTokenGrant(store)
        refresh.register_token_modifier(store.omit_refresh)
        self._token = TokenEndpoint(GRANT_CLIENT_CREDENTIALS, bearer, grant_types={
            GRANT_CLIENT_CREDENTIALS: ClientCredentialsGrant(store),
            GRANT_REFRESH: refresh,
            GRANT_DEVICE: DeviceCodeGrant(store)})
        self._introspect = IntrospectEndpoint(store)
        self._revoke = RevocationEndpoint(store)
        self._device: DeviceAuthorizationEndpoint | None = None  # needs the port: see start()

    # -- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> OAuthServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._context = loopback_tls_context(self.ca_file)
        self._release.clear()
        self._main = self._serve(0, self._context, main=True)
        self.port = self._main.server_address[1]
        self._resource = self._serve(0, self._context, main=False)
        self.introspect_port = self._resource.server_address[1]
        self._device = DeviceAuthorizationEndpoint(
            self.store, verification_uri=f"{self.base_url}/device",
            expires_in=int(self.store.device_expires_s),
            interval=int(self.store.device_interval_s), user_code_generator=_new_user_code)

    def _serve(self, port: int, context: ssl.SSLContext | None, main: bool) -> _Listener:
        listener = _Listener(self, port, context, main)
        threading.Thread(target=listener.serve_forever, name=f"oauth-{port}",
                         daemon=True).start()
        return listener

    def stop(self) -> None:
        self._release.set()
        for listener in (self._main, self._resource):
            if listener is not None:
                listener.shutdown()
                listener.server_close()
        self._main = self._resource = None
        shutil.rmtree(self.root, ignore_errors=True)

    def set_fault(self, mode: str | None) -> None:
        """One of FAULTS, or None for normal service (reopens the main port after "down")."""
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; one of {FAULTS}")
        if mode == "down" and self._main is not None:
            self._main.shutdown()
            self._main.server_close()
            self._main = None
        if mode != "down" and self._main is None:
            self._main = self._serve(self.port, self._context, main=True)
        if mode == "slow":
            self._release.clear()
        else:
            self._release.set()   # lets go of requests held by an earlier "slow"
        self.fault = mode

    # -- addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    token_url = property(lambda self: f"{self.base_url}/token")
    device_url = property(lambda self: f"{self.base_url}/devicecode")
    introspect_url = property(lambda self: f"{self.base_url}/introspect")
    revoke_url = property(lambda self: f"{self.base_url}/revoke")

    def request(self, path: str, form: dict, auth: tuple[str, str] | None = None,
                timeout: float = 10.0) -> tuple[int, bytes]:
        """A client's POST of ``form`` to the main listener, verifying ``ca_file``: (status,
        body). Connection errors and timeouts raise (URLError, TimeoutError)."""
        request = urllib.request.Request(
            f"{self.base_url}{path}", data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        if auth is not None:
            basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {basic}")
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else None
        try:
            with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()

    def resource_introspect_url(self, user: str, password: str) -> str:
        """The introspection URL on the resource server's port, basic-auth credentials in it."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{user}:{password}@{LOOPBACK}:{self.introspect_port}/introspect"

    # -- the test API ------------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str | None, scope: str | list[str], *,
                   mailbox: str | None = None, grants=None) -> Client:
        scopes = scope.split() if isinstance(scope, str) else list(scope)
        client = Client(client_id, secret, scopes, mailbox=mailbox)
        if grants is not None:
            client.grants = frozenset(grants)
        return self.store.add_client(client)

    def add_resource_server(self, name: str, secret: str) -> Client:
        """A client that may only introspect tokens (Dovecot)."""
        return self.store.add_client(Client(name, secret, [], grants=frozenset(),
                                            introspect=True))

    def approve(self, user_code: str, username: str) -> None:
        self.store.approve(user_code, username)

    def deny(self, user_code: str) -> None:
        self.store.approve(user_code, "", deny=True)

    def revoke(self, token: str) -> None:
        self.store.revoke(token)

    def expire(self, token: str) -> None:
        self.store.expire(token)

    def set_access_lifetime(self, seconds: float) -> None:
        self.store.access_lifetime_s = seconds

    def issue_token(self, user: str, scope: str = "", *, client_id: str = "direct",
                    refresh: bool = False, lifetime_s: float | None = None) -> dict:
        """Tokens for ``user`` without any HTTP, as a token response dict."""
        return self.store.issue(client_id, user, scope.split(), refresh=refresh,
                                lifetime_s=lifetime_s)

    def after_answer(self, path: str, body: str, answer: Answer) -> None:
        """Run ``on_issued`` for a token answer that carried tokens (see ``__init__``)."""
        hook = self.on_issued
        if hook is None or path.split("?", 1)[0] != "/token" or answer[0] != 200:
            return
        try:
            issued = json.loads(answer[2])
        except ValueError:
            return
        if isinstance(issued, dict) and "access_token" in issued:
            hook(_form(body).get("grant_type", ""), issued)

    def log_line(self, line: str) -> None:
        with self._log_lock, open(self.log, "a") as log:
            log.write(line + "\n")

    # -- answering ---------------------------------------------------------------------------

    def answer(self, path: str, method: str, body: str, headers: dict[str, str],
               main: bool) -> Answer:
        path = path.split("?", 1)[0]
        self.requests[path.strip("/")] += 1
        if path == "/token":
            self.grants[_form(body).get("grant_type", "")] += 1
        if main and path in FAULTY_PATHS and self.fault is not None:
            faulty = self._fault_answer()
            if faulty is not None:
                return faulty
        uri = f"{self.base_url}{path}"
        with self.store.lock:
            return self._route(path, uri, method, body, headers)

    def _fault_answer(self) -> Answer | None:
        if self.fault == "slow":
            # A request still held when the fault is lifted (or the server stops) is dropped,
            # not answered: its client gave up long ago, and a late grant would change the
            # counters and the tokens of whatever the test does next.
            released = self._release.wait(self.slow_s)
            return (DROP, {}, b"") if released else None
        if self.fault == "garbage":
            return 200, {"Content-Type": "text/html"}, b"<html><body>Service busy</body></html>"
        if self.fault == "garbage_json":
            return _json(200, {"token_type": "Bearer", "expires_in": 3600})
        if self.fault == "error":
            return _json(400, {"error": "invalid_grant",
                               "error_description": "the grant was refused (test fault)"})
        return None

    def _route(self, path: str, uri: str, method: str, body: str, headers) -> Answer:
        if path == "/token":
            return _wrap(self._token.create_token_response(uri, method, body, headers))
        if path == "/introspect":
            return _wrap(self._introspect.create_introspect_response(uri, method, body, headers))
        if path == "/revoke":
            return _wrap(self._revoke.create_revocation_response(uri, method, body, headers))
        if path == "/devicecode":
            return self._device_authorization(uri, method, body, headers)
        if path == "/device" and method == "GET":
            return 200, {"Content-Type": "text/plain"}, b"Enter the code shown on your device.\n"
        return 404, {"Content-Type": "text/plain"}, b"not found\n"

    def _device_authorization(self, uri: str, method: str, body: str, headers) -> Answer:
        out_headers, data, status = self._device.create_device_authorization_response(
            uri, method, body, headers)
        if status != 200 or not isinstance(data, dict):
            return _wrap((out_headers, data, status))
        basic = basic_credentials(headers)
        client_id = basic[0] if basic else _form(body).get("client_id", "")
        self.store.save_device(data, client_id, (data.get("scope") or "").split())
        return _json(200, data)


def _json(status: int, data: dict) -> Answer:
    return status, {"Content-Type": "application/json", "Cache-Control": "no-store"}, \
        json.dumps(data).encode()


def _wrap(response: tuple) -> Answer:
    headers, body, status = response
    if isinstance(body, dict):
        body = json.dumps(body)
    headers = dict(headers or {})
    headers.setdefault("Content-Type", "application/json")
    return status, headers, (body or "").encode()
