"""report: relay_bench's summary of several rounds: per-relay medians, ratios and the table.

    medians(runs)       one row per relay and size: the median of each figure over the
                        rounds, with the rounds' lowest and highest msgs/s
    ratios(rows)        mta-lite / Postfix per size, from the medians
    round_ratios(runs)  mta-lite / Postfix throughput in each round (the rounds alternate
                        the two relays, so each pair ran under the same conditions)
    print_table(rows, runs, failures)

Why rounds: one run of 2,000 messages lasts 3 to 4 seconds, and the machine's other work
moves a single run's throughput by about 10 %; the median of alternating rounds moves less
and the per-round ratios show the spread.
Never: drops a round, or mixes figures of different sizes or relays.
"""
from __future__ import annotations

import statistics
import sys

# ratio name -> result field
RATIOS = {"throughput": "msgs_per_s", "peak_pss": "peak_pss_kib", "disk_per_msg": "disk_bytes_per_msg",
          "cpu_per_msg": "cpu_s_per_1000"}
FIGURES = ("seconds", "msgs_per_s", "peak_pss_kib", "idle_pss_kib", "disk_bytes_per_msg", "cpu_s_per_1000")


def medians(runs: list[dict]) -> list[dict]:
    """Per relay and size, in the order first run: each figure's median over the rounds."""
    rows: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        rows.setdefault((run["relay"], run["size"]), []).append(run)
    out = []
    for (relay, size), group in rows.items():
        row = {"relay": relay, "size": size, "rounds": len(group)}
        row.update({name: statistics.median(r[name] for r in group) for name in FIGURES})
        row["msgs_per_s_range"] = [min(r["msgs_per_s"] for r in group), max(r["msgs_per_s"] for r in group)]
        out.append(row)
    return out


def ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    """mta-lite / Postfix per size (only where both ran)."""
    out = {}
    for size in sorted({r["size"] for r in rows}):
        by = {r["relay"]: r for r in rows if r["size"] == size}
        if {"mta-lite", "postfix"} <= by.keys():
            mine, theirs = by["mta-lite"], by["postfix"]
            out[str(size)] = {key: round(mine[field] / theirs[field], 3) if theirs[field] else 0.0
                              for key, field in RATIOS.items()}
    return out


def round_ratios(runs: list[dict]) -> dict[str, list[float]]:
    """Per size, mta-lite's throughput over Postfix's in each round both ran."""
    out: dict[str, list[float]] = {}
    pairs: dict[tuple[int, int], dict[str, float]] = {}
    for run in runs:
        pairs.setdefault((run["size"], run.get("round", 1)), {})[run["relay"]] = run["msgs_per_s"]
    for (size, _), by in sorted(pairs.items()):
        if by.get("postfix") and "mta-lite" in by:
            out.setdefault(str(size), []).append(round(by["mta-lite"] / by["postfix"], 3))
    return out


def print_table(rows: list[dict], runs: list[dict], failures: list[str]) -> None:
    rounds = max((r["rounds"] for r in rows), default=0)
    print(f"\nmedians of {rounds} round(s)" if rounds > 1 else "")
    print(f"{'relay':<10} {'size':>7} {'msgs/s e2e':>11} {'(rounds)':>15} {'peak PSS MiB':>13}"
          f" {'idle PSS MiB':>13} {'disk KiB/msg':>13} {'CPU s/1000':>11}")
    for r in rows:
        low, high = r["msgs_per_s_range"]
        print(f"{r['relay']:<10} {r['size']:>7} {r['msgs_per_s']:>11.1f} {f'{low:.0f}-{high:.0f}':>15}"
              f" {r['peak_pss_kib'] / 1024:>13.1f} {r['idle_pss_kib'] / 1024:>13.1f}"
              f" {r['disk_bytes_per_msg'] / 1024:>13.1f} {r['cpu_s_per_1000']:>11.2f}")
    each = round_ratios(runs)
    for size, ratio in ratios(rows).items():
        per_round = ", ".join(f"x{x:.2f}" for x in each.get(size, []))
        print(f"mta-lite/Postfix at {size} B: throughput x{ratio['throughput']:.2f} (rounds: {per_round}),"
              f" peak PSS x{ratio['peak_pss']:.2f}, disk bytes per message x{ratio['disk_per_msg']:.2f},"
              f" CPU per message x{ratio['cpu_per_msg']:.2f}")
    for failure in failures:  # details (log tails) were printed when the run failed
        print(f"FAILED: {failure.splitlines()[0]}", file=sys.stderr)
