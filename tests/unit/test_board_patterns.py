"""mta_lite_board.patterns: relay status snapshots, built by hand, to the three LEDs' patterns."""

import pytest

from mta_lite_board.patterns import (FAST_BLINK, FLASH, OFF, ON, SLOW_BLINK, WINK, Blink, LedState, alert_pattern,
                            mail_pattern, pattern_for)
from mta_lite.status import STALE_AFTER_S, StatusSnapshot

NOW = 1_700_000_000.0
EMPTY_QUEUE = {"incoming": 0, "active": 0, "deferred": 0, "hold": 0, "corrupt": 0}


def snapshot(*states: str, running: bool = True, written: float = NOW - 2, **queue: int) -> StatusSnapshot:
    """A fresh snapshot of a running relay with one account per state."""
    relays = {f"relay{n}:user@example.test": {"state": state, "sent": 0} for n, state in enumerate(states)}
    return StatusSnapshot(pid=4242, started=NOW - 600, written=written, running=running,
                          queue={**EMPTY_QUEUE, **queue}, relays=relays)


def test_pattern_for_running_idle_relay_shows_power_only():
    assert pattern_for(snapshot("ok"), NOW) == LedState(power=ON, mail=OFF, alert=OFF)


def test_pattern_for_relay_without_accounts_shows_power_only():
    assert pattern_for(snapshot(), NOW) == LedState(power=ON, mail=OFF, alert=OFF)


def test_s5_pattern_for_account_auth_failed_turns_alert_steady_on():
    """S5: a 535 from a smarthost is shown on the LEDs: the red LED lit steadily."""
    state = pattern_for(snapshot("ok", "auth_failed", deferred=1), NOW)
    assert state.alert == ON
    assert state == LedState(power=ON, mail=ON, alert=ON)


@pytest.mark.parametrize("relay_state, alert", [
    ("ok", OFF),
    ("deferring", OFF),          # ordinary retries: the mail LED tells, nothing to act on
    ("auth_failed", ON),
    ("unreachable", SLOW_BLINK),
    ("throttled", FLASH),
    ("a-state-from-a-newer-relay", OFF),
])
def test_alert_pattern_each_account_state_gives_its_pattern(relay_state, alert):
    assert pattern_for(snapshot(relay_state), NOW).alert == alert


@pytest.mark.parametrize("states, alert", [
    (("throttled", "unreachable", "auth_failed"), ON),
    (("auth_failed", "throttled"), ON),
    (("unreachable", "auth_failed"), ON),
    (("throttled", "unreachable"), SLOW_BLINK),
    (("ok", "throttled", "deferring"), FLASH),
])
def test_alert_pattern_several_accounts_most_urgent_state_wins(states, alert):
    assert alert_pattern(snapshot(*states)) == alert


def test_alert_patterns_are_distinct_from_each_other_and_from_off():
    assert len({ON, SLOW_BLINK, FLASH, OFF}) == 4
    assert len({SLOW_BLINK, FAST_BLINK, FLASH}) == 3


@pytest.mark.parametrize("queue, mail", [
    ({}, OFF),
    ({"incoming": 1}, ON),
    ({"active": 2}, ON),
    ({"deferred": 5}, ON),
    ({"hold": 1}, ON),
    ({"corrupt": 1}, FAST_BLINK),
    ({"deferred": 3, "corrupt": 1}, FAST_BLINK),
])
def test_mail_pattern_queue_counts_give_pattern(queue, mail):
    assert mail_pattern(snapshot(**queue)) == mail


def test_pattern_for_stale_snapshot_blinks_power_slowly_and_hides_alert():
    stale = snapshot("auth_failed", written=NOW - STALE_AFTER_S - 1, deferred=1)
    assert pattern_for(stale, NOW) == LedState(power=SLOW_BLINK, mail=ON, alert=OFF)


def test_pattern_for_snapshot_just_inside_staleness_keeps_power_on():
    assert pattern_for(snapshot(written=NOW - STALE_AFTER_S + 1), NOW).power == ON


def test_pattern_for_snapshot_read_earlier_goes_stale_at_a_later_now():
    fresh = snapshot("unreachable")
    assert pattern_for(fresh, NOW).power == ON
    assert pattern_for(fresh, NOW + STALE_AFTER_S).power == SLOW_BLINK


def test_pattern_for_daemon_gone_blinks_power_but_still_counts_mail():
    """read_status() says running=False when the pid is gone; its queue counts are live."""
    gone = snapshot("auth_failed", running=False, incoming=2)
    assert pattern_for(gone, NOW) == LedState(power=SLOW_BLINK, mail=ON, alert=OFF)


