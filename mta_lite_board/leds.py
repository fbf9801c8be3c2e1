"""leds — drive the three status LEDs (power, mail, alert) from the relay's status file.

StatusLeds owns three gpiozero LEDs and applies a board.patterns.LedState to them; an LED
is touched only when its pattern changes, so a blink keeps its rhythm across polls.
run_leds() polls a snapshot reader (the daemon passes `lambda: read_status(spool_dir)`),
maps it with pattern_for() (with the board's clock check: `ntp_alert`, board.clock.read_alert)
and applies it, until cancelled. serve_leds() is the daemon's
one call: open the LEDs, run them, close them; without GPIO it logs one line and returns.

Guarantees: a reader that raises, or a garbled status file, shows "relay not running"
(power blinking slowly); an LED that fails to switch is logged when the failure starts and
when it ends, not on every poll; cancellation turns every LED off and then propagates.
StatusLeds.open() returns None (one log line) where there is no GPIO, so the board daemon
runs on without LEDs.
Must never: raise out of run_leds() except CancelledError, block the event loop on a pin
(blinking runs in gpiozero's own thread), write to the spool, or take the relay down:
mta_lite never imports board, and mail flows with or without LEDs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Callable

from gpiozero import LED
from gpiozero.exc import PinFactoryFallback

from mta_lite.status import StatusSnapshot

from mta_lite_board.patterns import DARK, LED_NAMES, Blink, LedState, On, Pattern, pattern_for

log = logging.getLogger("mta_lite_board.leds")

# BCM numbers on the 40-pin header: GPIO17 (pin 11), GPIO27 (pin 13), GPIO22 (pin 15) sit
# next to each other with a ground at pin 9 and have no second use on a relay box (no SPI,
# I2C or UART), so one 4-wire lead carries all three LEDs.
POWER_PIN = 17
MAIL_PIN = 27
ALERT_PIN = 22
# Once a second: the status file is rewritten every few seconds, and a user who fixes a
# password sees the red LED go out without a noticeable wait. A poll costs a file read and
# five directory listings.
POLL_INTERVAL_S = 1.0

SnapshotReader = Callable[[], StatusSnapshot]
AlertReader = Callable[[], bool]


def _no_alert() -> bool:
    return False


class StatusLeds:
    """The power, mail and alert LEDs; a context manager that leaves them dark and released."""

    def __init__(self, power_pin: int = POWER_PIN, mail_pin: int = MAIL_PIN, alert_pin: int = ALERT_PIN,
                 *, pin_factory=None) -> None:
        self._leds: dict[str, LED] = {}
        try:
            for name, pin in zip(LED_NAMES, (power_pin, mail_pin, alert_pin)):
                self._leds[name] = LED(pin, pin_factory=pin_factory)
        except BaseException:
            self.close()            # release the pins already claimed before passing it on
            raise
        # None: not yet set by us; the first apply() sets every LED.
        self._shown: dict[str, Pattern | None] = dict.fromkeys(LED_NAMES)

    @classmethod
    def open(cls, power_pin: int = POWER_PIN, mail_pin: int = MAIL_PIN, alert_pin: int = ALERT_PIN,
             *, pin_factory=None) -> StatusLeds | None:
        """StatusLeds, or None with one log line where the pins cannot be had (not a Pi, no
        /dev/gpiochip access, a pin in use or invalid)."""
        try:
            with warnings.catch_warnings():
                # gpiozero warns once per pin library it tries; the one line below says it all.
                warnings.simplefilter("ignore", PinFactoryFallback)
                return cls(power_pin, mail_pin, alert_pin, pin_factory=pin_factory)
        # Pin libraries raise their own types (gpiozero's errors, OSError, lgpio.error derives
        # from Exception only); whichever it is, the board runs on without LEDs.
        except Exception as exc:
            log.warning("status LEDs disabled: %s: %s", type(exc).__name__, exc)
            return None

    @property
    def shown(self) -> LedState:
        """The patterns last applied (Off for an LED not yet set)."""
        return LedState(**{name: pattern for name, pattern in self._shown.items() if pattern is not None})

    def apply(self, state: LedState) -> bool:
        """Show `state`; only LEDs whose pattern changed are touched. True if any changed.
        After close() nothing is touched."""
        if not self._leds:
            return False
        changed = False
        for name in LED_NAMES:
            pattern = getattr(state, name)
            if pattern == self._shown[name]:
                continue
            # Forget first: if switching fails, the next apply() tries this LED again.
            self._shown[name] = None
            _show(self._leds[name], pattern)
            self._shown[name] = pattern
            changed = True
        return changed

    def off(self) -> None:
        self.apply(DARK)

    def close(self) -> None:
        """Every LED off and its pin released; idempotent, never raises (failures are logged)."""
        leds, self._leds = list(self._leds.values()), {}
        self._shown = dict.fromkeys(LED_NAMES)
        for led in leds:
            try:
                _release(led)
            # One failing pin must not keep the others claimed or lit.
            except Exception as exc:
                log.warning("releasing an LED failed: %s: %s", type(exc).__name__, exc)

    def __enter__(self) -> StatusLeds:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _release(led: LED) -> None:
    try:
        led.off()           # stops a blink thread and drives the pin low
    finally:
        led.close()         # a released pin is an input: it would keep its last level


def _show(led: LED, pattern: Pattern) -> None:
    if isinstance(pattern, Blink):
        led.blink(on_time=pattern.on_s, off_time=pattern.off_s, background=True)
    elif isinstance(pattern, On):
        led.on()
    else:
        led.off()


class _Trouble:
    """Logs a recurring failure when it starts or changes and when it ends, not every poll."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last = ""

    def failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self.last:
            log.warning("%s failed: %s", self.what, text)
        self.last = text

    def ok(self) -> None:
        if self.last:
            log.info("%s works again", self.what)
        self.last = ""


