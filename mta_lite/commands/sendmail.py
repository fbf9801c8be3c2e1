"""sendmail — sendmail-compatible submission from stdin, for cron jobs and scripts.

    mta-lite sendmail [-t] [-i] [-oi] [-f SENDER] [-F NAME] [RCPT...]

Any local user may run it, and it gives them no access to the queue: like Postfix's
postdrop it writes one queue file into spool/maildrop/ (mode 3733 when the spool belongs to
mta-lite: create only, no listing), where the queue manager's pickup validates it as
untrusted input and copies it into the queue (qmgr/pickup.py). The file is staged as
maildrop/.tmp-ID, fsynced, linked to maildrop/ID, and the new entry made durable: with
fsync() of the directory where we may read it, else syncfs() (see queue/dirsync.py).
Guarantees: exit status 0 only once the message is durably in maildrop/ (G1), also while
the daemon is stopped (it is picked up when the daemon starts); 75 (EX_TEMPFAIL) when it
could not be stored, with nothing left behind; 64 (EX_USAGE) for a bad address or no
recipients; 77 (EX_NOPERM) for a sender whose [[senders]] entry is bound to other clients
(S4: a local submission counts as client 127.0.0.1, as it does for [rewrite.clients]);
78 for a bad config. The body is streamed to the file, never held whole in
memory. Line endings are normalised to CRLF; a bare CR is dropped, so nothing we relay
carries one (S2).
Must never: exit 0 before the file and its directory entry are on stable storage; write
anywhere in the spool but maildrop/ (or create the spool, when there is none yet).
"""

from __future__ import annotations

import email.utils
import getpass
import os
import sys
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

from mta_lite.config.schema import Config
from mta_lite.envelope import Envelope, parse_path
from mta_lite.errors import AddressError, SpoolError
from mta_lite.identity import bound_to_other_clients
from mta_lite.queue import Spool
from mta_lite.queue.spool import MAILDROP
from mta_lite.reply import sender_not_owned

EX_OK, EX_USAGE, EX_NOPERM, EX_TEMPFAIL = 0, 64, 77, 75
LOCAL_CLIENT = "127.0.0.1"      # what a local submission counts as, for bindings and [rewrite]
# Owner (the submitting user) and group read. maildrop/ is set-gid to the queue manager's
# group, so qmgr can read the file and other local users cannot, even knowing its name.
MAILDROP_FILE_MODE = 0o640
# Headers are parsed in memory for -t; a header block larger than this is not mail.
MAX_HEADER_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
# Options real sendmail takes that mean nothing here (delivery mode, error mode, ...).
_IGNORED_WITH_ARG = {"-o", "-O", "-B", "-N", "-R", "-V", "-X", "-L", "-p", "-q", "-h", "-C"}


@dataclass
class Invocation:
    from_headers: bool = False
    dot_ends: bool = True
    sender: str | None = None
    full_name: str | None = None
    recipients: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Invocation:
    inv = Invocation()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            inv.recipients.extend(args)
            break
        if arg in ("-t",):
            inv.from_headers = True
        elif arg in ("-i", "-oi"):
            inv.dot_ends = False
        elif arg.startswith("-f") or arg.startswith("-r"):
            inv.sender = arg[2:] or (args.pop(0) if args else "")
        elif arg.startswith("-F"):
            inv.full_name = arg[2:] or (args.pop(0) if args else "")
        elif arg in _IGNORED_WITH_ARG and args:
            args.pop(0)
        elif arg.startswith("-"):
            continue            # -oem, -odi, -bm, -v ...: accepted and ignored, as Postfix does
        else:
            inv.recipients.append(arg)
    return inv


def _read_headers(stdin, dot_ends: bool) -> tuple[bytes, bool]:
    """Header block (up to and including the blank line) and whether input already ended."""
    lines = []
    size = 0
    while True:
        line = stdin.readline(MAX_HEADER_BYTES)
        if not line:
            return b"".join(lines), True
        if dot_ends and line.rstrip(b"\r\n") == b".":
            return b"".join(lines), True
        lines.append(line)
        size += len(line)
        if line in (b"\n", b"\r\n") or size > MAX_HEADER_BYTES or not _looks_like_header(line, lines):
            return b"".join(lines), False


def _looks_like_header(line: bytes, lines: list[bytes]) -> bool:
    if line[:1] in (b" ", b"\t") and len(lines) > 1:
        return True
    name, colon, _ = line.partition(b":")
    return bool(colon) and bool(name) and all(33 <= c <= 126 for c in name)


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")


