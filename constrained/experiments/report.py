"""`constrained report DIR [DIR ...]`: merge run records (of any number of shards) into results.csv,
report.md (mean ± std over seeds per variant) and plots, with headlines.json beside them.

The report names no task: the headline metrics, the gaps stated in words and the extra sections (tables
and plots) come from the task class each run recorded (Task.headline, Task.report_sections).

headlines.json keeps, per grid, what results.csv cannot hold: the task class and headline, the runs of the grid
file, the runs that did not finish, run and wall times, and the lines and plots of the task's sections (which may
read the run folders). A report rebuilt from a results.csv alone is therefore the same report; one rebuilt from
a csv whose headlines.json predates that keeps what it can, and never replaces a file with less (publish.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from constrained.experiments import publish
from constrained.experiments.results import FIELDS, HEADLINES, ReportError, Sources, Stored, import_task, load
from constrained.experiments.tables import (
    by_variant,
    fmt,
    grid_markdown,
    paired_gap,
    plot_capability_vs_signatures,
    runs_lines,
    summarize,
    unfinished_entry,
)
from constrained.files import csv_text
from constrained.tasks.task import Headline, Section

__all__ = ["FIELDS", "HEADLINES", "ReportError", "by_variant", "fmt", "grid_markdown", "headline_for", "import_task",
           "load_records", "paired_gap", "report", "summarize", "task_of"]


def load_records(sources: list[Path]) -> list[dict]:
    """Every run record, one per (grid, variant, seed) (later sources win). A source is a grid folder (its
    result.json files) or a results.csv written by an earlier report (long format: its grid is its folder's
    name), so results merged elsewhere can be reported again without the run folders."""
    return load(list(map(Path, sources))).records


def long_rows(records: list[dict]) -> list[dict]:
    rows = [{"task": r["task"], "variant": r["variant"], "seed": r["seed"], "metric": m, "value": v}
            for r in records if r["status"] == "ok" for m, v in sorted(r["metrics"].items())]
    return sorted(rows, key=lambda x: (x["task"], x["variant"], x["seed"], x["metric"]))


def task_of(records: list[dict]):
    """The task class of a grid's records (the first importable one), or None."""
    for r in records:
        task = import_task(r.get("task_class"))
        if task is not None:
            return task
    return None


def headline_for(records: list[dict]) -> Headline | None:
    """For records read back from a results.csv, the headline their report was made with (kept beside the csv):
    the task's headline may have moved on since (a gap renamed with its variants) and the csv holds only the
    metrics of then. Otherwise the task's current headline, so a report made after a metric is added shows it;
    else the one stored in the records (the task class cannot be imported here)."""
    stored = next((r["headline"] for r in records if r.get("headline")), None)
    if stored and all("folder" not in r for r in records):
        return Headline.from_dict(stored)
    task = task_of(records)
    if task is not None and hasattr(task, "headline"):
        return task.headline
    return Headline.from_dict(stored) if stored else None


def expected_runs(grid: str, recs: list[dict], stored: Stored, from_csv: bool, grid_files: list[Path]
                  ) -> tuple[str | None, list[str] | None, str | None]:
    """(the grid file, its runs as variant/seed<k>, why it could not be read): the file given, else the one the
    records name; a grid rebuilt from a csv keeps the runs its grid file listed when it was reported."""
    from constrained.experiments.grid import GridError, load_grid

    for path in grid_files:
        grid_def = load_grid(path)
        if grid_def.name == grid:
            return str(path), [r.key for r in grid_def.runs()], None
    if from_csv:
        return stored.grid_file, stored.runs, None
    path = next((r["grid_file"] for r in recs if r.get("grid_file")), None)
    if path is None:
        return None, None, None
    try:
        return path, [r.key for r in load_grid(path).runs()], None
    except GridError as e:
        return path, None, str(e)


def notes_of(grid_file: str | None) -> list[str]:
    """The grid file's notes (what its variants mean), as lines under the table; none if it cannot be read."""
    from constrained.experiments.grid import GridError, load_grid

    try:
        notes = load_grid(grid_file).notes if grid_file else []
    except (GridError, OSError):
        return []
    return ["", *notes] if notes else []


