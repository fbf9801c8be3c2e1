"""Unit tests for tools/bench/report.py: what `make bench` prints from several rounds.

Peer: none (the summary is pure arithmetic over the runs' figures)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
import report  # noqa: E402


def run(relay, size, rnd, msgs_per_s, cpu=1.0, pss=40_000):
    return {"relay": relay, "size": size, "round": rnd, "seconds": 2000 / msgs_per_s, "msgs_per_s": msgs_per_s,
            "peak_pss_kib": pss, "idle_pss_kib": pss - 5000, "disk_bytes_per_msg": 14_000,
            "cpu_s_per_1000": cpu}


RUNS = [run("mta-lite", 1024, 1, 700.0, 1.4), run("postfix", 1024, 1, 560.0, 2.2, 68_000),
        run("mta-lite", 1024, 2, 520.0, 1.6), run("postfix", 1024, 2, 500.0, 2.4, 70_000),
        run("mta-lite", 1024, 3, 760.0, 1.3), run("postfix", 1024, 3, 600.0, 2.3, 69_000),
        run("mta-lite", 20480, 1, 600.0)]


def test_each_relay_and_size_gets_the_median_of_its_rounds_and_their_range():
    rows = {(r["relay"], r["size"]): r for r in report.medians(RUNS)}
    mine = rows["mta-lite", 1024]
    assert (mine["rounds"], mine["msgs_per_s"], mine["msgs_per_s_range"]) == (3, 700.0, [520.0, 760.0])
    assert mine["cpu_s_per_1000"] == 1.4 and rows["postfix", 1024]["peak_pss_kib"] == 69_000
    assert rows["mta-lite", 20480]["rounds"] == 1


def test_ratios_come_from_the_medians_and_only_where_both_relays_ran():
    ratios = report.ratios(report.medians(RUNS))
    assert list(ratios) == ["1024"]
    assert ratios["1024"]["throughput"] == round(700 / 560, 3)
    assert ratios["1024"]["cpu_per_msg"] == round(1.4 / 2.3, 3)


def test_each_round_pairs_the_two_relays_that_ran_in_it():
    assert report.round_ratios(RUNS) == {"1024": [1.25, 1.04, round(760 / 600, 3)]}
