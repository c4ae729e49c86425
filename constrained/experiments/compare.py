"""Did a change move a recorded result? `constrained compare RECORDED NEW` sets the runs of a new grid run (often
one seed of each variant, `constrained ablate GRID --seeds 0 --out runs/check`) beside a recorded grid's
results and says, per variant and headline metric, whether each new value lies within the recorded seed spread.

The rule: a new value is within the spread when |new − recorded mean| ≤ 2 · recorded std + tol, where std is the
sample std over the recorded seeds and tol = 1e-6 · max(1, |mean|) keeps a metric that every seed put at the same
value (std 0) from flagging rounding. The same seed's recorded value is shown beside it, so a reader also sees
whether the new code reproduces that run to the digit or only to within the noise. Below the headline table, one
row per variant over every metric the runs wrote (probes, rates, per-layer values): how many equal the same seed's
recorded value to the printed digit and how many lie outside the spread.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from constrained.experiments.report import headline_for, load_records
from constrained.experiments.tables import by_variant, summarize
from constrained.tasks.cells import baseline_first

SPREADS = 2.0


def within(value: float, recorded: list[float]) -> bool:
    mean, std, _ = summarize(recorded)
    return abs(value - mean) <= SPREADS * std + 1e-6 * max(1.0, abs(mean))


def compare(recorded: list[Path | str], new: list[Path | str]) -> tuple[list[str], int]:
    """(Markdown lines, how many new values lie outside the recorded spread)."""
    old_recs, new_recs = load_records(list(map(Path, recorded))), load_records(list(map(Path, new)))
    if not old_recs:
        raise ValueError(f"no finished runs in {', '.join(map(str, recorded))}")
    if not new_recs:
        raise ValueError(f"no finished runs in {', '.join(map(str, new))}")
    headline = headline_for(old_recs) or headline_for(new_recs)  # old records may name a moved class
    if headline is None:
        raise ValueError("the recorded runs name no headline metrics (their task class cannot be imported)")
    metrics = [headline.capability, *headline.signatures]
    lines = [f"New runs beside the recorded ones: within = |new − recorded mean| ≤ {SPREADS:g} × recorded std.", "",
             "| variant | seed | metric | recorded (mean ± std, n) | recorded, same seed | new | within |",
             "|---|---|---|---|---|---|---|"]
    outside = compared = 0
    for metric in metrics:
        old, fresh = by_variant(old_recs, metric), by_variant(new_recs, metric)
        for variant in baseline_first(fresh):
            if variant not in old:
                continue
            values = list(old[variant].values())
            mean, std, n = summarize(values)
            for seed, value in sorted(fresh[variant].items()):
                ok = within(value, values)
                outside += not ok
                compared += 1
                same = old[variant].get(seed)
                lines.append(f"| {variant} | {seed} | {metric} | {mean:.4f} ± {std:.4f} (n={n}) | "
                             + ("–" if same is None else f"{same:.4f}") + f" | {value:.4f} | "
                             + ("yes" if ok else "**no**") + " |")
    if not compared:  # "0 values outside" would read as an all-clear
        raise ValueError(f"nothing to compare: the new runs in {', '.join(map(str, new))} share no variant and "
                         f"headline metric with the recorded ones in {', '.join(map(str, recorded))}")
    lines += ["", *every_metric(old_recs, new_recs)]
    unmatched = sorted({r["variant"] for r in new_recs} - {r["variant"] for r in old_recs})
    if unmatched:
        lines += ["", f"Variants with no recorded runs (not compared): {', '.join(unmatched)}."]
    lines += ["", f"{outside} value(s) outside the recorded spread."]
    return lines, outside


def every_metric(old_recs: list[dict], new_recs: list[dict]) -> list[str]:
    """Per variant, over every metric both the new and the recorded runs have: compared values, those equal to
    the same seed's recorded value to 4 decimals, those outside the recorded spread."""
    old: dict[str, dict[int, dict]] = defaultdict(dict)  # variant -> seed -> metrics
    for r in old_recs:
        if r["status"] == "ok":
            old[r["variant"]][r["seed"]] = r["metrics"]
    rows = []
    for variant in baseline_first(r["variant"] for r in new_recs):
        compared = same = outside = 0
        for r in (r for r in new_recs if r["variant"] == variant and r["status"] == "ok"):
            for metric, value in r["metrics"].items():
                values = [m[metric] for m in old[variant].values() if metric in m]
                if not values or value != value or any(x != x for x in values):  # nan: nothing to judge
                    continue
                compared += 1
                recorded = old[variant].get(r["seed"], {}).get(metric)
                same += recorded is not None and f"{recorded:.4f}" == f"{value:.4f}"
                outside += not within(value, values)
        if compared:
            rows.append(f"| {variant} | {compared} | {same} | {outside} |")
    if not rows:
        return []
    return ["Every metric the runs wrote, per variant: equal = the same seed's recorded value to 4 decimals; "
            "outside = beyond the recorded spread.", "",
            "| variant | values compared | equal to the same seed | outside the spread |", "|---|---|---|---|", *rows]