def grid_report(grid: str, src: Sources, staged: Path, grid_files: list[Path]) -> tuple[list[str], list[Path], dict]:
    """(Markdown lines, plots, what headlines.json keeps) of one grid."""
    recs = [r for r in src.records if r["grid"] == grid]
    ok = [r for r in recs if r["status"] == "ok"]
    from_csv = grid in src.csv_dirs and all("folder" not in r for r in recs)
    stored = src.stored.get(grid, Stored()) if from_csv else Stored()
    headline, task = headline_for(recs), task_of(recs)
    grid_file, expected, unreadable = expected_runs(grid, recs, stored, from_csv, grid_files)
    if from_csv and stored.unfinished is not None:
        unfinished = list(stored.unfinished)
    else:
        unfinished = [unfinished_entry(r) for r in recs if r["status"] != "ok"]
        unfinished += [unfinished_entry(u) for u in src.unrecorded if u["grid"] == grid]
    known = {f"{r['variant']}/seed{r['seed']}" for r in [*recs, *unfinished]}
    unfinished += [unfinished_entry({"variant": key.rsplit("/", 1)[0], "seed": int(key.rsplit("/seed", 1)[1]),
                                     "status": "missing", "reason": f"listed in {grid_file}, no record of it"})
                   for key in expected or [] if key not in known]
    if from_csv:  # None: a headlines.json that predates keeping them, kept as not known
        seconds, walls = stored.run_seconds, stored.wall_times
    else:
        seconds = sum(r.get("fit_seconds", 0) + r.get("test_seconds", 0) for r in recs)
        walls = src.wall_times.get(grid, [])
    timed = stored.timed_runs if from_csv else sum("fit_seconds" in r for r in ok)
    timed = None if timed is not None and timed >= len(ok) else timed
    runs = runs_lines(len(ok), unfinished, seconds or 0.0, walls or [], grid_file, timed)
    if unreadable:
        runs.append(f"(grid file {grid_file} could not be read, so runs it lists that have no folder are not "
                    f"counted: {unreadable})")
    text = grid_markdown(grid, recs, headline, runs) + notes_of(grid_file)
    plots = plot_capability_vs_signatures(ok, headline, staged) if headline is not None and ok else []
    sections = stored.sections if from_csv and stored.sections is not None else \
        drawn_sections(task, ok, staged, src.csv_dirs.get(grid) if from_csv else None, plots)
    for s in sections:
        text += ["", *s["lines"]] if s["lines"] else []
        for name in s["plots"]:
            path = staged / name if (staged / name).is_file() else src.csv_dirs.get(grid, staged) / name
            plots += [path] if path.is_file() else []
    class_path = next((r["task_class"] for r in recs if r.get("task_class")), None)
    counted = not (from_csv and stored.unfinished is None and not grid_files)
    keep = Stored(class_path, headline.to_dict() if headline else {}, grid_file, expected,
                  unfinished if counted else None, seconds, walls, sections, timed)
    return text + [""], plots, keep.to_dict()


def drawn_sections(task, ok: list[dict], staged: Path, csv_dir: Path | None, plots: list[Path]) -> list[dict]:
    """The task's sections drawn from the records; from a csv whose headlines.json predates keeping them, with
    the plots its report.md names that these records cannot draw (drawn from the run folders: the only record
    of them, kept)."""
    sections = []
    for section in getattr(task, "report_sections", ()):
        part: Section = section(ok, staged)
        sections.append({"lines": part.lines, "plots": [p.name for p in part.plots]})
    old = csv_dir / "report.md" if csv_dir is not None else None
    if old is not None and old.is_file():
        drawn = {p.name for p in plots} | {name for s in sections for name in s["plots"]}
        carried = [n for n in publish.plot_names(old.read_text(errors="replace")) if n not in drawn]
        sections += [{"lines": [], "plots": carried}] if carried else []
    return sections


def report(dirs: list[Path | str], out: Path | str | None = None, grid_files: list[Path | str] = ()) -> Path:
    """grid_files: grid files to count the runs against (besides those the records name)."""
    dirs = [Path(d) for d in dirs]
    out = Path(out) if out else (dirs[0].parent if dirs[0].suffix == ".csv" else dirs[0])
    src = load(dirs)
    if not src.records and not src.unrecorded:
        raise ReportError(f"no run records (result.json) under {', '.join(map(str, dirs))}")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        text, plots, headlines = [], [], {}
        for grid in sorted({r["grid"] for r in [*src.records, *src.unrecorded]}):
            lines, grid_plots, headlines[grid] = grid_report(grid, src, staged, list(map(Path, grid_files)))
            text += lines
            plots += grid_plots
        body = "\n".join(text) + "\n" + publish.PLOTS + ", ".join(p.name for p in plots) + "\n"
        texts = {"results.csv": csv_text(long_rows(src.records), FIELDS),
                 HEADLINES: json.dumps(headlines, indent=1) + "\n", "report.md": body}
        from_csv = any(d.suffix == ".csv" for d in dirs)
        publish.check(out, texts, {(r["task"], r["variant"], r["seed"]) for r in src.records if r["status"] == "ok"},
                      from_csv)
        publish.write(out, texts, plots)
    print(body)
    note_losses(dirs, out, body)
    return out


def note_losses(dirs: list[Path], out: Path, body: str) -> None:
    """A report rebuilt from a csv into a new folder: the lines of the report beside the csv it lacks."""
    if len(dirs) != 1 or dirs[0].suffix != ".csv" or dirs[0].parent.resolve() == out.resolve():
        return
    old = dirs[0].parent / "report.md"
    lost = publish.lost_lines(old.read_text(errors="replace"), body) if old.is_file() else []
    if lost:
        print(f"constrained report: note: {len(lost)} line(s) of {old} are not in {out / 'report.md'}: "
              f"{dirs[0].name} and its {HEADLINES} do not hold them (first: {lost[0][:80]!r})", file=sys.stderr)
