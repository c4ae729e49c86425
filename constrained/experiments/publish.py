"""Writing a report into its folder without ever replacing a file with less than it held.

A report made from run records (result.json) is made from the primary record, so it may replace an earlier one,
except that it must not drop runs an earlier results.csv there holds (a shard's report over a merged one). A
report rebuilt from a results.csv is made from a derived record: it replaces a file there only if every line of
the old report.md is in the new one (or is a beginning of one, a statement the new one makes in more detail) and
headlines.json keeps everything it kept. Otherwise nothing is written and the error says where to write instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from constrained.experiments.results import HEADLINES, ReportError, Stored, read_headlines, read_json, read_results_csv
from constrained.files import write_bytes, write_text

PLOTS = "plots: "


def plot_names(text: str) -> list[str]:
    """The plots a report.md names on its `plots:` line."""
    line = next((x for x in text.splitlines() if x.startswith(PLOTS)), PLOTS)
    return [p.strip() for p in line[len(PLOTS):].split(",") if p.strip()]


def lost_lines(old: str, new: str) -> list[str]:
    """The lines of report `old` that report `new` does not keep."""
    new_lines = new.splitlines()
    kept, plots = set(new_lines), set(plot_names(new))
    lost = []
    for line in old.splitlines():
        if not line.strip() or line in kept:
            continue
        if line.startswith(PLOTS):
            missing = [p for p in plot_names(line) if p not in plots]
            lost += [PLOTS + ", ".join(missing)] if missing else []
        elif not any(n.startswith(line) for n in new_lines):
            lost.append(line)
    return lost


def _runs(path: Path) -> set[tuple]:
    try:
        return {(r["task"], r["variant"], r["seed"]) for r in read_results_csv(path)}
    except ReportError:  # a damaged file holds nothing a new one could lose
        return set()


def _stored(path: Path) -> dict[str, Stored]:
    try:
        data = read_json(path)
    except ReportError:
        return {}
    return {grid: read_headlines(path, grid) for grid in data} if isinstance(data, dict) else {}


def check(out: Path, texts: dict[str, str], runs: set[tuple], from_csv: bool) -> None:
    """Raises ReportError if writing texts (file name -> content) into out would replace a file with less."""
    if (out / "results.csv").is_file():
        dropped = _runs(out / "results.csv") - runs
        if dropped:
            names = ", ".join(f"{v}/seed{s}" for _, v, s in sorted(dropped)[:3]) + (", ..." if len(dropped) > 3 else "")
            raise ReportError(f"{out / 'results.csv'} holds {len(dropped)} run(s) these sources do not ({names}); "
                              f"nothing written: give all the sources, or --out with a new folder")
    if not from_csv:
        return
    if (out / "report.md").is_file():
        lost = lost_lines((out / "report.md").read_text(errors="replace"), texts["report.md"])
        if lost:
            raise ReportError(f"{out / 'report.md'}: rebuilding it from results.csv would lose {len(lost)} line(s) "
                              f"that results.csv and {HEADLINES} do not hold (first: {lost[0][:80]!r}); nothing "
                              f"written: give --out with a new folder")
    if (out / HEADLINES).is_file():
        new = {grid: read_headlines_text(texts[HEADLINES], grid) for grid in _stored(out / HEADLINES)}
        for grid, old in _stored(out / HEADLINES).items():
            lost = [k for k, v in old.to_dict().items() if v not in (None, {}, []) and new[grid].to_dict()[k]
                    in (None, {}, [])]
            if lost:
                raise ReportError(f"{out / HEADLINES}: rebuilding it would lose grid {grid}'s {', '.join(lost)}; "
                                  f"nothing written: give --out with a new folder")


def read_headlines_text(text: str, grid: str) -> Stored:
    entry = json.loads(text).get(grid)
    return Stored(**entry) if entry else Stored()


def write(out: Path, texts: dict[str, str], plots: list[Path]) -> None:
    """The plots first, report.md last (it names them), each file whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    for plot in plots:
        if plot.resolve() != (out / plot.name).resolve():
            write_bytes(out / plot.name, plot.read_bytes())
    for name in ("results.csv", HEADLINES, "report.md"):
        write_text(out / name, texts[name])
