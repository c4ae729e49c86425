"""`constrained report DIR [DIR ...]`: merge run records (of any number of shards) into results.csv,
report.md (mean ± std over seeds per variant) and plots."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from constrained.tasks.icl_regression import curve as icl_curve
from constrained.tasks.maze import report as maze_report

HEADLINES = "headlines.json"  # beside results.csv: each grid's headline metrics, for a report made from the csv


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
    runs: dict[tuple, dict] = {}
    headlines = path.with_name(HEADLINES)
    headline = json.loads(headlines.read_text()).get(path.parent.name, {}) if headlines.is_file() else {}
    with path.open() as f:
        for row in csv.DictReader(f):
            key = (row["task"], row["variant"], int(row["seed"]))
            rec = runs.setdefault(key, {"grid": path.parent.name, "task": key[0], "variant": key[1], "seed": key[2],
                                        "status": "ok", "metrics": {}, "headline": headline})
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


def _fmt(values: list[float]) -> str:
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


def headline_for(records: list[dict]) -> dict:
    """The task's current HEADLINE, so a report made after a metric is added shows it; the one stored
    in the records when the base config is gone."""
    from constrained.experiments.runner import headline_of

    for r in records:
        args = r.get("args", [])
        if "--config" in args and Path(args[args.index("--config") + 1]).is_file():
            current = headline_of(Path(args[args.index("--config") + 1]))
            if current:
                return current
    stored = next((r["headline"] for r in records if r.get("headline")), {})
    return stored or task_headline(records[0]["task"]) if records else {}


def task_headline(task: str) -> dict:
    """HEADLINE of the task class defined in constrained/<task>.py (records read from a results.csv)."""
    import importlib

    from constrained.tasks.task import Task

    try:
        module = importlib.import_module(f"constrained.{task}")
    except ImportError:
        return {}
    classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Task)
               and c.__module__ == module.__name__]
    return dict(getattr(classes[0], "HEADLINE", {})) if classes else {}


def probe_table(ok: list[dict], variants: list[str], headline: dict) -> list[str]:
    """Each headline probe's score on the trained model beside the same probe on the random-init control
    and their difference: a selectivity alone hides whether the control already decodes the target."""
    lines = []
    for sel in [m for m in headline.get("signatures", []) if m.endswith("_selectivity")]:
        trained, control = sel.removesuffix("_selectivity"), sel.replace("_selectivity", "_control")
        cols = {name: by_variant(ok, name) for name in (trained, control, sel)}
        lines += ["", f"| variant | {trained} (trained) | random-init control | selectivity |", "|---|---|---|---|"]
        lines += [f"| {v} | " + " | ".join(_fmt(list(cols[m].get(v, {}).values())) for m in cols) + " |"
                  for v in variants]
    return lines


def wall_time_lines(recs: list[dict]) -> list[str]:
    """Wall time of every `ablate` invocation that wrote into these grid folders (wall_times.jsonl, one line an
    invocation; wall_time_*.json from runners that kept only the last)."""
    entries = []
    for grid_dir in sorted({Path(r["folder"]).parent.parent for r in recs if r.get("folder")}):
        log = grid_dir / "wall_times.jsonl"
        if log.is_file():
            entries += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        entries += [json.loads(p.read_text()) for p in sorted(grid_dir.glob("wall_time_*.json"))]
    if not entries:
        return []
    parts = [f"{e['seconds'] / 60:.1f} min for {e['runs']} run(s)"
             + (f" and {e['retested']} re-test(s)" if e.get("retested") else "") + f" with {e['jobs']} job(s)"
             for e in entries]
    total = sum(e["seconds"] for e in entries) / 60
    return [f"Wall time of the `ablate` invocations: {'; '.join(parts)}; {total:.1f} min in all."]


def markdown(records: list[dict]) -> str:
    lines = []
    for grid in sorted({r["grid"] for r in records}):
        recs = [r for r in records if r["grid"] == grid]
        ok = [r for r in recs if r["status"] == "ok"]
        headline = headline_for(recs)
        variants = sorted({r["variant"] for r in recs}, key=lambda v: (v != "baseline", v))  # baseline first
        capability = headline.get("capability")
        metrics = [m for m in [capability, *headline.get("signatures", [])] if m]
        lines += [f"## {grid} (task {recs[0]['task']})", ""]
        header = ["variant", *metrics]
        has_ref = capability and "baseline" in variants
        if has_ref:
            header.append(f"Δ {capability} vs baseline (paired by seed)")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        values = {m: by_variant(ok, m) for m in metrics}
        for v in variants:
            cells = [v] + [_fmt(list(values[m].get(v, {}).values())) for m in metrics]
            if has_ref:
                cells.append(_fmt(paired_gap(values[capability], v)) if v != "baseline" else "–")
            lines.append("| " + " | ".join(cells) + " |")
        for gap, (variant, reference, metric) in headline.get("gaps", {}).items():
            if variant in variants and reference in variants:
                diffs = paired_gap(by_variant(ok, metric), variant, reference)
                lines += ["", f"**{gap}**: {metric} of {variant} minus {reference}, paired by seed: {_fmt(diffs)}"]
        lines += probe_table(ok, variants, headline)
        fit_minutes = sum(r.get("fit_seconds", 0) + r.get("test_seconds", 0) for r in recs) / 60
        lines += ["", f"{len(ok)} of {len(recs)} runs finished"
                  + (f"; run time summed over runs: {fit_minutes:.1f} min." if fit_minutes else ".")]
        lines += wall_time_lines(recs)
        for r in recs:
            if r["status"] != "ok":
                lines.append(f"- FAILED {r['variant']}/seed{r['seed']} in {r.get('phase')}: "
                             f"{r.get('error', '').splitlines()[-1:]}")
        lines.append("")
    return "\n".join(lines)


def plot_capability_vs_signatures(records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    headline = headline_for(records)
    capability, written = headline.get("capability"), []
    if not capability:
        return written
    cap = by_variant(ok, capability)
    for sig in headline.get("signatures", []):
        sigv = by_variant(ok, sig)
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        for v in cap:
            if v not in sigv:
                continue
            xm, xs, _ = summarize(list(sigv[v].values()))
            ym, ys, n = summarize(list(cap[v].values()))
            ax.errorbar(xm, ym, xerr=xs, yerr=ys, fmt="o", capsize=4, label=f"{v} (n={n})")
        ax.set(xlabel=f"mesa-signature: {sig}", ylabel=f"capability: {capability}"
               + (" (lower is better)" if headline.get("lower_is_better") else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"capability_vs_{_slug(sig)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _slug(metric: str) -> str:
    return metric.replace("/", "_")


def plot_task_curves(records: list[dict], out: Path) -> list[Path]:
    """Each task's own curves, from the files its runs wrote: e(k) (icl_curve.csv); for the maze, the shifted
    outcomes per variant and the proxy rate against cheese-to-corner distance (maze_proxy_by_distance.csv)."""
    return _icl_curves(records, out) + _maze_curves(records, out)


def _ok_with(records: list[dict], name: str) -> list[tuple[dict, Path]]:
    """(record, its run folder's file `name`) of finished runs that have one (records from a csv have no folder)."""
    return [(r, Path(r["folder"]) / name) for r in records
            if r["status"] == "ok" and r.get("folder") and (Path(r["folder"]) / name).is_file()]


def _icl_curves(records: list[dict], out: Path) -> list[Path]:
    """From the logged e(k) metrics (so a results.csv suffices), else from each run's icl_curve.csv."""
    curves = defaultdict(list)
    for r in records:
        if r["status"] != "ok":
            continue
        rows = icl_curve.rows_from_metrics(r["metrics"])
        if not rows and r.get("folder") and (Path(r["folder"]) / "icl_curve.csv").is_file():
            rows = icl_curve.read(Path(r["folder"]) / "icl_curve.csv")
        if rows:
            curves[r["variant"]].append(rows)
    if not curves:
        return []
    path = out / "e_k_by_variant.png"
    icl_curve.plot_variants(curves, path)
    return [path]


def _maze_curves(records: list[dict], out: Path) -> list[Path]:
    runs = sorted(_ok_with(records, maze_report.PROXY_CSV), key=lambda x: (x[0]["variant"] != "baseline",
                                                                           x[0]["variant"], x[0]["seed"]))
    if not runs:
        return []
    curves, outcomes = defaultdict(list), defaultdict(lambda: defaultdict(list))
    for r, path in runs:
        curves[r["variant"]].append(maze_report.read_proxy(path))
        for key in ("p_cheese", "p_corner"):
            if f"shifted/{key}" in r["metrics"]:
                outcomes[r["variant"]][key].append(r["metrics"][f"shifted/{key}"])
    bars, by_distance = out / "maze_shifted_outcomes.png", out / "maze_proxy_by_distance.png"
    maze_report.plot_outcomes(outcomes, bars)
    maze_report.plot_proxy_by_distance(curves, by_distance)
    return [bars, by_distance]


def report(dirs: list[Path | str], out: Path | str | None = None) -> Path:
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out else (dirs[0].parent if dirs[0].suffix == ".csv" else dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(dirs)
    if not records:
        raise SystemExit(f"error: no run records (result.json) under {', '.join(map(str, dirs))}")
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["task", "variant", "seed", "metric", "value"])
        w.writeheader()
        w.writerows(long_rows(records))
    grids = sorted({r["grid"] for r in records})
    (out / HEADLINES).write_text(json.dumps({g: headline_for([r for r in records if r["grid"] == g]) for g in grids},
                                            indent=1) + "\n")
    text = markdown(records)
    plots = plot_capability_vs_signatures(records, out) + plot_task_curves(records, out)
    text += "\nplots: " + ", ".join(p.name for p in plots) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    return out