def read_pattern(read_snapshot: SnapshotReader, clock: Callable[[], float] = time.time,
                 trouble: _Trouble | None = None, ntp_alert: AlertReader = _no_alert) -> LedState:
    """The LED state for the current snapshot; "relay not running" if it cannot be read."""
    trouble = trouble or _Trouble("reading the relay status")
    try:
        snapshot = read_snapshot()
    # Whatever the reader raises (a torn or garbled status file, a permission error), the
    # only honest thing to show is that the relay's state is unknown: not running.
    except Exception as exc:
        trouble.failed(exc)
        snapshot = StatusSnapshot()
    else:
        trouble.ok()
    return pattern_for(snapshot, clock(), ntp_alert())


def update_leds(leds: StatusLeds, read_snapshot: SnapshotReader, clock: Callable[[], float] = time.time,
                troubles: tuple[_Trouble, _Trouble] | None = None, ntp_alert: AlertReader = _no_alert) -> LedState:
    """One poll: read the status, show its pattern; returns the state shown (or meant)."""
    reading, switching = troubles or (_Trouble("reading the relay status"), _Trouble("switching the LEDs"))
    state = read_pattern(read_snapshot, clock, reading, ntp_alert)
    try:
        leds.apply(state)
    # A pin that stops working (a pin library error of any type) must not end the poll loop:
    # the next poll tries again, and the relay never notices.
    except Exception as exc:
        switching.failed(exc)
    else:
        switching.ok()
    return state


async def run_leds(leds: StatusLeds, read_snapshot: SnapshotReader, interval_s: float = POLL_INTERVAL_S,
                   clock: Callable[[], float] = time.time, ntp_alert: AlertReader = _no_alert) -> None:
    """Poll and show the relay's status every interval_s until cancelled; then all LEDs off."""
    troubles = (_Trouble("reading the relay status"), _Trouble("switching the LEDs"))
    try:
        while True:
            update_leds(leds, read_snapshot, clock, troubles, ntp_alert)
            await asyncio.sleep(interval_s)
    finally:
        _all_off(leds)


def _all_off(leds: StatusLeds) -> None:
    try:
        leds.off()
    # Shutting down: a failing pin is logged, and the cancellation goes on.
    except Exception as exc:
        log.warning("turning the LEDs off failed: %s: %s", type(exc).__name__, exc)


async def serve_leds(read_snapshot: SnapshotReader, *, power_pin: int = POWER_PIN, mail_pin: int = MAIL_PIN,
                     alert_pin: int = ALERT_PIN, pin_factory=None,
                     interval_s: float = POLL_INTERVAL_S, ntp_alert: AlertReader = _no_alert) -> None:
    """The board daemon's task: open the LEDs and run them until cancelled, then release the
    pins. Without GPIO it returns at once (StatusLeds.open() has logged why)."""
    leds = StatusLeds.open(power_pin, mail_pin, alert_pin, pin_factory=pin_factory)
    if leds is None:
        return
    with leds:
        await run_leds(leds, read_snapshot, interval_s, ntp_alert=ntp_alert)
