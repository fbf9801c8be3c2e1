"""mta_lite_board.leds on gpiozero MockFactory pins: applying patterns, the poll loop, no GPIO at all."""

import asyncio
import json
import logging
import warnings

import pytest
from gpiozero import Device, LED
from gpiozero.exc import BadPinFactory, PinFactoryFallback
from gpiozero.pins.mock import MockFactory

from mta_lite_board.leds import ALERT_PIN, MAIL_PIN, POWER_PIN, StatusLeds, run_leds, serve_leds, update_leds
from mta_lite_board.clock import read_alert
from mta_lite_board.patterns import DARK, OFF, ON, SLOW_BLINK, WINK, Blink, LedState
from mta_lite.status import STATUS_FILE, StatusSnapshot, read_status
from tests.support.waiting import wait_until


NOW = 1_700_000_000.0
# Lit briefly, then dark for far longer than any test runs: one blink cycle is recognisable
# in the pin's history, and a restarted blink would show as a second rise.
ONE_FLASH = Blink(0.02, 600.0)


def levels(pin) -> list[bool]:
    return [change.state for change in pin.states]


def pins(factory) -> tuple:
    return factory.pin(POWER_PIN), factory.pin(MAIL_PIN), factory.pin(ALERT_PIN)


def healthy(*states: str, **queue: int) -> StatusSnapshot:
    relays = {f"r{n}:u@example.test": {"state": s} for n, s in enumerate(states)}
    return StatusSnapshot(pid=1, written=NOW - 1, running=True, queue=queue, relays=relays)


@pytest.fixture
def factory():
    return MockFactory()


@pytest.fixture
def leds(factory):
    with StatusLeds(pin_factory=factory) as leds:
        yield leds


@pytest.fixture
def no_gpio(monkeypatch):
    """gpiozero's default pin factory as on a machine without GPIO: none can be loaded."""
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "no-such-pin-factory")


def test_status_leds_apply_steady_pattern_sets_pin_states(leds, factory):
    assert leds.apply(LedState(power=ON, mail=OFF, alert=ON)) is True
    power, mail, alert = pins(factory)
    assert (power.state, mail.state, alert.state) == (True, False, True)
    assert leds.shown == LedState(power=ON, mail=OFF, alert=ON)


def test_status_leds_apply_blink_toggles_the_pin(leds, factory):
    leds.apply(LedState(alert=Blink(0.01, 0.01)))
    alert = factory.pin(ALERT_PIN)
    wait_until(lambda: len(alert.states) >= 6, 10, what="three blinks")
    history = levels(alert)[:6]
    assert history == [False, True, False, True, False, True]


def test_status_leds_same_blink_reapplied_is_not_restarted(leds, factory):
    state = LedState(power=ON, mail=ONE_FLASH)
    leds.apply(state)
    mail = factory.pin(MAIL_PIN)
    wait_until(lambda: levels(mail) == [False, True, False], 10, what="the first flash to end")
    assert leds.apply(state) is False
    assert leds.apply(LedState(power=ON, mail=ONE_FLASH, alert=ON)) is True     # another LED changes
    leds.apply(DARK)            # stops the blink thread: a restarted one would have risen again
    assert levels(mail) == [False, True, False]


def test_status_leds_changed_blink_timing_restarts_the_blink(leds, factory):
    leds.apply(LedState(mail=ONE_FLASH))
    mail = factory.pin(MAIL_PIN)
    wait_until(lambda: levels(mail) == [False, True, False], 10, what="the first flash to end")
    assert leds.apply(LedState(mail=Blink(0.02, 599.0))) is True
    wait_until(lambda: levels(mail) == [False, True, False, True, False], 10, what="the new blink's flash")


def test_status_leds_exit_turns_every_led_off_and_releases_the_pins(factory):
    with StatusLeds(pin_factory=factory) as leds:
        leds.apply(LedState(power=ON, mail=Blink(0.01, 0.01), alert=ON))
    assert [pin.state for pin in pins(factory)] == [False, False, False]
    assert leds.apply(LedState(power=ON)) is False and leds.shown == DARK       # closed: no effect
    leds.close()                                                                # idempotent
    for number in (POWER_PIN, MAIL_PIN, ALERT_PIN):
        LED(number, pin_factory=factory).close()             # free again: no GPIOPinInUse


