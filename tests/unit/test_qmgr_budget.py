"""Budgets (pure, fake time): rate_delay, max_per_hour, max_per_day, slots, persistence;
fair order; the relay keys in the config."""

import json
import os

import pytest

from mta_lite.config.load import effective_dict, parse_config
from mta_lite.errors import ConfigError
from mta_lite.qmgr.budget import DAY_S, HOUR_S, Budget, BudgetFile, Limits
from mta_lite.qmgr.fairness import ServedLog, fair_order

T0 = 1_700_000_000.0


def _sent(budget, *times):
    for t in times:
        assert budget.take(t) == t


def test_budget_within_max_per_hour_takes_and_counts():
    budget = Budget(Limits(max_per_hour=3))
    _sent(budget, T0, T0 + 1, T0 + 2)
    assert budget.used(T0 + 2, HOUR_S) == 3
    assert budget.take(T0 + 3) is None                      # the fourth in the hour


def test_budget_max_per_hour_used_up_frees_a_slot_when_the_oldest_ages_out():
    budget = Budget(Limits(max_per_hour=2))
    _sent(budget, T0, T0 + 600)
    why, until = budget.over(T0 + 700)
    assert why == "over max_per_hour=2 (2 sent in the last hour)" and until == T0 + HOUR_S
    assert budget.over(T0 + HOUR_S - 0.001) is not None
    assert budget.over(T0 + HOUR_S) is None and budget.take(T0 + HOUR_S) == T0 + HOUR_S


def test_budget_max_per_day_outlasts_the_hourly_slot():
    budget = Budget(Limits(max_per_hour=2, max_per_day=2))
    _sent(budget, T0, T0 + 1)
    why, until = budget.over(T0 + 10)
    assert why.startswith("over max_per_day=2") and until == T0 + DAY_S


def test_budget_given_back_send_does_not_count():
    budget = Budget(Limits(max_per_hour=1))
    stamp = budget.take(T0)
    budget.give_back(stamp)
    assert budget.used(T0, HOUR_S) == 0 and budget.take(T0 + 1) == T0 + 1


def test_budget_rate_delay_counts_from_the_end_of_the_last_delivery():
    budget = Budget(Limits(rate_delay_s=2.0))
    assert budget.pace_until() == 0.0                       # nothing sent yet: go
    budget.finished(T0 + 5)
    assert budget.pace_until() == T0 + 7


def test_budget_slots_spread_over_windows_in_order():
    budget = Budget(Limits(max_per_hour=2))
    _sent(budget, T0, T0 + 100)
    assert budget.slots(T0 + 200, 5) == [T0 + HOUR_S, T0 + 100 + HOUR_S, T0 + 2 * HOUR_S,
                                         T0 + 100 + 2 * HOUR_S, T0 + 3 * HOUR_S]
    assert budget.used(T0 + 200, HOUR_S) == 2               # slots() only simulates


def test_budget_slots_respect_rate_delay():
    budget = Budget(Limits(rate_delay_s=10.0))
    budget.finished(T0)
    assert budget.slots(T0 + 1, 3) == [T0 + 10, T0 + 20, T0 + 30]


def test_budget_history_from_the_future_is_dropped():
    budget = Budget(Limits(max_per_day=1), sent=[T0 + 30 * DAY_S], last_end=T0 + 30 * DAY_S)
    assert budget.over(T0) is None and budget.pace_until() == 0.0


def test_budget_unlimited_account_keeps_no_history():
    budget = Budget(Limits(rate_delay_s=1.0))
    _sent(budget, *(T0 + i for i in range(100)))
    assert budget.to_dict()["sent"] == []


def test_budget_history_is_bounded_by_the_largest_limit():
    budget = Budget(Limits(max_per_hour=5, max_per_day=8))
    for i in range(50):
        budget.take(T0 + i * HOUR_S)
    assert len(budget.to_dict()["sent"]) <= 8