def _header_recipients(headers: bytes) -> list[str]:
    msg = BytesHeaderParser(policy=compat32).parsebytes(headers)
    fields = msg.get_all("To", []) + msg.get_all("Cc", []) + msg.get_all("Bcc", [])
    return [addr for _, addr in email.utils.getaddresses([str(f) for f in fields]) if addr]


def _strip_bcc(headers: bytes) -> bytes:
    out, skipping = [], False
    for line in headers.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            out.append(line)
    return b"".join(out)


def _added_headers(headers: bytes, cfg: Config, sender: str, full_name: str | None) -> bytes:
    msg = BytesHeaderParser(policy=compat32).parsebytes(headers)
    extra = []
    if "From" not in msg:
        extra.append(f"From: {email.utils.formataddr((full_name or '', sender))}")
    if "Date" not in msg:
        extra.append(f"Date: {email.utils.formatdate(localtime=True)}")
    if "Message-ID" not in msg:
        extra.append(f"Message-ID: {email.utils.make_msgid(domain=cfg.hostname)}")
    return "".join(line + "\r\n" for line in extra).encode()


def _address(raw: str, cfg: Config, sender: bool) -> str:
    addr = parse_path(f"<{raw.strip().strip('<>')}>", sender=sender, smtputf8=True)
    if addr and "@" not in addr:
        addr = f"{addr}@{cfg.hostname}" if sender else cfg.admin_address
    return addr


def submit(cfg: Config, argv: list[str], stdin=None, user: str | None = None) -> int:
    """Read one message from stdin and queue it; return the sendmail exit status."""
    stdin = stdin or sys.stdin.buffer
    inv = parse_args(argv)
    try:
        sender = _address(inv.sender if inv.sender is not None else (user or getpass.getuser()), cfg, True)
        headers, ended = _read_headers(stdin, inv.dot_ends)
        raw = inv.recipients + (_header_recipients(headers) if inv.from_headers else [])
        recipients = list(dict.fromkeys(_address(r, cfg, False) for r in raw))
    except AddressError as exc:
        print(f"sendmail: {exc.reply or exc}", file=sys.stderr)
        return EX_USAGE
    if not recipients:
        print("sendmail: no recipient addresses given (use RCPT arguments or -t)", file=sys.stderr)
        return EX_USAGE
    if bound_to_other_clients(cfg, sender, LOCAL_CLIENT):     # S4; pickup checks it again
        print(f"sendmail: {sender_not_owned(sender, f'client [{LOCAL_CLIENT}]')}", file=sys.stderr)
        return EX_NOPERM
    if inv.from_headers:
        headers = _strip_bcc(headers)
    return _queue(cfg, Envelope(sender, recipients, LOCAL_CLIENT, "localhost", smtputf8=True, body="8BITMIME"),
                  _added_headers(headers, cfg, sender, inv.full_name) + _crlf(headers), stdin, ended, inv.dot_ends)


def _queue(cfg: Config, envelope: Envelope, head: bytes, stdin, ended: bool, dot_ends: bool) -> int:
    spool = Spool(cfg.spool_dir)
    try:
        if not os.path.isdir(os.path.join(spool.root, MAILDROP)):
            spool.ensure()      # no spool yet (demo, tests): this user will own it all
        writer = spool.begin(envelope, target=MAILDROP, mode=MAILDROP_FILE_MODE)
    except (SpoolError, OSError) as exc:
        print(f"sendmail: cannot queue message: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        size = _stream(writer, head, stdin, ended, dot_ends, cfg.message_size_limit)
        if size > cfg.message_size_limit:
            writer.abort()
            print(f"sendmail: message size exceeds limit of {cfg.message_size_limit} bytes", file=sys.stderr)
            return EX_USAGE
        writer.commit()
    except (SpoolError, OSError) as exc:
        writer.abort()
        print(f"sendmail: cannot queue message: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except BaseException:
        writer.abort()          # interrupted (^C, SIGPIPE): leave no .tmp- file for pickup
        raise
    from mta_lite.commands.mailq import ring_qmgr
    from mta_lite.queue.doorbell import NEW_MAIL
    ring_qmgr(spool, NEW_MAIL)     # the message is safe already; a missed ring only delays it
    return EX_OK


def _stream(writer, head: bytes, stdin, ended: bool, dot_ends: bool, limit: int) -> int:
    writer.write(head)
    size, last = len(head), head
    while not ended:
        line = stdin.readline(READ_CHUNK_BYTES)
        if not line or (dot_ends and line.rstrip(b"\r\n") == b"."):
            break
        data = _crlf(line) if line.endswith(b"\n") else line.replace(b"\r", b"")
        size += len(data)
        if size <= limit:
            writer.write(data)
            last = data
    if last and not last.endswith(b"\r\n"):
        writer.write(b"\r\n")
    return size