def test_status_leds_open_without_gpio_returns_none_with_one_log_line(no_gpio, caplog):
    with caplog.at_level(logging.DEBUG):
        assert StatusLeds.open() is None
    [record] = caplog.records
    assert record.name == "mta_lite_board.leds" and "status LEDs disabled: BadPinFactory" in record.getMessage()


def test_status_leds_open_off_pi_keeps_gpiozeros_fallback_warnings_quiet(monkeypatch, caplog):
    """Off a Pi gpiozero warns once per pin library it tries before it gives up."""
    def default_pin_factory():
        warnings.warn(PinFactoryFallback("Falling back from lgpio: No module named 'lgpio'"))
        raise BadPinFactory("Unable to load any default pin factory!")
    monkeypatch.setattr(Device, "pin_factory", None)
    monkeypatch.setattr(Device, "_default_pin_factory", staticmethod(default_pin_factory))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert StatusLeds.open() is None
    assert caught == []
    assert [r.getMessage() for r in caplog.records] == [
        "status LEDs disabled: BadPinFactory: Unable to load any default pin factory!"]


def test_status_leds_open_pin_in_use_returns_none_and_frees_pins_it_claimed(factory, caplog):
    taken = LED(ALERT_PIN, pin_factory=factory)
    assert StatusLeds.open(pin_factory=factory) is None
    assert "GPIOPinInUse" in caplog.text
    taken.close()
    with StatusLeds(pin_factory=factory):                  # power and mail were given back
        pass


def test_update_leds_shows_the_readers_snapshot(leds, factory):
    state = update_leds(leds, lambda: healthy("auth_failed", deferred=1), clock=lambda: NOW)
    assert state == LedState(power=ON, mail=ON, alert=ON)
    assert [pin.state for pin in pins(factory)] == [True, True, True]


def test_update_leds_reader_raising_shows_not_running_without_raising(leds, caplog):
    def broken():
        raise PermissionError(13, "Permission denied")
    state = update_leds(leds, broken, clock=lambda: NOW)
    assert state == leds.shown == LedState(power=SLOW_BLINK, mail=OFF, alert=OFF)
    assert "reading the relay status failed: PermissionError" in caplog.text


def test_update_leds_garbled_status_file_shows_not_running(leds, tmp_path):
    """A status file with wrong types makes read_status() itself raise (TypeError)."""
    (tmp_path / "public").mkdir()
    (tmp_path / STATUS_FILE).write_text(json.dumps({"pid": "1", "written": "noon", "running": True}))
    state = update_leds(leds, lambda: read_status(str(tmp_path)), clock=lambda: NOW)
    assert state.power == SLOW_BLINK and leds.shown.power == SLOW_BLINK


def run_until(leds, reader, polls: int, clock=lambda: NOW):
    """Run run_leds until the reader was called `polls` times, then cancel it; the reader's
    calls, and the LED state after the last poll (before the cancellation)."""
    calls = []

    async def main():
        enough = asyncio.Event()

        def counting():
            calls.append(len(calls))
            if len(calls) >= polls:
                enough.set()
            return reader(len(calls) - 1)
        task = asyncio.create_task(run_leds(leds, counting, interval_s=0.001, clock=clock))
        await asyncio.wait_for(enough.wait(), 10)
        await asyncio.sleep(0)              # let the last poll's apply() run
        shown = leds.shown
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return shown
    return calls, asyncio.run(main())


def test_run_leds_follows_the_status_from_poll_to_poll(leds, factory):
    sequence = [healthy("ok"), healthy("ok", deferred=1), healthy("auth_failed", deferred=1)]
    seen = []

    def reader(n):
        snapshot = sequence[min(n, len(sequence) - 1)]
        seen.append(leds.shown)         # what the previous poll showed
        return snapshot
    calls, last = run_until(leds, reader, polls=4)
    assert seen[1:4] == [LedState(power=ON), LedState(power=ON, mail=ON), LedState(power=ON, mail=ON, alert=ON)]
    assert last == LedState(power=ON, mail=ON, alert=ON)


def test_run_leds_cancelled_turns_every_led_off(leds, factory):
    calls, last = run_until(leds, lambda n: healthy("unreachable", corrupt=1), polls=3)
    assert last.power == ON and last.alert == SLOW_BLINK
    assert [pin.state for pin in pins(factory)] == [False, False, False]
    assert leds.shown == DARK


def test_run_leds_reader_raising_shows_not_running_logs_once_and_recovers(leds, caplog):
    def reader(n):
        if n < 5:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        return healthy("ok")
    with caplog.at_level(logging.INFO, logger="mta_lite_board.leds"):
        calls, last = run_until(leds, reader, polls=7)
    assert last == LedState(power=ON)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["reading the relay status failed: ValueError: Expecting value: line 1 column 1 (char 0)",
                        "reading the relay status works again"]


