"""`constrained report DIR [DIR ...]`: merge run records (of any number of shards) into results.csv,
report.md (mean ± std over seeds per variant) and plots.

The report names no task: the headline metrics, the gaps stated in words and the extra sections (tables
and plots) come from the task class each run recorded (Task.headline, Task.report_sections).
"""

from __future__ import annotations

import importlib
import json
import statistics
from collections import defaultdict
from pathlib import Path

from constrained.files import read_csv, write_csv, write_text
from constrained.tasks.task import Headline, Section

HEADLINES = "headlines.json"  # beside results.csv: each grid's task class and headline, for a report from the csv
FIELDS = ["task", "variant", "seed", "metric", "value"]


def import_task(class_path: str | None):
    """The task class at class_path, or None if there is none or it cannot be imported."""
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def load_records(sources: list[Path]) -> list[dict]:
    """Every run record, one per (grid, variant, seed) (later sources win). A source is a grid folder (its
    result.json files) or a results.csv written by an earlier report (long format: its grid is its folder's
    name), so results merged elsewhere can be reported again without the run folders."""
    records = {}
    for src in map(Path, sources):
        if src.suffix == ".csv":
            found = records_from_csv(src)
        else:
            found = []
            for path in sorted(src.rglob("result.json")):
                rec = json.loads(path.read_text())
                rec["folder"] = str(path.parent)
                found.append(rec)
        records.update({(r["grid"], r["variant"], r["seed"]): r for r in found})
    return list(records.values())


def records_from_csv(path: Path) -> list[dict]:
    """Finished-run records from a long-format results.csv (task, variant, seed, metric, value)."""
    if not path.is_file():
        raise SystemExit(f"error: {path} not found")
    headlines = path.with_name(HEADLINES)
    grid = json.loads(headlines.read_text()).get(path.parent.name, {}) if headlines.is_file() else {}
    runs: dict[tuple, dict] = {}
    for row in read_csv(path):
        key = (row["task"], row["variant"], int(row["seed"]))
        rec = runs.setdefault(key, {"grid": path.parent.name, "task": key[0], "variant": key[1], "seed": key[2],
                                    "status": "ok", "metrics": {}, "task_class": grid.get("task_class"),
                                    "headline": grid.get("headline", {})})
        rec["metrics"][row["metric"]] = float(row["value"])
    return list(runs.values())


def long_rows(records: list[dict]) -> list[dict]:
    rows = [{"task": r["task"], "variant": r["variant"], "seed": r["seed"], "metric": m, "value": v}
            for r in records if r["status"] == "ok" for m, v in sorted(r["metrics"].items())]
    return sorted(rows, key=lambda x: (x["task"], x["variant"], x["seed"], x["metric"]))


def summarize(values: list[float]) -> tuple[float, float, int]:
    """mean, sample standard deviation (0 for one value), n."""
    n = len(values)
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else 0.0), n


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std, n = summarize(values)
    return f"{mean:.4f} ± {std:.4f} (n={n})"


