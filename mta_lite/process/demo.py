"""demo — `mta-lite demo`: the relay on 127.0.0.1:2525 with two local capture smarthosts.

Shows the relay core end to end without root and without a config file: it writes a demo
config into a fresh temporary directory, starts two capture smarthosts (STARTTLS with a
throw-away CA, SMTP AUTH, each standing in for an ISP or a mail provider), starts the relay,
sends sample messages from different senders over real SMTP, and prints which smarthost
and which account carried each. It then keeps running so that swaks or a mail client can
be pointed at 127.0.0.1:2525; every captured message is printed as it arrives.
Needs the optional packages aiosmtpd and trustme (pip install 'mta-lite[demo]').
Must never: listen on anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile

import tomli_w

DEMO_PORT = 2525
ACCOUNTS = {"office@isp.demo": "isp-demo-password", "alice@mail.demo": "mail-demo-password"}
SAMPLES = [
    ("scanner@office.lan", "bob@example.org", "Scan from the office scanner"),
    ("alice@example.com", "carol@example.net", "Alice's private mail goes out via her own account"),
    ("nas@office.lan", "root", "Nightly backup finished (to a bare local name -> admin)"),
]


class _Capture:
    """aiosmtpd handler that records what each smarthost account received."""

    def __init__(self, name: str, seen: asyncio.Queue) -> None:
        self.name, self.seen = name, seen

    async def handle_DATA(self, server, session, envelope):
        subject = next((line[9:] for line in envelope.content.decode("utf-8", "replace").splitlines()
                        if line.lower().startswith("subject: ")), "")
        login = session.auth_data.login.decode() if session.auth_data else "(no login)"
        await self.seen.put((self.name, login, envelope.mail_from, envelope.rcpt_tos, subject))
        return "250 2.0.0 Ok: captured"


def _authenticator(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult
    login = auth_data.login.decode()
    ok = ACCOUNTS.get(login) == auth_data.password.decode()
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


async def _start_smarthost(name: str, ctx: ssl.SSLContext, seen: asyncio.Queue):
    from aiosmtpd.smtp import SMTP
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Capture(name, seen), hostname=f"smtp.{name}.demo", tls_context=ctx,
                     require_starttls=True, auth_require_tls=True, authenticator=_authenticator),
        "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _write_config(workdir: str, ca_file: str, ports: dict[str, int]) -> str:
    config = {
        "hostname": "relay.demo.lan",
        "spool_dir": os.path.join(workdir, "spool"),
        "mynetworks": ["127.0.0.0/8"],
        "admin_address": "admin@example.com",
        "default_relay": "isp",
        "listen": [{"address": f"127.0.0.1:{DEMO_PORT}"}],
        "relays": {
            "isp": {"host": "127.0.0.1", "port": ports["isp"], "tls": "starttls", "ca_file": ca_file,
                    "username": "office@isp.demo", "password": ACCOUNTS["office@isp.demo"]},
            "mail": {"host": "127.0.0.1", "port": ports["mail"], "tls": "starttls", "ca_file": ca_file},
        },
        "senders": [{"address": "alice@example.com", "relay": "mail", "username": "alice@mail.demo",
                     "password": ACCOUNTS["alice@mail.demo"]}],
        "queue": {"min_backoff": "10s", "max_backoff": "1m"},
    }
    path = os.path.join(workdir, "mta-lite.toml")
    with open(path, "wb") as handle:
        tomli_w.dump(config, handle)
    os.chmod(path, 0o600)
    return path


async def _send_samples() -> None:
    import aiosmtplib
    for sender, rcpt, subject in SAMPLES:
        message = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\n"
                   f"Hello from the mta-lite demo.\r\n")
        await aiosmtplib.send(message.encode(), sender=sender, recipients=[rcpt],
                              hostname="127.0.0.1", port=DEMO_PORT, start_tls=False)
        print(f"  sent   {sender:<22} -> {rcpt:<20} {subject}")


async def _demo() -> None:
    import trustme
    from mta_lite.config.load import load_config
    from mta_lite.process.services import Daemon
    from mta_lite.maillog import setup_logging

    workdir = tempfile.mkdtemp(prefix="mta-lite-demo-")
    ca = trustme.CA()
    ca_file = os.path.join(workdir, "demo-ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    seen: asyncio.Queue = asyncio.Queue()
    servers = {name: await _start_smarthost(name, ctx, seen) for name in ("isp", "mail")}
    config_path = _write_config(workdir, ca_file, {name: port for name, (_, port) in servers.items()})
    cfg = load_config(config_path)
    log_path = os.path.join(workdir, "mta-lite.log")
    log_file = open(log_path, "a", encoding="utf-8")
    setup_logging(cfg, stream=log_file)
    logging.getLogger("mail.log").setLevel(logging.WARNING)     # the capture smarthosts' chatter
    daemon = Daemon(cfg)
    await daemon.start()
    print(f"\nmta-lite demo: relay listening on 127.0.0.1:{DEMO_PORT}")
    print(f"  config {config_path}\n  log    {log_path}  (Postfix-style lines: tail -f it)\n")
    await _send_samples()
    print("\nDelivered (smarthost, account used, envelope):")
    for _ in SAMPLES:
        await _print_capture(await asyncio.wait_for(seen.get(), 60))
    print(f"\nTry:  swaks --server 127.0.0.1:{DEMO_PORT} --from alice@example.com --to you@example.org")
    print(f"      mta-lite -c {config_path} status     (Ctrl-C stops the demo)\n")
    try:
        while True:
            await _print_capture(await seen.get())
    finally:
        await daemon.shutdown()
        log_file.close()


async def _print_capture(item) -> None:
    name, login, sender, rcpts, subject = item
    print(f"  relay={name:<5} account={login:<18} from=<{sender}> to=<{','.join(rcpts)}>  {subject}")


def run_demo() -> int:
    try:
        import aiosmtpd  # noqa: F401
        import trustme  # noqa: F401
    except ImportError:
        print("mta-lite demo needs aiosmtpd and trustme: pip install 'mta-lite[demo]' (make run does this)")
        return 69
    try:
        asyncio.run(_demo())
    except KeyboardInterrupt:
        print("\nmta-lite demo stopped.")
    except OSError as exc:
        print(f"mta-lite demo: {exc} (is port {DEMO_PORT} in use?)")
        return 71
    return 0