def test_budget_file_round_trips_and_new_limits_keep_the_history(tmp_path):
    path = str(tmp_path / "budgets.json")
    budget = Budget(Limits(max_per_hour=5))
    _sent(budget, T0, T0 + 1)
    budget.finished(T0 + 2)
    BudgetFile(path).save({"isp": budget}, T0 + 2)
    book = BudgetFile(path)
    book.load()
    again = book.budget("isp", Limits(max_per_hour=2, rate_delay_s=3.0))
    assert again.over(T0 + 3)[0] == "over max_per_hour=2 (2 sent in the last hour)"
    assert again.pace_until() == T0 + 5
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_budget_file_saves_at_most_once_per_second(tmp_path):
    book = BudgetFile(str(tmp_path / "budgets.json"))
    budget = Budget(Limits(max_per_hour=5))
    budgets = {"isp": budget}
    assert book.due(budgets, T0) is None                    # nothing changed
    budget.take(T0)
    book.save_if_due(budgets, T0)
    budget.take(T0 + 0.2)
    assert book.due(budgets, T0 + 0.2) == T0 + 1.0
    book.save_if_due(budgets, T0 + 0.2)
    assert len(json.loads((tmp_path / "budgets.json").read_text())["accounts"]["isp"]["sent"]) == 1
    book.save_if_due(budgets, T0 + 1.0)
    assert len(json.loads((tmp_path / "budgets.json").read_text())["accounts"]["isp"]["sent"]) == 2


@pytest.mark.parametrize("content", [b"", b"{nonsense", b'{"version": 1, "accounts": []}',
                                     b'{"version": 1, "accounts": {"isp": {"sent": ["x", 1e999]}}}'])
def test_budget_file_garbage_starts_afresh(tmp_path, content):
    path = tmp_path / "budgets.json"
    path.write_bytes(content)
    book = BudgetFile(str(path))
    book.load()
    assert book.budget("isp", Limits(max_per_hour=1)).over(T0) is None


def test_fair_order_puts_notices_first_then_one_per_sender():
    items = [("scan", 1), ("scan", 2), ("scan", 3), ("", 4), ("printer", 5), ("scan", 6), ("nas", 7)]
    order = fair_order(items, lambda i: i[0], lambda i: i[0] == "", {})
    assert [n for _, n in order] == [4, 1, 5, 7, 2, 3, 6]


def test_fair_order_serves_the_sender_served_longest_ago_first():
    served = ServedLog()
    served.served("scan")
    items = [("scan", 1), ("scan", 2), ("printer", 3)]
    assert [n for _, n in fair_order(items, lambda i: i[0], lambda i: False, served.last)] == [3, 1, 2]
    served.served("printer")
    assert [n for _, n in fair_order(items, lambda i: i[0], lambda i: False, served.last)] == [1, 3, 2]


def test_relay_budget_keys_parse_and_show():
    cfg = parse_config({"admin_address": "a@example.com", "relays": {"isp": {
        "host": "smtp.isp.example", "rate_delay": "50ms", "max_per_hour": 100, "max_per_day": 1000,
        "recipient_limit": 20}}}, "t.toml")
    relay = cfg.relays["isp"]
    assert (relay.rate_delay_s, relay.max_per_hour, relay.max_per_day, relay.recipient_limit) == (0.05, 100, 1000, 20)
    shown = effective_dict(cfg)["relays"]["isp"]
    assert (shown["rate_delay"], shown["max_per_hour"], shown["recipient_limit"]) == ("50ms", 100, 20)
    default = parse_config({"admin_address": "a@example.com", "relays": {"isp": {"host": "h"}}}, "t.toml")
    assert (default.relays["isp"].recipient_limit, default.relays["isp"].max_per_day) == (50, 0)


@pytest.mark.parametrize("key, value, problem", [
    ("max_per_hour", -1, "relays.isp.max_per_hour: must be 0 (unlimited) or more, got -1"),
    ("max_per_day", "many", "relays.isp.max_per_day: expected int, got 'many'"),
    ("rate_delay", "soon", 'relays.isp.rate_delay: expected a duration'),
    ("recipient_limit", 0, "relays.isp.recipient_limit: must be at least 1, got 0"),
])
def test_relay_budget_key_invalid_names_file_key_and_value(key, value, problem):
    with pytest.raises(ConfigError) as err:
        parse_config({"admin_address": "a@example.com", "relays": {"isp": {"host": "h", key: value}}}, "t.toml")
    assert str(err.value).startswith("t.toml: " + problem)
