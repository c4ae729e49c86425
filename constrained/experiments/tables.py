"""The Markdown of a grid's report: the headline table (mean ± std over seeds per variant, the capability gap
paired by seed), the declared gaps, the probe table, the runs finished and those that are not, and the
capability-vs-signature plots. Pure functions of the records and what is stored beside them."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from constrained.tasks.cells import baseline_first, fmt
from constrained.tasks.task import Headline


def summarize(values: list[float]) -> tuple[float, float, int]:
    """mean, sample standard deviation (0 for one value), n."""
    n = len(values)
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else 0.0), n


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


def unfinished_entry(r: dict) -> dict:
    """What the report says of a run that did not finish, as kept in headlines.json."""
    error = (r.get("error") or "").strip().splitlines()
    return {"variant": r["variant"], "seed": r["seed"], "status": r["status"], "phase": r.get("phase"),
            "error": error[-1] if error else "", "log": r.get("log"), "reason": r.get("reason")}


def unfinished_line(u: dict) -> str:
    if u["status"] == "missing":
        return f"- MISSING {u['variant']}/seed{u['seed']}: {u['reason']}"
    return (f"- FAILED {u['variant']}/seed{u['seed']} in {u.get('phase')}: {u.get('error') or '(no message)'} "
            f"(log: {u.get('log') or 'the run folder'})")


def wall_time_lines(entries: list[dict]) -> list[str]:
    """Wall time of every `ablate` invocation that wrote into the grid's folder (wall_times.jsonl)."""
    if not entries:
        return []
    parts = [f"{e['seconds'] / 60:.1f} min for {e['runs']} run(s)"
             + (f" and {e['retested']} re-test(s)" if e.get("retested") else "") + f" with {e['jobs']} job(s)"
             for e in entries]
    total = sum(e["seconds"] for e in entries) / 60
    return [f"Wall time of the `ablate` invocations: {'; '.join(parts)}; {total:.1f} min in all."]


def runs_lines(n_ok: int, unfinished: list[dict], run_seconds: float, wall_times: list[dict],
               grid_file: str | None = None, timed: int | None = None) -> list[str]:
    """How many of the grid's runs finished, the run and wall times, and each run that did not finish, by
    name: a run that is missing is said so, never dropped from the count. timed: how many runs the run time
    sums over, when not all (runs merged from a results.csv carry no times)."""
    total = n_ok + len(unfinished)
    counted = f" of {grid_file}" if grid_file and unfinished else ""
    over = f"the {timed} runs timed here" if timed is not None and timed < n_ok else "runs"
    lines = ["", f"{n_ok} of {total} runs{counted} finished"
             + (f"; run time summed over {over}: {run_seconds / 60:.1f} min." if run_seconds else ".")]
    lines += wall_time_lines(wall_times)
    return lines + [unfinished_line(u) for u in sorted(unfinished, key=lambda u: (u["variant"], u["seed"]))]


def grid_markdown(grid: str, recs: list[dict], headline: Headline | None, runs: list[str] | None = None) -> list[str]:
    """runs: the lines on the grid's runs (runs_lines); by default from the records alone."""
    ok = [r for r in recs if r["status"] == "ok"]
    variants = baseline_first(r["variant"] for r in recs)
    task = next((r["task"] for r in recs if r.get("task")), None)
    lines = [f"## {grid}" + (f" (task {task})" if task else ""), ""]
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
    if runs is None:
        seconds = sum(r.get("fit_seconds", 0) + r.get("test_seconds", 0) for r in recs)
        runs = runs_lines(len(ok), [unfinished_entry(r) for r in recs if r["status"] != "ok"], seconds, [])
    return lines + runs


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