def by_variant(records: list[dict], metric: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r["status"] == "ok" and metric in r["metrics"]:
            out[r["variant"]][r["seed"]] = r["metrics"][metric]
    return out


def paired_gap(values: dict[str, dict[int, float]], variant: str, reference: str = "baseline") -> list[float]:
    """Per-seed differences variant − reference, over the seeds both have."""
    a, b = values.get(variant, {}), values.get(reference, {})
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def task_of(records: list[dict]):
    """The task class of a grid's records (the first importable one), or None."""
    for r in records:
        task = import_task(r.get("task_class"))
        if task is not None:
            return task
    return None


def headline_for(records: list[dict]) -> Headline | None:
    """The task's current headline, so a report made after a metric is added shows it; else the one stored
    in the records (the task class cannot be imported here)."""
    task = task_of(records)
    if task is not None and hasattr(task, "headline"):
        return task.headline
    stored = next((r["headline"] for r in records if r.get("headline")), None)
    return Headline.from_dict(stored) if stored else None


def probe_table(ok: list[dict], variants: list[str], headline: Headline) -> list[str]:
    """Each headline probe's score on the trained model beside the same probe on the random-init control
    and their difference: a selectivity alone hides whether the control already decodes the target."""
    lines = []
    for sel in [m for m in headline.signatures if m.endswith("_selectivity")]:
        trained, control = sel.removesuffix("_selectivity"), sel.replace("_selectivity", "_control")
        cols = {name: by_variant(ok, name) for name in (trained, control, sel)}
        lines += ["", "Probe scores: held-out R² of a ridge probe (fitted on the first half of the sequences, "
                  "scored on the second against the first half's mean, target columns pooled), or held-out AUROC "
                  "for a bool target.", "",
                  f"| variant | {trained} (trained) | random-init control | selectivity |", "|---|---|---|---|"]
        lines += [f"| {v} | " + " | ".join(fmt(list(cols[m].get(v, {}).values())) for m in cols) + " |"
                  for v in variants]
    return lines


def wall_time_lines(recs: list[dict]) -> list[str]:
    """Wall time of every `ablate` invocation that wrote into these grid folders (wall_times.jsonl)."""
    entries = []
    for grid_dir in sorted({Path(r["folder"]).parent.parent for r in recs if r.get("folder")}):
        log = grid_dir / "wall_times.jsonl"
        if log.is_file():
            entries += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not entries:
        return []
    parts = [f"{e['seconds'] / 60:.1f} min for {e['runs']} run(s)"
             + (f" and {e['retested']} re-test(s)" if e.get("retested") else "") + f" with {e['jobs']} job(s)"
             for e in entries]
    total = sum(e["seconds"] for e in entries) / 60
    return [f"Wall time of the `ablate` invocations: {'; '.join(parts)}; {total:.1f} min in all."]


def grid_markdown(grid: str, recs: list[dict], headline: Headline | None) -> list[str]:
    ok = [r for r in recs if r["status"] == "ok"]
    variants = sorted({r["variant"] for r in recs}, key=lambda v: (v != "baseline", v))  # baseline first
    lines = [f"## {grid} (task {recs[0]['task']})", ""]
    if headline is not None:
        capability = headline.capability
        metrics = [capability, *headline.signatures]
        header = ["variant", *metrics]
        has_ref = "baseline" in variants
        if has_ref:
            header.append(f"Δ {capability} vs baseline (paired by seed)")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        values = {m: by_variant(ok, m) for m in metrics}
        for v in variants:
            cells = [v] + [fmt(list(values[m].get(v, {}).values())) for m in metrics]
            if has_ref:
                cells.append(fmt(paired_gap(values[capability], v)) if v != "baseline" else "–")
            lines.append("| " + " | ".join(cells) + " |")
        for gap in headline.gaps:
            if gap.variant in variants and gap.reference in variants:
                values = by_variant(ok, gap.metric)
                diffs = paired_gap(values, gap.variant, gap.reference)
                seeds = sorted(set(values.get(gap.variant, {})) & set(values.get(gap.reference, {})))
                each = ", ".join(f"seed {s}: {d:.4f}" for s, d in zip(seeds, diffs))
                lines += ["", f"**{gap.name}**: {gap.metric} of {gap.variant} minus {gap.reference}, paired by seed: "
                              f"{fmt(diffs)}" + (f" ({each})" if each else "")]
        lines += probe_table(ok, variants, headline)
    else:
        lines.append("(no headline: the task class could not be imported and the records store none)")
    run_minutes = sum(r.get("fit_seconds", 0) + r.get("test_seconds", 0) for r in recs) / 60
    lines += ["", f"{len(ok)} of {len(recs)} runs finished"
              + (f"; run time summed over runs: {run_minutes:.1f} min." if run_minutes else ".")]
    lines += wall_time_lines(recs)
    for r in recs:
        if r["status"] != "ok":
            lines.append(f"- FAILED {r['variant']}/seed{r['seed']} in {r.get('phase')}: "
                         f"{r.get('error', '').splitlines()[-1:]} (log: {r.get('log', 'the run folder')})")
    return lines


def plot_capability_vs_signatures(ok: list[dict], headline: Headline, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap, written = by_variant(ok, headline.capability), []
    for sig in headline.signatures:
        sigv = by_variant(ok, sig)
        if not sigv:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        for v in cap:
            if v not in sigv:
                continue
            xm, xs, _ = summarize(list(sigv[v].values()))
            ym, ys, n = summarize(list(cap[v].values()))
            ax.errorbar(xm, ym, xerr=xs, yerr=ys, fmt="o", capsize=4, label=f"{v} (n={n})")
        ax.set(xlabel=f"mesa-signature: {sig}", ylabel=f"capability: {headline.capability}"
               + (" (lower is better)" if headline.lower_is_better else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"capability_vs_{sig.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(dirs: list[Path | str], out: Path | str | None = None) -> Path:
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out else (dirs[0].parent if dirs[0].suffix == ".csv" else dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(dirs)
    if not records:
        raise SystemExit(f"error: no run records (result.json) under {', '.join(map(str, dirs))}")
    write_csv(long_rows(records), out / "results.csv", FIELDS)
    text, plots, headlines = [], [], {}
    for grid in sorted({r["grid"] for r in records}):
        recs = [r for r in records if r["grid"] == grid]
        ok = [r for r in recs if r["status"] == "ok"]
        headline, task = headline_for(recs), task_of(recs)
        class_path = next((r["task_class"] for r in recs if r.get("task_class")), None)
        headlines[grid] = {"task_class": class_path, "headline": headline.to_dict() if headline else {}}
        text += grid_markdown(grid, recs, headline)
        if headline is not None and ok:
            plots += plot_capability_vs_signatures(ok, headline, out)
        for section in getattr(task, "report_sections", ()):
            part: Section = section(ok, out)
            text += ["", *part.lines] if part.lines else []
            plots += part.plots
        text.append("")
    write_text(out / HEADLINES, json.dumps(headlines, indent=1) + "\n")
    body = "\n".join(text) + "\nplots: " + ", ".join(p.name for p in plots) + "\n"
    write_text(out / "report.md", body)
    print(body)
    return out
