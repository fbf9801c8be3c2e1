"""patterns — what the three status LEDs show for a relay status snapshot: pure, no pins.

pattern_for(snapshot, now, ntp_alert) maps one mta_lite.status.StatusSnapshot (as read_status()
returns it), and the board's own clock check (board.clock: a large NTP offset, or no NTP
answer for long), to a LedState: one pattern per LED, each Off(), On() or Blink(on_s, off_s).

    LED            pattern            meaning
    power (green)  on                 the relay is running
                   slow blink         the relay is not running (status stale, its pid gone,
                                      or the status file unreadable)
                   off                the board daemon is stopped (set by leds.py, never here)
    mail (amber)   off                no mail in the box
                   on                 mail waiting in the box (incoming, active, deferred, hold)
                   fast blink         a damaged queue file was set aside in corrupt/: look at it
                                      (`mta-lite queue list`); wins over "on"
    alert (red)    off                every smarthost account is fine (or the relay is not
                                      running: then its accounts' state is unknown)
                   fast blink         a part of the relay cannot start because of its
                                      configuration (config error: `mta-lite status` names the
                                      file and key); shown even while the relay is down
                   on                 an account's login was refused (535, auth_failed): fix
                                      its username or password (S5)
                   slow blink         a smarthost has not answered for 10 minutes (unreachable)
                   short flash        an account is throttled by its own sending budget
                   wink (on, short    the clock is wrong: the relay finds it not set (mail
                   dark gap)          for TLS smarthosts waits), or NTP servers say it is
                                      off by more than board.clock.OFFSET_ALERT_S (or none
                                      answered for long); `mta-lite status` and the status
                                      page say which
    Priority on the alert LED: config error, then clock not set (it holds back every TLS
    delivery and would show as nothing else), then over all accounts auth_failed, then
    unreachable, then throttled, then a large NTP offset (mail still flows). A large NTP
    offset shows even while the relay is not running: the board measures it itself.

Guarantees: pattern_for is total: any snapshot, even one built from a garbled status file
(wrong types anywhere), gives a LedState and never raises. The snapshot holds counters and
states only, so nothing here can show a secret.
Must never: touch a pin, read a file or the clock (`now` is passed in), or learn the relay's
state other than through the snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mta_lite.status import STALE_AFTER_S, StatusSnapshot

# One second on, one off: calm, reads as "waiting" and is visible from across a room.
SLOW_BLINK_ON_S = 1.0
SLOW_BLINK_OFF_S = 1.0
# Five changes a second: clearly different from the slow blink, still well under the rate
# (about 3 Hz and up) that some people find uncomfortable to look at for long.
FAST_BLINK_ON_S = 0.2
FAST_BLINK_OFF_S = 0.2
# A short flash every two seconds: "note this" without the urgency of the other two.
FLASH_ON_S = 0.1
FLASH_OFF_S = 1.9
# The clock: mostly lit with a short dark gap every two seconds, the inverse of the flash,
# so it is told apart from steady on (a refused login) from across a room.
WINK_ON_S = 1.8
WINK_OFF_S = 0.2

# Relay account states as mta_lite.qmgr.accounts writes them into the status file. They are
# spelled out here rather than imported: board/ reads mta_lite.status only.
STATE_AUTH_FAILED = "auth_failed"
STATE_UNREACHABLE = "unreachable"
STATE_THROTTLED = "throttled"
# The master's state for a child that exits with a config error (mta_lite.process.spawn).
STATE_CONFIG_ERROR = "config_error"
# The queue manager's clock state in the status file's `clock` entry (mta_lite.qmgr.clock).
CLOCK_NOT_SET = "not_set"
# Queue directories whose messages are still to go out (hold included: they are in the box).
WAITING_DIRS = ("incoming", "active", "deferred", "hold")
CORRUPT_DIR = "corrupt"


@dataclass(frozen=True)
class Off:
    """The LED is dark."""


@dataclass(frozen=True)
class On:
    """The LED is lit steadily."""


@dataclass(frozen=True)
class Blink:
    """The LED is lit for on_s seconds, dark for off_s seconds, over and over."""
    on_s: float
    off_s: float


Pattern = Off | On | Blink

OFF = Off()
ON = On()
SLOW_BLINK = Blink(SLOW_BLINK_ON_S, SLOW_BLINK_OFF_S)
FAST_BLINK = Blink(FAST_BLINK_ON_S, FAST_BLINK_OFF_S)
FLASH = Blink(FLASH_ON_S, FLASH_OFF_S)
WINK = Blink(WINK_ON_S, WINK_OFF_S)

# Alert patterns in priority order: the first state any account is in decides.
ALERT_BY_STATE = ((STATE_AUTH_FAILED, ON), (STATE_UNREACHABLE, SLOW_BLINK), (STATE_THROTTLED, FLASH))


@dataclass(frozen=True)
class LedState:
    """What each of the three LEDs shows."""
    power: Pattern = OFF
    mail: Pattern = OFF
    alert: Pattern = OFF


# Every LED dark: the board daemon is stopped.
DARK = LedState()
LED_NAMES = ("power", "mail", "alert")


def pattern_for(snapshot: StatusSnapshot, now: float, ntp_alert: bool = False) -> LedState:
    """The LEDs for this snapshot at time `now` (seconds since the epoch); `ntp_alert`: the
    board's clock check raised its alert."""
    running = relay_running(snapshot, now)
    if config_error(snapshot):
        alert = FAST_BLINK
    elif running and clock_not_set(snapshot):
        alert = WINK
    else:
        alert = alert_pattern(snapshot) if running else OFF
        alert = WINK if alert == OFF and ntp_alert is True else alert
    return LedState(power=ON if running else SLOW_BLINK, mail=mail_pattern(snapshot), alert=alert)


