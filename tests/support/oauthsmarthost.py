"""An OAuth2 smarthost on loopback: Dovecot (auth only) checks XOAUTH2 and OAUTHBEARER tokens by
RFC 7662 introspection against tests/support/oauthserver.py, and a Postfix in front of it
offers AUTH after STARTTLS (587-style, ``starttls_port``) and on implicit TLS (465-style,
``implicit_port``), relays authenticated mail only and delivers it into one Maildir.

Dovecot: ``dovecot -F -c CONF`` with ``protocols =`` (no mail service), its auth service on
127.0.0.1:``auth_port`` for Postfix's ``smtpd_sasl_type = dovecot``, ``force_introspection``
(every login asks the server: a revoked token fails at once), no failure delay and no anvil
penalty (else repeated failures wait 4.7 s, 8.7 s ...). As root the master keeps root and its
auth workers run as Debian's ``dovecot``/``dovenull`` users; its files live in a 0755 directory
under /tmp that those users can traverse. It introspects over HTTPS on the server's
``introspect_port`` and verifies the server's test CA (``tls_ca_cert_file`` in the oauth2 args
file; the global ``ssl_client_ca_file`` is not used by the oauth2 passdb in Dovecot 2.3).

Guarantees: ``__enter__`` returns once Dovecot's auth service greets and Postfix answers 220 on
both ports; ``__exit__`` stops Postfix first, then Dovecot, by PID, and waits until they are
gone (never ``doveadm reload`` under a running Postfix). ``logins()`` counts what Dovecot
decided: every login is one introspection (successes) or one logged failure.
Never: touches /etc/dovecot or /etc/postfix, listens beyond 127.0.0.1. Needs root (Postfix).
This module does not import pytest.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

from tests.support.oauthserver import OAuthServer
from tests.support.peers import (LOOPBACK, SINK_USER, PostfixSmarthost, _runtime_dir,
                                 count_auth, free_port, poll_until, process_tree, stop_pids,
                                 tail_file)

DOVECOT = "/usr/sbin/dovecot"
INTROSPECT_USER = "dovecot-introspect"
INTROSPECT_SECRET = "introspect-secret-for-tests"  # loopback resource-server credential

_DOVECOT_CONF = """\
protocols =
listen = 127.0.0.1
base_dir = {run}/base
state_dir = {run}/state
log_path = {run}/dovecot.log
info_log_path = {run}/dovecot.log
ssl = no
auth_mechanisms = xoauth2 oauthbearer
auth_failure_delay = 0
auth_verbose = yes
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {run}/oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  inet_listener {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

_OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
force_introspection = yes
"""

# What Dovecot's auth process logs for one refused oauth2 login, e.g. "auth: Info:
# oauth2(alice@example.test,127.0.0.1): oauth2 failed: Introspection failed: Provided token is
# not valid" (an Error when the introspection answer itself was unusable).
_LOGIN_FAILED = re.compile(r" auth: \w+: oauth2\([^)]*\): oauth2 failed: ")


class Dovecot:
    """Dovecot's auth service alone, checking tokens at ``server`` (see the module docstring)."""

    def __init__(self, workdir: os.PathLike | str, server: OAuthServer,
                 start_timeout: float = 30.0):
        self.workdir = Path(workdir)
        self.server = server
        self.start_timeout = start_timeout
        self.port = 0
        self.run = self.workdir
        self.log = self.workdir / "dovecot.log"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _write_config(self) -> Path:
        self.server.add_resource_server(INTROSPECT_USER, INTROSPECT_SECRET)
        url = self.server.resource_introspect_url(INTROSPECT_USER, INTROSPECT_SECRET)
        oauth2 = _OAUTH2_CONF.format(url=url)
        if self.server.tls:
            oauth2 += f"tls_ca_cert_file = {self.server.ca_file}\n"
        (self.run / "oauth2.conf.ext").write_text(oauth2)
        conf = self.run / "dovecot.conf"
        conf.write_text(_DOVECOT_CONF.format(run=self.run, port=self.port))
        for sub in ("base", "state"):
            (self.run / sub).mkdir(mode=0o755)
        return conf

    def start(self) -> None:
        self.run = _runtime_dir("mta-peer-dovecot-")
        self.log = self.run / "dovecot.log"
        self.port = free_port()
        conf = self._write_config()
        with open(self.run / "dovecot.stderr", "wb") as err:
            self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)],
                                          stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            poll_until(lambda: self._proc.poll() is not None or self._greets(),
                       self.start_timeout, f"Dovecot auth on port {self.port}")
        except TimeoutError:
            self.stop()
            raise
        status = self._proc.poll()
        if status is not None:
            detail = tail_file(self.run / "dovecot.stderr") + "\n" + tail_file(self.log)
            self.stop()
            raise RuntimeError(f"dovecot exited with {status}:\n{detail}")

    def _greets(self) -> bool:
        """True once the auth service sends its handshake ("VERSION\\t1\\t...")."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=2.0) as sock:
                return sock.recv(64).startswith(b"VERSION")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the master and every auth worker (by PID), archive the log into workdir."""
        if self._proc is None:
            return
        pids = process_tree(self._proc.pid)
        stop_pids(pids, timeout=15.0)
        self._proc.wait(5.0)
        self._proc = None
        keep = self.workdir / f"dovecot-{self.port}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("dovecot.log", "dovecot.stderr", "dovecot.conf", "oauth2.conf.ext"):
            if (self.run / name).exists():
                shutil.copy2(self.run / name, keep / name)
        shutil.rmtree(self.run, ignore_errors=True)
        self.run, self.log = keep, keep / "dovecot.log"

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def failed_logins(self) -> int:
        return sum(1 for line in self.log_lines() if _LOGIN_FAILED.search(line))