def test_run_leds_reader_raising_throughout_keeps_power_blinking(leds, factory):
    def reader(n):
        raise OSError(5, "Input/output error")
    calls, last = run_until(leds, reader, polls=3)
    assert last == LedState(power=SLOW_BLINK)


class DeadPins:
    """LEDs whose pins fail on every switch, as a pin library's error would."""

    def __init__(self):
        self.applied = 0

    def apply(self, state):
        self.applied += 1
        raise OSError(19, "No such device")

    def off(self):
        raise OSError(19, "No such device")

    @property
    def shown(self):
        return DARK


def test_run_leds_failing_pins_log_once_and_keep_polling(caplog):
    dead = DeadPins()
    calls, _ = run_until(dead, lambda n: healthy("ok"), polls=5)
    assert dead.applied >= 5
    failures = [r.getMessage() for r in caplog.records if "switching the LEDs failed" in r.getMessage()]
    assert failures == ["switching the LEDs failed: OSError: [Errno 19] No such device"]
    assert "turning the LEDs off failed: OSError" in caplog.text     # at cancellation, logged


def test_serve_leds_without_gpio_returns_at_once_without_reading(no_gpio):
    reads = []
    asyncio.run(asyncio.wait_for(serve_leds(lambda: reads.append(1)), 5))
    assert reads == []


def test_serve_leds_runs_until_cancelled_then_releases_the_pins(factory):
    async def main():
        polled = asyncio.Event()

        def reader():
            polled.set()
            return healthy("throttled")
        task = asyncio.create_task(serve_leds(reader, pin_factory=factory, interval_s=0.001))
        await asyncio.wait_for(polled.wait(), 10)
        await asyncio.sleep(0)
        lit = factory.pin(POWER_PIN).state
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return lit
    assert asyncio.run(main()) is True
    assert [pin.state for pin in pins(factory)] == [False, False, False]
    for number in (POWER_PIN, MAIL_PIN, ALERT_PIN):
        LED(number, pin_factory=factory).close()


def _blinks(pin) -> None:
    """The pin goes dark and lit again: a blink, not a steady level."""
    wait_until(lambda: levels(pin).count(True) >= 2, 10, what="the alert LED to blink")


def test_update_leds_clock_not_set_winks_the_alert_led(leds, factory):
    snapshot = healthy("ok", deferred=1)
    snapshot.clock = {"state": "not_set", "trusted_floor": NOW, "since": 60.0}
    state = update_leds(leds, lambda: snapshot, clock=lambda: NOW)
    assert state == LedState(power=ON, mail=ON, alert=WINK)
    power, mail, alert = pins(factory)
    assert (power.state, mail.state) == (True, True)
    _blinks(alert)
    on, off = alert.states[1:3]                         # lit long, dark briefly
    assert off.timestamp - on.timestamp >= WINK.on_s * 0.9


def test_update_leds_large_ntp_offset_winks_the_alert_led_and_clears_when_fixed(leds, factory, tmp_path):
    report = tmp_path / "clock.json"
    report.write_text(json.dumps({"checked": NOW, "server": "127.0.0.1", "offset_s": 3600.0, "error": "",
                                  "alert": True, "alert_after_s": 2.0}))
    state = update_leds(leds, lambda: healthy("ok"), clock=lambda: NOW, ntp_alert=lambda: read_alert(str(report)))
    assert state.alert == WINK
    _blinks(factory.pin(ALERT_PIN))
    report.write_text(json.dumps({"checked": NOW, "server": "127.0.0.1", "offset_s": 0.001, "error": "",
                                  "alert": False, "alert_after_s": 2.0}))
    state = update_leds(leds, lambda: healthy("ok"), clock=lambda: NOW, ntp_alert=lambda: read_alert(str(report)))
    assert state.alert == OFF and factory.pin(ALERT_PIN).state is False


def test_update_leds_garbled_clock_report_raises_no_alert(leds, tmp_path):
    report = tmp_path / "clock.json"
    for data in ('{"alert": "yes"}', "[true]", '{"alert": tru'):
        report.write_text(data)
        state = update_leds(leds, lambda: healthy("ok"), clock=lambda: NOW, ntp_alert=lambda: read_alert(str(report)))
        assert state.alert == OFF