def test_pattern_for_empty_snapshot_means_not_running():
    assert pattern_for(StatusSnapshot(), NOW) == LedState(power=SLOW_BLINK, mail=OFF, alert=OFF)


@pytest.mark.parametrize("fields, power", [
    ({"written": "yesterday", "running": True}, SLOW_BLINK),
    ({"written": float("nan"), "running": True}, SLOW_BLINK),
    ({"written": None, "running": True}, SLOW_BLINK),
    ({"running": "yes", "written": NOW}, SLOW_BLINK),
    ({"queue": ["deferred", 3], "relays": "isp"}, SLOW_BLINK),
    ({"queue": {"deferred": "3", "corrupt": None}, "relays": {"isp": "auth_failed"}}, SLOW_BLINK),
    ({"relays": {"isp": {"state": ["auth_failed"]}, "other": None}, "running": True, "written": NOW}, ON),
])
def test_pattern_for_garbled_snapshot_fields_never_raise(fields, power):
    """read_status() does not check the status file's types: pattern_for must not trust them."""
    assert pattern_for(StatusSnapshot(**fields), NOW) == LedState(power=power, mail=OFF, alert=OFF)


def test_pattern_for_garbled_relay_next_to_auth_failed_still_shows_alert():
    garbled = snapshot("auth_failed")
    garbled.relays["broken"] = ["not", "a", "dict"]
    assert pattern_for(garbled, NOW).alert == ON


def test_blink_patterns_have_positive_timings():
    for pattern in (SLOW_BLINK, FAST_BLINK, FLASH):
        assert isinstance(pattern, Blink) and pattern.on_s > 0 and pattern.off_s > 0


@pytest.mark.parametrize("running", [True, False])
def test_pattern_for_child_in_config_error_fast_blinks_alert_even_while_relay_is_down(running):
    """A part that cannot start because of its config (the master's processes record) is
    shown even when the queue manager is the part that is down (no fresh snapshot)."""
    state = snapshot("auth_failed", running=running)
    state.processes = {"qmgr": {"state": "config_error", "reason": "x.toml: relays.isp.password_file: ..."},
                       "smtpd": {"state": "running"}}
    assert pattern_for(state, NOW).alert == FAST_BLINK


def test_pattern_for_garbled_processes_record_never_raises():
    state = snapshot("ok")
    for garbage in (None, [], {"smtpd": "config_error"}, {"smtpd": {"state": 7}}):
        state.processes = garbage
        assert pattern_for(state, NOW).alert == OFF


def _with_clock(snap: StatusSnapshot, state) -> StatusSnapshot:
    snap.clock = {"state": state, "trusted_floor": NOW + 60, "since": 12.0}
    return snap


def test_pattern_for_clock_not_set_winks_the_alert_led():
    state = pattern_for(_with_clock(snapshot("ok", deferred=1), "not_set"), NOW)
    assert state == LedState(power=ON, mail=ON, alert=WINK)


def test_pattern_for_clock_not_set_wins_over_account_states_but_not_a_config_error():
    assert pattern_for(_with_clock(snapshot("auth_failed", "unreachable"), "not_set"), NOW).alert == WINK
    snap = _with_clock(snapshot("ok"), "not_set")
    snap.processes = {"qmgr": {"state": "config_error"}}
    assert pattern_for(snap, NOW).alert == FAST_BLINK


def test_pattern_for_clock_ok_or_garbled_clock_entry_shows_nothing_for_it():
    for clock in ("ok", None, 17, ["not_set"]):
        assert pattern_for(_with_clock(snapshot("ok"), clock), NOW).alert == OFF
    snap = snapshot("ok")
    snap.clock = "not_set"                    # not even a mapping
    assert pattern_for(snap, NOW).alert == OFF


def test_pattern_for_large_ntp_offset_winks_when_nothing_more_urgent():
    assert pattern_for(snapshot("ok"), NOW, ntp_alert=True).alert == WINK
    assert pattern_for(snapshot("auth_failed"), NOW, ntp_alert=True).alert == ON
    assert pattern_for(snapshot("throttled"), NOW, ntp_alert=True).alert == FLASH
    assert pattern_for(snapshot("ok", running=False), NOW, ntp_alert=True).alert == WINK   # the board's own view


def test_wink_is_distinct_from_every_other_pattern():
    assert len({ON, OFF, SLOW_BLINK, FAST_BLINK, FLASH, WINK}) == 6
