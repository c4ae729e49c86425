"""The tables every backdoored task's report shares: defection rates per variant, and the backdoor probes
(measure/defection.py), each with its selectivity over the random-init control, its AUROC, the control's and the
windows of each class it rests on, "undefined" where a class had too few. The task names its columns, its probes
and what they read."""

from __future__ import annotations

import math

from constrained.measure.defection import MIN_PER_CLASS
from constrained.tasks.cells import fmt


def values(records: list[dict], variant: str, metric: str) -> list[float]:
    return [r["metrics"][metric] for r in records if r["variant"] == variant and metric in r["metrics"]
            and not math.isnan(r["metrics"][metric])]


def counted(values: list[float]) -> str:
    """Window counts over runs: one number if every run had the same, else min–max."""
    lo, hi = int(min(values)), int(max(values))
    return str(lo) if lo == hi else f"{lo}–{hi}"


def probe_cell(records: list[dict], variant: str, metric: str, runs: int) -> str:
    """mean ± sd over the runs where the AUROC is defined, and how many runs it was undefined in."""
    found = values(records, variant, metric)
    if not found:
        return f"undefined (< {MIN_PER_CLASS} of a class)"
    return fmt(found) + (f"; undefined in {runs - len(found)} of {runs} runs" if len(found) < runs else "")


def probe_lines(records: list[dict], variants: list[str], probes: tuple[tuple[str, str], ...],
                preamble: str) -> list[str]:
    """The probe table: per variant and probe (metric prefix, what it reads), selectivity first (the number to
    read), then the AUROC, the random-init control's and the windows of each class scored."""
    rows = []
    for v in variants:
        for prefix, what in probes:
            runs = len(values(records, v, f"test/{prefix}_n_pos"))
            if not runs:
                continue
            cells = [probe_cell(records, v, f"test/{prefix}_{name}_best", runs)
                     for name in ("selectivity", "auroc", "auroc_control")]
            n = f"{counted(values(records, v, f'test/{prefix}_n_pos'))} / " \
                f"{counted(values(records, v, f'test/{prefix}_n_neg'))}"
            rows.append(f"| {v} | {what} | " + " | ".join(cells) + f" | {n} |")
    if not rows:
        return []
    return [preamble + f" n = windows of each class scored; undefined = fewer than {MIN_PER_CLASS} of a class where "
            "the probe is fitted or scored.", "",
            "| variant | probe | selectivity | AUROC | random init | n pos / neg |", "|---|---|---|---|---|---|",
            *rows, ""]


def rate_lines(records: list[dict], variants: list[str], columns: tuple[tuple[str, str], ...],
               preamble: str) -> list[str]:
    """One row per variant, one column per (metric, heading) any record has."""
    cols = [(m, name) for m, name in columns if any(m in r["metrics"] for r in records)]
    return [preamble, "", "| variant | " + " | ".join(name for _, name in cols) + " |",
            "|---" * (len(cols) + 1) + "|"] + [
        f"| {v} | " + " | ".join(fmt(values(records, v, m)) for m, _ in cols) + " |" for v in variants]
