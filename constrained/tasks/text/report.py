"""The text task's report section: bits per byte of every variant beside the unigram and bigram references, the
pre-caching probe table (trained, random-init, current-byte control), bits per byte by position in the window,
and each variant's sample."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

from constrained.files import read_csv
from constrained.tasks.band_plot import plot_band
from constrained.tasks.cells import baseline_first, fmt
from constrained.tasks.task import Section

BY_POSITION = "bpb_by_position"  # table of Text.evaluate: split, position, bpb
SAMPLE = "sample"  # table of Text.evaluate: prompt, continuation, temperature
SAMPLE_TXT = "sample.txt"
CURRENT_BYTE = re.compile(r"test/probe_future_byte_k(\d+)_current_byte")


def _per_run(records: list[dict], *metrics: str) -> dict[str, list[list[float]]]:
    """variant -> one [value of each metric] per run that has them all."""
    out = defaultdict(list)
    for r in records:
        if all(m in r["metrics"] for m in metrics):
            out[r["variant"]].append([r["metrics"][m] for m in metrics])
    return out


def reference_lines(records: list[dict], variants: list[str]) -> list[str]:
    runs = _per_run(records, "test/bpb", "test/unigram_bpb", "test/bigram_bpb")
    lines = ["Bits per byte on the test windows: the model beside the unigram and bigram references (add-one "
             "smoothed, counted on the train split, scored on the same bytes); the last column is the model's "
             "gain over the bigram, per run.", "",
             "| variant | model test/bpb | unigram | bigram | model − bigram |", "|---|---|---|---|---|"]
    for v in variants:
        rows = runs.get(v, [])
        cols = [[r[i] for r in rows] for i in range(3)] + [[r[0] - r[2] for r in rows]]
        lines.append(f"| {v} | " + " | ".join(fmt(c) for c in cols) + " |")
    return lines


def probe_lines(records: list[dict], variants: list[str]) -> list[str]:
    lines = ["", "Pre-caching probes: held-out R² of a ridge probe decoding the one-hot byte at t+k from the last "
             "layer's residual stream at t, on the trained model, on the random-init control, and on the trained "
             "model's embedding of the byte at t alone (current-byte control); the last column is trained minus "
             "current-byte, per run.", "",
             "| variant | k | trained | random-init | current byte | trained − current byte |",
             "|---|---|---|---|---|---|"]
    ks = sorted({int(m[1]) for r in records for name in r["metrics"] if (m := CURRENT_BYTE.fullmatch(name))})
    for v in variants:
        for k in ks:
            name = f"test/probe_future_byte_k{k}"
            rows = _per_run(records, f"{name}_last", f"{name}_last_control", f"{name}_current_byte").get(v, [])
            cols = [[r[i] for r in rows] for i in range(3)] + [[r[0] - r[2] for r in rows]]
            lines.append(f"| {v} | {k} | " + " | ".join(fmt(c) for c in cols) + " |")
    return lines


def sample_lines(records: list[dict], variants: list[str]) -> list[str]:
    """The sample of each variant's first seed whose run folder has one."""
    lines = []
    for v in variants:
        runs = sorted((r for r in records if r["variant"] == v and r.get("folder")), key=lambda r: r["seed"])
        path = next((Path(r["folder"]) / SAMPLE_TXT for r in runs if (Path(r["folder"]) / SAMPLE_TXT).is_file()),
                    None)
        if path is None:
            continue
        text = path.read_text(errors="replace").rstrip("\n")
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))  # outlasts any in text
        lines += ["", f"Sample of {v} ({path.parent.name}, `{SAMPLE_TXT}`):", "", fence, text, fence]
    return (["", "Continuations of data.init_args.sample_prompt drawn at data.init_args.sample_temperature with seed 0 "
             "(`constrained sample CHECKPOINT --prompt TEXT --temperature T --seed 0` repeats one):"] + lines
            ) if lines else []


def plot_by_position(curves: dict[str, list[list[float]]], bigram: float | None, path: Path) -> None:
    """Bits per byte against position in the window per variant (mean over seeds, band = ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, runs in curves.items():
        n = min(len(r) for r in runs)  # the positions every run has
        plot_band(ax, variant, [dict(enumerate(r[:n])) for r in runs])
    if bigram is not None:
        ax.axhline(bigram, color="k", ls="--", lw=1, label="bigram reference")
    ax.set(xlabel="position in the window (bytes of context)", ylabel="test bits per byte",
           title="text: bits per byte by position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_section(records: list[dict], out: Path) -> Section:
    """Tables from the logged metrics (so a results.csv suffices); the by-position plot and the samples from the
    run folders when they are at hand."""
    variants = baseline_first(r["variant"] for r in records)
    if not variants:
        return Section()
    lines = reference_lines(records, variants) + probe_lines(records, variants) + sample_lines(records, variants)
    curves = defaultdict(list)
    for r in sorted(records, key=lambda r: (r["variant"], r["seed"])):
        path = Path(r["folder"]) / f"{BY_POSITION}.csv" if r.get("folder") else None
        if path is not None and path.is_file():
            curves[r["variant"]].append([float(row["bpb"]) for row in read_csv(path) if row["split"] == "test"])
    plots = []
    if curves:
        bigram = [r["metrics"]["test/bigram_bpb"] for r in records if "test/bigram_bpb" in r["metrics"]]
        plots.append(out / "text_bpb_by_position.png")
        plot_by_position(dict(curves), statistics.fmean(bigram) if bigram else None, plots[-1])
    return Section(lines=lines, plots=plots)