class OAuthSmarthost(PostfixSmarthost):
    """Postfix (STARTTLS on ``starttls_port``, implicit TLS on ``implicit_port``) with Dovecot
    checking OAuth2 tokens at ``server``. ``delivered()``, ``wait_for()``, ``auth_attempts()``
    and ``auth_failures()`` are PostfixSmarthost's; ``logins()`` is Dovecot's view."""

    kind = "oauthsmarthost"

    def __init__(self, workdir: os.PathLike | str, server: OAuthServer, **kwargs):
        super().__init__(workdir, users={}, **kwargs)
        self.server = server
        self.dovecot = Dovecot(self.workdir, server)
        self.implicit_port = 0
        self._introspections_before = 0

    @property
    def starttls_port(self) -> int:
        return self.port

    def main_cf(self) -> dict[str, str]:
        return super().main_cf() | {
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": f"inet:{LOOPBACK}:{self.dovecot.port}",
            "cyrus_sasl_config_path": "",
        }

    def _write_config(self) -> None:
        super()._write_config()
        self.implicit_port = free_port()
        with open(self.conf_dir / "master.cf", "a") as master:
            master.write(f"{LOOPBACK}:{self.implicit_port} inet n - n - - smtpd"
                         " -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt\n")

    def prepare(self) -> None:
        """Certificates and Maildir as PostfixSmarthost; Dovecot instead of a sasldb."""
        self._make_certs()
        delivery = pwd.getpwnam(SINK_USER)
        self.mail_dir.mkdir(mode=0o755)
        os.chown(self.mail_dir, delivery.pw_uid, delivery.pw_gid)
        self.dovecot.stop()
        self.dovecot.start()
        self._introspections_before = self.server.store.introspected[INTROSPECT_USER]
        # main.cf was written before Dovecot had its port: write it again with the port.
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.conf_dir / "main.cf").write_text(main)

    def start(self) -> None:
        super().start()
        poll_until(lambda: self._implicit_answers(), self.start_timeout,
                   f"Postfix implicit TLS on port {self.implicit_port}")

    def _implicit_answers(self) -> bool:
        """True once the implicit-TLS port completes a verified handshake and greets."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with socket.create_connection((LOOPBACK, self.implicit_port), timeout=2.0) as raw, \
                    context.wrap_socket(raw, server_hostname=LOOPBACK) as sock:
                greeting = sock.recv(64)
                sock.sendall(b"QUIT\r\n")
                return greeting.startswith(b"220")
        except OSError:
            return False

    def stop(self) -> None:
        super().stop()
        self.dovecot.stop()

    def logins(self) -> tuple[int, int]:
        """(succeeded, failed) token logins since start: Postfix's AUTH results (its maillog)
        for the successes, Dovecot's logged refusals for the failures."""
        attempts, postfix_failed = count_auth(self.log_lines())
        return attempts - postfix_failed, self.dovecot.failed_logins()

    def introspections(self) -> int:
        """How often Dovecot asked the authorization server (once per login it checked)."""
        return self.server.store.introspected[INTROSPECT_USER] - self._introspections_before