def config_error(snapshot: StatusSnapshot) -> bool:
    """The master reports a child that cannot start because of its configuration."""
    processes = _mapping(getattr(snapshot, "processes", None))
    return any(_mapping(entry).get("state") == STATE_CONFIG_ERROR for entry in processes.values())


def clock_not_set(snapshot: StatusSnapshot) -> bool:
    """The queue manager finds the system clock not set (earlier than its trusted floor)."""
    return _mapping(getattr(snapshot, "clock", None)).get("state") == CLOCK_NOT_SET


def relay_running(snapshot: StatusSnapshot, now: float) -> bool:
    """read_status() found the daemon alive and its snapshot is still fresh at `now`: a
    snapshot read a while ago goes stale here too, as it would on disk. A snapshot from the
    future (the clock stepped back) counts as fresh, as it does for read_status()."""
    written = _number(getattr(snapshot, "written", 0))
    return getattr(snapshot, "running", False) is True and now - written < STALE_AFTER_S


def mail_pattern(snapshot: StatusSnapshot) -> Pattern:
    """Fast blink for corrupt queue files, on while mail is waiting, else off. The counts are
    taken live from the spool by read_status(), so they are right even while the relay is down."""
    queue = _mapping(getattr(snapshot, "queue", None))
    if _count(queue.get(CORRUPT_DIR)) > 0:
        return FAST_BLINK
    if any(_count(queue.get(name)) > 0 for name in WAITING_DIRS):
        return ON
    return OFF


def alert_pattern(snapshot: StatusSnapshot) -> Pattern:
    """The pattern of the most urgent state any account is in; off when all are fine."""
    relays = _mapping(getattr(snapshot, "relays", None))
    states = [_mapping(relay).get("state") for relay in relays.values()]
    for state, pattern in ALERT_BY_STATE:
        if state in states:
            return pattern
    return OFF


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value) -> float:
    """A finite float, or 0.0 for anything else (a status file is not trusted for types)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0


def _count(value) -> int:
    return int(_number(value))
