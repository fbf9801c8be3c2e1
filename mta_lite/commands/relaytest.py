"""relaytest — `mta-lite relay test NAME`: can this relay account log in? Checked without sending mail.

Runs the smarthost client's own connection set-up (SmarthostPool.check_route: the OAuth2
token if the account uses one, DNS, TCP, greeting, EHLO, TLS with a verified certificate, AUTH) and prints one line per step; the
step that failed gets the reason in plain words and what to change, e.g.
`TLS: certificate verify failed: self-signed certificate — set ca_file or fix the server`.
Exit status 0 when every step passed, 69 (EX_UNAVAILABLE) otherwise.
A relay whose certificate is checked (tls = starttls or implicit) is not tried while the
system clock is not set, by the queue manager's own rule and record (qmgr/clock.py,
spool/state/clock.json): the test says so, with the clock's reading and the floor it is
under, instead of reporting the certificate failure that a clock at 1970 would cause.
SECURITY: talks to the configured smarthost only; the password goes to it inside verified
TLS as in a real delivery (S3).
Must never: print the password or an AUTH payload (replies are cleaned and masked by the
client); send MAIL FROM; write the clock record (it is the queue manager's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from mta_lite.config.schema import Config, Relay, Route, route_of
from mta_lite.qmgr import clock
from mta_lite.reply import Reply
from mta_lite.smarthost.oauth.store import store_for
from mta_lite.smarthost.oauth.tokens import TokenManager
from mta_lite.smarthost.pool import SmarthostPool

EX_OK, EX_USAGE, EX_UNAVAILABLE = 0, 64, 69
# A person is waiting at the terminal: a smarthost that has not answered a step in this
# long is as broken for them as one that never answers (deliveries keep relay.timeout).
CHECK_STEP_TIMEOUT_S = 20.0


# What a failed step means and what to change: (step, words its reply contains, "" for any,
# the hint: {text} is the reply's text, {user} the login). The first that fits is used.
HINTS = (
    ("token", "unreachable", "{text} — check token_url, ca_file, the network and any proxy (https_proxy)"),
    ("token", "no refresh token", "{text}"),
    ("token", "", "{text} — check client_id, client_secret and scope, or log in again with `mta-lite oauth login`"),
    ("AUTH", "token refused", "{text} — check that {user} may send with this app (Microsoft: SMTP.Send or "
                              "SMTP.SendAsApp and SMTP AUTH enabled for the mailbox; Google: the account that logged in)"),
    ("TLS", "does not offer STARTTLS", '{text} — use tls = "implicit" for port 465, or a port that offers STARTTLS'),
    ("TLS", "cannot load CA file", "{text} — fix ca_file"),
    ("TLS", "", '{text} — check tls ("starttls" for port 587, "implicit" for 465) and port'),
    ("DNS", "", "{text} — check host"),
    ("TCP", "", "{text} — check host, port and any firewall in between"),
    ("AUTH", "without TLS", '{text} — set tls = "starttls" or "implicit"'),
    ("AUTH", "authentication failed", "login refused for {user}: {text} — check username and password"),
    ("AUTH", "", "{text}"),
)


def advice(step: str, reply: Reply, route: Route) -> str:
    """What the failure means and what to change, for the person running the test."""
    text = reply.text
    if step == "TLS" and "certificate not verified" in text:
        reason = text.rsplit(": ", 1)[-1]
        fix = "set host to a name the certificate is for" if "mismatch" in reason.lower() else \
            "set ca_file or fix the server"
        return f"certificate verify failed: {reason} — {fix}"
    for hint_step, words, hint in HINTS:
        if step == hint_step and words in text:
            return hint.format(text=text, user=route.username)
    return f"{reply} — the smarthost does not let us in"


async def check_route(route: Route, helo_name: str, out, tokens: TokenManager | None = None) -> bool:
    """Run the checks for one route, writing a line per step to `out`; True if all passed."""
    relay = dataclasses.replace(route.relay, timeout_s=min(route.relay.timeout_s, CHECK_STEP_TIMEOUT_S))
    route = dataclasses.replace(route, relay=relay)
    pool = SmarthostPool(helo_name=helo_name, tokens=tokens)
    try:
        failed = await pool.check_route(route, lambda step, what: out(f"{step}: ok, {what}"))
    finally:
        await pool.close()
    if failed is not None:
        out(f"{failed.step}: {advice(failed.step, failed.reply, route)}")
        out(f"relay {relay.name}: FAILED at {failed.step}")
        return False
    if not route.username:
        out("AUTH: skipped, no username configured for this relay")
    out(f"relay {relay.name}: ok, {relay.host}:{relay.port} would take mail"
        + (f" as {route.username}" if route.username else ""))
    return True


def clock_problem(relay: Relay, spool_dir: str, now: float) -> str:
    """Why `relay`'s certificate cannot be checked at `now` ("" if it can): the queue
    manager's rule (clock.observe) on its record, so the test and deliveries agree."""
    if not clock.needs_clock(relay.tls):
        return ""
    record = clock.read_record(clock.clock_path(spool_dir))
    if clock.observe(record, now).state == clock.OK:
        return ""
    return clock.not_set_reason(record, now)


def relay_test(cfg: Config, name: str, out=print) -> int:
    """`mta-lite relay test NAME`: the exit status."""
    relay = cfg.relays.get(name)
    if relay is None:
        out(f"mta-lite: no relay named {name!r}; configured: {', '.join(sorted(cfg.relays))}")
        return EX_USAGE
    problem = clock_problem(relay, cfg.spool_dir, time.time())
    if problem:
        out(f"clock: {problem} — the smarthost's certificate cannot be checked until the clock is set "
            "(by NTP: check the network and the time servers); no connection was made")
        out(f"relay {relay.name}: FAILED at clock; mail for it waits until the clock is set")
        return EX_UNAVAILABLE
    # The relay's own token store: a refresh token rotated here must reach the queue manager.
    tokens = TokenManager(store_for(cfg.spool_dir, cfg.path))
    ok = asyncio.run(check_route(route_of(cfg, relay, relay), cfg.hostname, out, tokens))
    return EX_OK if ok else EX_UNAVAILABLE
