"""page.render — the status page as one HTML document, from page.data's dict (pure).

The page reloads itself every REFRESH_S seconds with a <meta> refresh: no script. Its only
style is STYLE, allowed by the Content-Security-Policy through its hash (server.py); the
plots are inline SVG (svg.py). Every value from the data goes through html.escape() on its
way in (`_e`), whatever it is: a sender `<script>` or a smarthost reply with HTML in it
shows as text.
Guarantees: total on any dict data.build() returns; no form, link to an action, or
external asset: the page reads, it never acts.
Must never: put a value into the document other than through _e(), or into an attribute.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time

from mta_lite_board.page import svg

REFRESH_S = 30
STYLE = """
body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{text-align:left;padding:.2rem .4rem;
border-bottom:1px solid #eee;vertical-align:top}th{background:#f4f4f4}
.ok{color:#05704f}.bad{color:#b00020;font-weight:bold}.warn{color:#8a5a00;font-weight:bold}
.muted{color:#666}.reply{font-family:monospace;word-break:break-word}.legend{font-size:.85rem}
.key{margin-right:1rem;white-space:nowrap}
"""
# The hash of STYLE for the Content-Security-Policy: only this exact style block may apply.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
STATE_WORDS = {"ok": "ok", "deferring": "ok, some mail deferred", "throttled": "throttled",
               "auth_failed": "login refused", "unreachable": "unreachable"}
STATE_CLASS = {"ok": "ok", "deferring": "warn", "throttled": "warn", "auth_failed": "bad", "unreachable": "bad"}


def _e(value) -> str:
    """Every value's one way into the document."""
    return html.escape("" if value is None else str(value), quote=True)


def when(epoch) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)) if epoch else "unknown"
    except (OverflowError, ValueError, OSError):
        return "unknown"


def age(seconds) -> str:
    """`3 d 4 h`, `2 h 5 min`, `40 s`."""
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    days, hours, minutes = seconds // 86400, seconds % 86400 // 3600, seconds % 3600 // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min" if minutes else f"{seconds} s"


def size(count) -> str:
    if count is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def page(data: dict) -> str:
    """The whole document."""
    body = [_header(data), _leds(data), _mail(data), _accounts(data), _history(data), _recent(data),
            _receiving(data), _box(data)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">"
            f"<title>mta-lite status</title><style>{STYLE}</style></head><body>"
            + "".join(body) + "<p class=\"muted\">Read-only. The same data for scripts: /status.json</p>"
            "</body></html>\n")


def _header(data: dict) -> str:
    relay = data["relay"]
    if relay["running"]:
        state = f'<span class="ok">running</span> (up {_e(age(relay["up_s"]))})'
    else:
        state = '<span class="bad">not running</span>'
    problems = "".join(f'<p class="bad">{_e(p["process"])}: {_e(p["state"].replace("_", " "))} since '
                       f'{_e(when(p["since"]))}: {_e(p["reason"])}</p>' for p in relay["problems"])
    return (f"<h1>mta-lite relay: {state}</h1>"
            f'<p class="muted">as of {_e(when(data["generated"]))}; this page reloads every {REFRESH_S} s</p>'
            + problems)


def _leds(data: dict) -> str:
    rows = "".join(f"<tr><td>{_e(name)}</td><td>{_e(led['pattern'])}</td><td>{_e(led['meaning'])}</td></tr>"
                   for name, led in data["leds"].items())
    return f"<h2>The lights</h2><table><tr><th>LED</th><th>shows</th><th>meaning</th></tr>{rows}</table>"


def _mail(data: dict) -> str:
    mail = data["mail"]
    if not mail["waiting"]:
        line = "<p>No mail waiting.</p>"
    else:
        line = (f'<p class="warn">{_e(mail["waiting"])} message(s) waiting; the oldest arrived '
                f'{_e(age(mail["oldest_age_s"]))} ago.</p>')
    counts = ", ".join(f"{_e(name)} {_e(mail[name])}" for name in ("incoming", "active", "deferred", "hold", "corrupt"))
    corrupt = ('<p class="bad">Damaged queue files were set aside in corrupt/.</p>' if mail["corrupt"] else "")
    return f"<h2>Mail in the box</h2>{line}<p class=\"muted\">{counts}</p>{corrupt}"


def _account_state(account: dict) -> str:
    state = account["state"]
    words = STATE_WORDS.get(state, state)
    if account["since"]:
        words += f" since {when(account['since'])}"
    if account["until"]:
        words += f" until {when(account['until'])}"
    return f'<span class="{STATE_CLASS.get(state, "muted")}">{_e(words)}</span>'


def _budget(used: int, limit: int) -> str:
    return f"{used} of {limit}" if limit else f"{used} (no limit)"


def _table(title: str, headers: tuple[str, ...], rows: str, empty: str) -> str:
    """A section: its title, then the table of `rows` (escaped <tr>s), or `empty` in words."""
    if not rows:
        return f"<h2>{title}</h2><p class=\"muted\">{empty}</p>"
    head = "".join(f"<th>{h}</th>" for h in headers)
    return f"<h2>{title}</h2><table><tr>{head}</tr>{rows}</table>"


def _accounts(data: dict) -> str:
    rows = "".join(
        f"<tr><td>{_e(a['name'])}</td><td>{_account_state(a)}</td>"
        f"<td>{_e(_budget(a['sent_last_hour'], a['max_per_hour']))}</td>"
        f"<td>{_e(_budget(a['sent_last_day'], a['max_per_day']))}</td>"
        f"<td>{_e(a['sent'])} / {_e(a['deferred'])} / {_e(a['bounced'])}</td>"
        f"<td class=\"reply\">{_e(a['last_error'])}</td></tr>" for a in data["accounts"])
    return _table("Smarthost accounts",
                  ("account", "state", "this hour", "today", "sent / deferred / bounced", "last error"),
                  rows, "No account known (the relay has not written its status).")


def _history(data: dict) -> str:
    hours, days = data["history"]["hours"], data["history"]["days"]
    return ("<h2>History</h2><p>Per hour, the last 24 hours (UTC)</p>"
            + svg.bar_chart(hours, 6, "%H:00", "mail per hour, last 24 hours")
            + "<p>Per day, the last 30 days</p>"
            + svg.bar_chart(days, 5, "%m-%d", "mail per day, last 30 days") + svg.legend())


def _recent(data: dict) -> str:
    rows = "".join(
        f"<tr><td>{_e(when(r['time']))}</td><td>{_e(r['queue_id'])}</td><td>{_e(r['sender'])}</td>"
        f"<td>{_e(r['recipient_domain'])}</td><td>{_e(r['status'])}</td>"
        f"<td class=\"reply\">{_e(r['reply'])}</td></tr>" for r in data["recent"])
    return _table("Last deliveries", ("time", "queue ID", "sender", "to domain", "status", "smarthost's reply"),
                  rows, "None since the relay started.")


def _receiving(data: dict) -> str:
    smtpd = ", ".join(f"{_e(k)} {_e(v)}" for k, v in data["smtpd"].items())
    screen = ", ".join(f"{_e(k.replace('_', ' '))} {_e(v)}" for k, v in data["postscreen"].items() if k != "stress")
    stress = data["postscreen"]["stress"]
    stress_line = (f'<p class="warn">{_e(stress)} connection(s) arrived while the listener was under stress.</p>'
                   if stress else "<p>No stress: postscreen never had to shorten its tests.</p>")
    return (f"<h2>Receiving (since smtpd started)</h2><p>smtpd: {smtpd}</p>"
            f"<p>postscreen: {screen}</p>{stress_line}")


def _box(data: dict) -> str:
    disk, clock = data["disk"], data["clock"]
    clock_words = {"ok": '<span class="ok">set</span>',
                   "not_set": '<span class="bad">not set: deliveries that need a certificate wait</span>'}
    offset = clock["ntp_offset_s"]
    ntp = "unknown" if offset is None else f"{offset:+.3f} s against {clock['ntp_server'] or 'NTP'}"
    if clock["ntp_error"]:
        ntp += f" (last check failed: {clock['ntp_error']})"
    limit = clock["ntp_alert_after_s"]
    alert = (f'<p class="bad">The clock is off by more than {_e("%g" % limit if limit is not None else "the limit")} s '
             "against NTP.</p>" if clock["ntp_alert"] else "")
    return ("<h2>The box</h2><table>"
            f"<tr><td>disk free</td><td>{_e(size(disk['free_bytes']))} of {_e(size(disk['total_bytes']))}</td></tr>"
            f"<tr><td>clock</td><td>{clock_words.get(clock['state'], 'unknown')}</td></tr>"
            f"<tr><td>NTP offset</td><td>{_e(ntp)}"
            f"{'' if not clock['ntp_checked'] else ', checked ' + _e(when(clock['ntp_checked']))}</td></tr>"
            f"<tr><td>config</td><td>{_config(data['relay'])}</td></tr>"
            f"</table>{alert}")


def _config(relay: dict) -> str:
    """`generation 4 (3f9a0c1d2e4b)`, or the digest alone when the generation is unknown."""
    if not relay["config"]:
        return "unknown"
    if relay["config_generation"] is None:
        return _e(relay["config"])
    return f"generation {_e(relay['config_generation'])} ({_e(relay['config'])})"
