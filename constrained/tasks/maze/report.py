"""The maze's plots: one run's proxy rate against the cheese-to-corner distance (written by `constrained test`),
and the task's report section across variants: which goal each variant reaches on the shifted split, and
how its proxy rate depends on the distance. Each run's per-distance rates are in its folder's
maze_proxy_by_distance.csv (the table of Maze.rollout_metrics)."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

from constrained.tasks.band_plot import plot_band
from constrained.tasks.task import Section

PROXY_TABLE = "maze_proxy_by_distance"
PROXY_CSV = f"{PROXY_TABLE}.csv"


def read_proxy(path: Path, split: str = "shifted") -> dict[int, float]:
    """cheese-to-corner distance -> p_corner of one run."""
    with path.open() as f:
        return {int(r["cheese_corner_distance"]): float(r["p_corner"]) for r in csv.DictReader(f)
                if r["split"] == split}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_outcomes(outcomes: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Bars of P(cheese) and P(corner) on the shifted split per variant, error bars = std over seeds.
    outcomes: variant -> {"p_cheese": [per seed], "p_corner": [per seed]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(outcomes)
    fig, ax = plt.subplots(figsize=(1.6 * len(variants) + 2.5, 4.2))
    width = 0.38
    for j, key in enumerate(("p_cheese", "p_corner")):
        stats = [_mean_std(outcomes[v][key]) if outcomes[v].get(key) else (float("nan"), 0.0) for v in variants]
        xs = [i + (j - 0.5) * width for i in range(len(variants))]
        ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], capsize=4,
               label="P(cheese)" if key == "p_cheese" else "P(corner first)")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([f"{v}\n(n={len(outcomes[v].get('p_cheese', []))})" for v in variants], fontsize=8)
    ax.set(ylabel="fraction of shifted episodes", ylim=(0, 1.05), title="maze, shifted split: which goal is reached")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_proxy_by_distance(curves: dict[str, list[dict[int, float]]], path: Path) -> None:
    """p_corner against cheese-to-corner distance per variant (mean over seeds, band = ± std).
    curves: variant -> one {distance: p_corner} per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, runs in curves.items():
        plot_band(ax, variant, runs, marker="o", ms=3)
    ax.set(xlabel="cheese-to-corner distance (moves)", ylabel="proxy rate P(corner first)", ylim=(-0.02, 1.02),
           title="maze, shifted split: proxy rate against goal distance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run_by_distance(rows: list[dict], path: Path) -> None:
    """One run: P(corner), P(cheese) and P(neither) on the shifted split against cheese-to-corner distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["split"] == "shifted"]
    if not rows:
        return
    d = [r["cheese_corner_distance"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("p_corner", "o-"), ("p_cheese", "s-"), ("p_neither", "^:")):
        ax.plot(d, [r[key] for r in rows], style, label=key)
    ax.set(xlabel="cheese-to-corner distance (moves)", ylabel="fraction of shifted episodes", ylim=(-0.02, 1.02),
           title="maze: proxy (corner) rate against goal distance")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_section(records: list[dict], out: Path) -> Section:
    """The shifted outcomes per variant (from the metrics) and the proxy rate against distance (from the run
    folders' tables; absent for records read back from a results.csv)."""
    outcomes, curves = defaultdict(lambda: defaultdict(list)), defaultdict(list)
    for r in sorted(records, key=lambda r: (r["variant"] != "baseline", r["variant"], r["seed"])):
        for key in ("p_cheese", "p_corner"):
            if f"shifted/{key}" in r["metrics"]:
                outcomes[r["variant"]][key].append(r["metrics"][f"shifted/{key}"])
        path = Path(r["folder"]) / PROXY_CSV if r.get("folder") else None
        if path is not None and path.is_file():
            curves[r["variant"]].append(read_proxy(path))
    plots = []
    if outcomes:
        plots.append(out / "maze_shifted_outcomes.png")
        plot_outcomes(outcomes, plots[-1])
    if curves:
        plots.append(out / "maze_proxy_by_distance.png")
        plot_proxy_by_distance(curves, plots[-1])
    return Section(plots=plots)
