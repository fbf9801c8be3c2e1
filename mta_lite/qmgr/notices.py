"""notices — the queue manager's non-delivery notices: whom, how many, and into the queue (G6).

    load_template()   the owner's bounce_template, else the packaged templates/bounce.txt,
                      else a minimal text: a broken template never stops a notice
    Notices.send()    the DSN for the recipients one delivery bounced: to the sender, to the
                      postmaster (a notice about a notice), or to nobody (bounce.choose_notice);
                      at most queue.bounces_per_hour; written into incoming/ like any mail

Guarantees: send() returns only once the notice is durably in the queue (spool.begin/commit),
so the caller can remove the failed message or mark its recipients done after it: a crash
may repeat a notice, never lose one. The returned headers are read from the queue file, at
most bounce.MAX_RETURNED_HEADER_BYTES, never the body.
Must never: send a notice about a notice to its sender (bounce.choose_notice decides), or
hold more than the returned headers in memory.
"""

from __future__ import annotations

import logging
import os
import time

from mta_lite import maillog
from mta_lite.config.schema import Config
from mta_lite.envelope import Envelope
from mta_lite.queue import QueueEntry, Spool
from mta_lite.qmgr import bounce
from mta_lite.qmgr.ratelimit import SlidingWindowLimit

log = logging.getLogger("mta_lite.qmgr")

BOUNCE_WINDOW_S = 3600.0          # queue.bounces_per_hour counts over a sliding hour
DEFAULT_TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "templates", "bounce.txt")
FALLBACK_TEMPLATE = ("This is the mail system at host $hostname.\n\n"
                     "Your message could not be delivered to:\n\n$recipients\n")


def load_template(cfg: Config) -> str:
    """The owner's bounce_template, else the packaged templates/bounce.txt."""
    if cfg.bounce_template:
        try:
            with open(cfg.bounce_template, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("bounce_template %s unusable, using the default: %s", cfg.bounce_template, exc)
    try:
        # A plain path, not importlib.resources: that imports lazily, which fails once the
        # process has dropped to a user who cannot read the interpreter's own directory.
        with open(DEFAULT_TEMPLATE_PATH, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("default bounce template unusable, using a minimal one: %s", exc)
        return FALLBACK_TEMPLATE


class Notices:
    """Queues the DSNs of one queue manager; `template` fixed by the caller (tests) or None
    for load_template(), read again on every reconfigure()."""

    def __init__(self, cfg: Config, spool: Spool, *, clock=time.time, on_new_mail,
                 template: str | None = None) -> None:
        self.cfg, self.spool, self.clock = cfg, spool, clock
        self.on_new_mail = on_new_mail          # (queue_id) -> None, a DSN was queued
        self._fixed_template = template
        self.template = load_template(cfg) if template is None else template
        self.limit = SlidingWindowLimit(cfg.queue.bounces_per_hour, BOUNCE_WINDOW_S)
        self.stats = {"dsn_created": 0, "dsn_suppressed": 0}

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limit.limit = cfg.queue.bounces_per_hour
        if self._fixed_template is None:
            self.template = load_template(cfg)

    def send(self, entry: QueueEntry, failed: list[bounce.FailedRecipient], where: str) -> None:
        """The notice for `failed`, recipients of `entry` (now in `where`/), if one is due."""
        if not failed:
            return
        queue_id = entry.queue_id
        notice = bounce.choose_notice(entry.sender, entry.is_bounce, entry.recipients,
                                      self.cfg.admin_address)
        if notice.kind == bounce.NOTICE_NONE:
            self.stats["dsn_suppressed"] += 1
            maillog.bounce_suppressed(queue_id, notice.why)
            return
        if not self.limit.allow(self.clock()):
            # Trade-off: past the cap the notice is dropped, not delayed; the message itself
            # is still settled (removed or deferred) as if the notice had been queued. A cap
            # that delayed notices would keep failed mail in the queue during a bounce storm.
            self.stats["dsn_suppressed"] += 1
            maillog.bounce_suppressed(queue_id, f"bounce rate limit exceeded "
                                      f"({self.cfg.queue.bounces_per_hour} per hour)")
            return
        dsn_id = self._queue_dsn(entry, failed, notice, where)
        self.stats["dsn_created"] += 1
        if notice.kind == bounce.NOTICE_POSTMASTER:
            maillog.double_bounce_created(queue_id, dsn_id)
        else:
            maillog.bounce_created(queue_id, dsn_id)
        self.on_new_mail(dsn_id)

    def _queue_dsn(self, entry: QueueEntry, failed, notice: bounce.Notice, where: str) -> str:
        now = self.clock()
        req = bounce.DsnRequest(
            hostname=self.cfg.hostname, queue_id=entry.queue_id, sender=entry.sender, to=notice.to,
            arrival=entry.arrival, now=now, failed=tuple(failed), kind=notice.kind,
            admin_address=self.cfg.admin_address, note=_note(notice, entry.queue_id))
        content = bounce.build_dsn(req, self._head_of(entry.queue_id, where), self.template)
        envelope = Envelope(sender="", recipients=[notice.to], client_helo=self.cfg.hostname,
                            smtputf8=not notice.to.isascii(),
                            body="7BIT" if content.isascii() else "8BITMIME")
        writer = self.spool.begin(envelope, is_bounce=True, now=now)
        writer.write(content)
        return writer.commit()

    def _head_of(self, queue_id: str, where: str) -> bytes:
        """The first bytes of the returned message: enough for its headers, never its whole body."""
        try:
            entry = self.spool.read(where, queue_id, verify=False)
            with open(entry.path, "rb") as handle:
                handle.seek(entry.content_offset)
                return handle.read(min(entry.size, bounce.MAX_RETURNED_HEADER_BYTES + 4))
        except OSError as exc:
            # Moved again meanwhile: a notice without the headers beats no notice.
            log.warning("%s: returned headers unavailable: %s", queue_id, exc)
            return b""


def _note(notice: bounce.Notice, queue_id: str) -> str:
    if notice.kind == bounce.NOTICE_POSTMASTER:
        return (f"Postmaster notice: the delivery status notification {queue_id} could not be "
                f"delivered to its recipient; it is returned to you, the postmaster, instead.")
    if notice.why:
        return f"This notice goes to the postmaster because of an {notice.why}."
    return ""
