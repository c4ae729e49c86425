"""The e(k) curve: normalized error against the number k of in-context examples, for the model and
for explicit algorithms fitted to the same context, and the model's distance to each algorithm.

Also the task's report section (e(k) of every variant in one plot) and its `constrained curves` command."""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path

import torch

from constrained.tasks.band_plot import plot_band
from constrained.tasks.task import Section

FIELDS = ("split", "k", "predictor", "error", "distance_to_model")
# names written by `metrics`: {split}/e{k} (the model) and {split}/{alg}_e{k}
CURVE_METRIC = re.compile(r"^(?P<split>[a-z]+)/(?:(?P<alg>[a-z][a-z_]*)_)?e(?P<k>\d+)$")


def curve_rows(split: str, model: torch.Tensor, ys: torch.Tensor, baselines: dict[str, torch.Tensor], d: int):
    """model, ys and each baseline are (n, P) predictions of y_k from k examples.

    error e(k) = E[(y_hat_k - y_k)^2] / d; distance = E[(y_hat_model - y_hat_alg)^2] / d."""
    rows = []
    err = ((model - ys) ** 2).mean(0) / d  # (P,)
    for k in range(ys.shape[1]):
        rows.append({"split": split, "k": k, "predictor": "model", "error": err[k].item(), "distance_to_model": 0.0})
    for name, pred in baselines.items():
        err = ((pred - ys) ** 2).mean(0) / d  # (P,)
        dist = ((model - pred) ** 2).mean(0) / d  # (P,)
        for k in range(ys.shape[1]):
            rows.append({"split": split, "k": k, "predictor": name, "error": err[k].item(),
                         "distance_to_model": dist[k].item()})
    return rows


def metrics(rows) -> dict[str, float]:
    """Flat names for the loggers: {split}/e{k} for the model, {split}/{alg}_e{k}, {split}/dist_{alg}_k{k}."""
    out = {}
    for r in rows:
        s, k, p = r["split"], r["k"], r["predictor"]
        if p == "model":
            out[f"{s}/e{k}"] = r["error"]
        else:
            out[f"{s}/{p}_e{k}"] = r["error"]
            out[f"{s}/dist_{p}_k{k}"] = r["distance_to_model"]
    return out


def rows_from_metrics(flat: dict[str, float]) -> list[dict]:
    """The inverse of `metrics`: curve rows from the flat logged names (empty if there are none)."""
    rows = []
    for name, error in flat.items():
        m = CURVE_METRIC.match(name)
        if m is None:
            continue
        split, predictor, k = m["split"], m["alg"] or "model", m["k"]
        dist = flat.get(f"{split}/dist_{predictor}_k{k}", 0.0)
        rows.append({"split": split, "k": int(k), "predictor": predictor, "error": error, "distance_to_model": dist})
    return sorted(rows, key=lambda r: (r["split"], r["predictor"] != "model", r["predictor"], r["k"]))


def read(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [{**r, "k": int(r["k"]), "error": float(r["error"]),
                 "distance_to_model": float(r["distance_to_model"])} for r in csv.DictReader(f)]


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(r["split"] for r in rows))
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for name in dict.fromkeys(r["predictor"] for r in rows):
            pts = [(r["k"], r["error"]) for r in rows if r["split"] == split and r["predictor"] == name]
            ks, errs = zip(*pts)
            ax.plot(ks, errs, marker="o" if name == "model" else None, lw=2.5 if name == "model" else 1.2,
                    ls="-" if name == "model" else "--", label=name)
        ax.set(title=f"e(k), {split} set", xlabel="in-context examples k", ylabel="e(k) = MSE / d")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(curves: dict[str, list[dict]], split: str = "test", baselines=("least_squares", "averaging")) -> str:
    """A text table of e(k): one column per run (label -> rows) and per baseline (from the first run)."""
    labels = list(curves)
    first = curves[labels[0]]
    cols = [(b, {r["k"]: r["error"] for r in first if r["split"] == split and r["predictor"] == b}) for b in baselines]
    cols += [(lab, {r["k"]: r["error"] for r in rows if r["split"] == split and r["predictor"] == "model"})
             for lab, rows in curves.items()]
    ks = sorted(cols[-1][1])
    width = max(10, *(len(c) for c, _ in cols))
    lines = [f"e(k) on the {split} set", "   k " + "".join(f"{c:>{width + 2}}" for c, _ in cols)]
    lines += [f"{k:>4} " + "".join(f"{vals.get(k, float('nan')):>{width + 2}.4f}" for _, vals in cols) for k in ks]
    return "\n".join(lines)


def plot_variants(curves: dict[str, list[list[dict]]], path: Path, split: str = "test") -> None:
    """e(k) of every variant (mean over seeds, band = ± std) with least squares and averaging."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(rows, predictor):
        pts = sorted((r["k"], r["error"]) for r in rows if r["split"] == split and r["predictor"] == predictor)
        return [k for k, _ in pts], torch.tensor([e for _, e in pts])

    top = 1.3  # the zero predictor scores 1; averaging's early e(k) (~6 at k = 1) would flatten the rest
    fig, ax = plt.subplots(figsize=(9, 4.8))
    first = next(iter(curves.values()))[0]
    for name in ("least_squares", "averaging"):
        ks, err = series(first, name)
        off = [k for k, e in zip(ks, err.tolist()) if e > top]
        label = name + (f" (above {top} for k ≤ {max(off)})" if off else "")
        ax.plot(ks, err.clamp(max=top * 1.5), "k--" if name == "least_squares" else "k:", lw=1.2, label=label)
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "v", "D", "x", "P", "*"]
    for i, (variant, runs) in enumerate(curves.items()):
        per_seed = [dict(zip(ks, err.tolist())) for ks, err in (series(rows, "model") for rows in runs)]
        plot_band(ax, variant, per_seed, alpha=0.15, ls=styles[i % len(styles)], marker=markers[i % len(markers)],
                  ms=4)
    ax.set(xlabel="in-context examples k", ylabel="e(k) = MSE / d", title=f"e(k) by variant, {split} set "
           "(mean ± std over seeds)", ylim=(0, top))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the curves fill the axes
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_section(records: list[dict], out: Path) -> Section:
    """e(k) of every variant in one figure, from the logged metrics (so a results.csv suffices), else from
    each run's icl_curve.csv."""
    curves = defaultdict(list)
    for r in records:
        rows = rows_from_metrics(r["metrics"])
        if not rows and r.get("folder") and (Path(r["folder"]) / "icl_curve.csv").is_file():
            rows = read(Path(r["folder"]) / "icl_curve.csv")
        if rows:
            curves[r["variant"]].append(rows)
    if not curves:
        return Section()
    path = out / "e_k_by_variant.png"
    plot_variants(curves, path)
    return Section(plots=[path])


def curves_command(argv: list[str]) -> int:
    """`constrained curves RUN_DIR [RUN_DIR ...]`: e(k) of several runs beside least squares and averaging."""
    p = argparse.ArgumentParser(prog="constrained curves",
                                description="Print e(k) of icl_regression runs beside least squares and averaging.")
    p.add_argument("runs", nargs="+", help="run folders that `constrained test` has written icl_curve.csv into")
    a = p.parse_args(argv)
    data = {}
    for d in map(Path, a.runs):
        path = d / "icl_curve.csv"
        if not path.is_file():
            print(f"constrained curves: error: {path} not found (run `constrained test` on that run first)")
            return 2
        label = f"{d.parent.name}/{d.name}" if d.name.startswith("seed") else d.name  # grid run folders
        data[label] = read(path)
    print(table(data))
    return 0
