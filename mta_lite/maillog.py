"""maillog — one Postfix-style log line per mail event, and the logging set-up.

Lines look like Postfix's maillog so that admins' habits and tools keep working:

    mta-lite/qmgr[812]: 66116D47A6264320: from=<scanner@example.com>, size=2048, nrcpt=1 (queue active)
    mta-lite/smtp[812]: 66116D47A6264320: to=<bob@example.org>, relay=smtp.isp.example[192.0.2.1]:587,
        delay=1.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4Xyz)

Guarantees: every event line starts with the queue ID (or NOQUEUE). The SecretFilter
installed by setup_logging() replaces every configured secret, and its base64 forms, with
"********" in every record, whatever logger wrote it, tracebacks included.
Must never: format a Secret's revealed value into a message.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import time

from mta_lite.config.schema import Config
from mta_lite.config.values import mask

smtp_log = logging.getLogger("mta_lite.smtp")
qmgr_log = logging.getLogger("mta_lite.qmgr")
bounce_log = logging.getLogger("mta_lite.bounce")
# syslog's time stamp, as Postfix writes it to maillog: "Nov 25 10:00:00".
STAMP_FORMAT = "%b %d %H:%M:%S"


def activated(queue_id: str, sender: str, size: int, nrcpt: int) -> None:
    """The queue manager took a new message from incoming/ into active/: Postfix's line."""
    qmgr_log.info("%s: from=<%s>, size=%d, nrcpt=%d (queue active)", queue_id, sender, size, nrcpt)


def delivery(queue_id: str, recipient: str, relay: str, delay: float, dsn: str,
             status: str, reply: str) -> None:
    """status is sent, deferred or bounced, exactly as Postfix writes it."""
    smtp_log.info("%s: to=<%s>, relay=%s, delay=%s, dsn=%s, status=%s (%s)",
                  queue_id, recipient, relay, format_delay(delay), dsn, status, reply)


def format_delay(seconds: float) -> str:
    """Postfix's delay=: two significant digits below 10 s ("0.32", "1.2"), whole seconds
    above ("14", "432000"); "%.2g" alone would print a five-day delay as "4.3e+05"."""
    seconds = max(0.0, seconds)
    return "%.2g" % seconds if seconds < 10 else "%d" % round(seconds)


def removed(queue_id: str) -> None:
    qmgr_log.info("%s: removed", queue_id)


def expired(queue_id: str, sender: str) -> None:
    qmgr_log.info("%s: from=<%s>, status=expired, returned to sender", queue_id, sender)


def sender_rewritten(queue_id: str, sender: str, new_sender: str, rule: str) -> None:
    """[rewrite] applies at this delivery: envelope sender and From: leave as `new_sender`."""
    qmgr_log.info("%s: sender rewritten: from=<%s> to=<%s> (%s)", queue_id, sender, new_sender, rule)


def bounce_created(queue_id: str, dsn_id: str) -> None:
    bounce_log.info("%s: sender non-delivery notification: %s", queue_id, dsn_id)


def double_bounce_created(queue_id: str, dsn_id: str) -> None:
    """A non-delivery notification itself failed; the postmaster gets a notice (G6)."""
    bounce_log.info("%s: postmaster non-delivery notification: %s", queue_id, dsn_id)


def bounce_suppressed(queue_id: str, why: str) -> None:
    bounce_log.warning("%s: no non-delivery notification: %s", queue_id, why)


def corrupt(queue_id: str, reason: str) -> None:
    qmgr_log.error("%s: corrupt queue file moved to corrupt/: %s", queue_id, reason)


def secret_forms(secret: str, usernames: list[str]) -> set[str]:
    """The secret and every base64 form in which an AUTH exchange could carry it."""
    forms = {secret, base64.b64encode(secret.encode()).decode()}
    for user in usernames:
        plain = f"\0{user}\0{secret}".encode()
        forms.add(base64.b64encode(plain).decode())
        forms.add(base64.b64encode(user.encode() + plain).decode())
    return {form for form in forms if len(form) >= 3}


# Secrets learnt while running (OAuth access and refresh tokens), by who learnt them: each
# owner's set is replaced when its tokens change, so the list does not grow with every refresh.
_LEARNT: dict[str, frozenset[str]] = {}


def mask_also(owner: str, secrets: set[str]) -> None:
    """Mask `secrets` in every log line from now on, in place of what `owner` gave before."""
    _LEARNT[owner] = frozenset(s for s in secrets if len(s) >= 3)


def learnt_secrets() -> set[str]:
    return set().union(*_LEARNT.values()) if _LEARNT else set()


class SecretFilter(logging.Filter):
    """Masks secrets in log records at the logging boundary (STYLE: errors, rule 5)."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = sorted(secrets, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [*self.secrets, *learnt_secrets()] if _LEARNT else self.secrets
        if secrets:
            record.msg = mask(record.getMessage(), secrets)
            record.args = None
            if record.exc_info:
                record.exc_text = mask(logging.Formatter().formatException(record.exc_info), secrets)
                record.exc_info = None
        return True


class _PostfixFormatter(logging.Formatter):
    """`Nov 25 10:00:00 mta-lite/smtpd[812]: message`, the component from the logger name.
    Built by hand rather than by %-formatting a template: the time stamp is formatted once
    per second and the process ID read once per process (a measurable cost per line)."""

    def __init__(self) -> None:
        super().__init__(None, STAMP_FORMAT)
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        name = record.name
        component = name.rpartition(".")[2] if name.startswith("mta_lite") else name
        line = f"{self._stamp_of(record.created)} mta-lite/{component}[{_pid()}]: {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line

    def _stamp_of(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime(STAMP_FORMAT, self.converter(second))
            self._second = second
        return self._stamp


_PID: list[int] = []


def _pid() -> int:
    """This process's ID, read once (and again in a child after fork)."""
    if not _PID:
        _PID.append(os.getpid())
    return _PID[0]


os.register_at_fork(after_in_child=_PID.clear)


def config_secrets(cfg: Config) -> set[str]:
    found: set[str] = set()
    users = [r.username for r in cfg.relays.values()] + [s.username for s in cfg.senders]
    for holder in [*cfg.relays.values(), *cfg.senders]:
        if holder.password is not None:
            found |= secret_forms(holder.password.reveal(), [u for u in users if u])
    for provider in cfg.oauth.values():
        if provider.client_secret is not None:
            found |= secret_forms(provider.client_secret.reveal(), [])
    return found


def setup_logging(cfg: Config | None = None, level: int = logging.INFO, stream=None) -> None:
    # Our lines name no source file, thread or multiprocessing name: skip collecting them
    # (findCaller walks the stack for every record, a measurable cost per message).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False        # the formatter knows its process ID
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_PostfixFormatter())
    handler.addFilter(SecretFilter(config_secrets(cfg) if cfg else set()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiosmtplib and asyncio debug chatter could carry protocol payloads; keep them quiet.
    logging.getLogger("aiosmtplib").setLevel(logging.WARNING)


def add_secrets(cfg: Config) -> None:
    """A reloaded config's passwords join those every SecretFilter masks (the old ones stay:
    a session opened with them may still be logging)."""
    found = config_secrets(cfg)
    for handler in logging.getLogger().handlers:
        for item in handler.filters:
            if isinstance(item, SecretFilter):
                item.secrets = sorted(set(item.secrets) | found, key=len, reverse=True)
