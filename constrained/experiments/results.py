"""What a report is made from: the run records (result.json) under grid folders, or a results.csv written by an
earlier report with headlines.json beside it, which keeps what the csv cannot hold (the task class and headline,
the runs the grid file lists, unfinished runs, run and wall times, the task sections' lines and plots).

A file that does not parse fully is an error naming the file and the line: a results.csv cut short must not be
read as fewer runs, nor its last, cut-off value as a number.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from constrained.experiments.records import RECORD

HEADLINES = "headlines.json"
FIELDS = ["task", "variant", "seed", "metric", "value"]
WALL_TIMES = "wall_times.jsonl"


class ReportError(ValueError):
    """A source a report or comparison cannot use; the message names the file (and line)."""


@dataclass
class Stored:
    """What a report keeps of a grid in headlines.json. None: not known (a file written before it was kept)."""

    task_class: str | None = None
    headline: dict = field(default_factory=dict)
    grid_file: str | None = None
    runs: list[str] | None = None  # every run of the grid file, "variant/seed<k>"
    unfinished: list[dict] | None = None
    run_seconds: float | None = None
    wall_times: list[dict] | None = None
    sections: list[dict] | None = None  # {"lines": [...], "plots": [file names]}
    timed_runs: int | None = None  # how many runs run_seconds sums over, when not every finished run

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Sources:
    records: list[dict]  # one per (grid, variant, seed); a record read from a csv has no "folder"
    stored: dict[str, Stored] = field(default_factory=dict)  # grid -> what the csv's headlines.json keeps
    csv_dirs: dict[str, Path] = field(default_factory=dict)  # grid -> folder of the results.csv it was read from
    unrecorded: list[dict] = field(default_factory=list)  # run folders with no result.json
    wall_times: dict[str, list[dict]] = field(default_factory=dict)  # grid -> entries of its wall_times.jsonl


def load(sources: list[Path]) -> Sources:
    """Every run record of the sources, later sources winning for the same (grid, variant, seed)."""
    out, records = Sources([]), {}
    for src in map(Path, sources):
        if src.suffix == ".csv":
            grid = grid_of(src)
            found = read_results_csv(src, grid)
            stored = read_headlines(src.with_name(HEADLINES), grid)
            for rec in found:
                rec.update(task_class=stored.task_class or task_class_named(rec["task"], stored.headline),
                           headline=stored.headline)
            out.stored[grid] = stored
            out.csv_dirs[grid] = src.parent
        elif src.is_dir():
            found = []
            for path in sorted(src.rglob(RECORD)):
                found.append({**read_result(path), "folder": str(path.parent)})
            out.unrecorded += unrecorded_runs(src)
            for log in sorted(src.rglob(WALL_TIMES)):
                out.wall_times.setdefault(log.parent.name, []).extend(read_wall_times(log))
        else:
            raise ReportError(f"{src}: no such folder or results.csv")
        records.update({(r["grid"], r["variant"], r["seed"]): r for r in found})
    out.records = list(records.values())
    recorded = set(records)
    out.unrecorded = [u for u in out.unrecorded if (u["grid"], u["variant"], u["seed"]) not in recorded]
    return out


def read_text(path: Path) -> str:
    """A file's text, which must be UTF-8 (ReportError naming the file and line otherwise)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ReportError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ReportError(f"{path}: line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})"
                          ) from None


def read_json(path: Path):
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def read_result(path: Path) -> dict:
    """A run record, checked: grid, variant, seed and status, and numbers for the metrics of a finished run."""
    rec = read_json(path)
    if not isinstance(rec, dict) or not {"grid", "variant", "seed", "status"} <= set(rec) \
            or not isinstance(rec["seed"], int):
        raise ReportError(f"{path}: not a run record (it needs grid, variant, an integer seed and status)")
    metrics = rec.get("metrics")
    if rec["status"] == "ok" and not (isinstance(metrics, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())):
        raise ReportError(f"{path}: a finished run's record needs metrics, a mapping of names to numbers")
    return rec


def grid_of(path: Path) -> str:
    """The grid of a results.csv: the one grid headlines.json beside it names, else the name of its folder."""
    sidecar = path.with_name(HEADLINES)
    data = read_json(sidecar) if sidecar.is_file() else {}
    if isinstance(data, dict) and len(data) == 1 and path.parent.name not in data:
        return next(iter(data))
    return path.parent.name


def read_results_csv(path: Path, grid: str | None = None) -> list[dict]:
    """Finished-run records from a long-format results.csv (task, variant, seed, metric, value), every row
    checked; grid: by default the name of the folder the file is in."""
    if not path.is_file():
        raise ReportError(f"{path} not found")
    text = read_text(path)
    if not text.strip():
        raise ReportError(f"{path}: line 1: empty, no header {','.join(FIELDS)}")
    if not text.endswith("\n"):
        raise ReportError(f"{path}: line {text.count(chr(10)) + 1}: the file ends inside a row (it was cut short); "
                          f"its last value cannot be trusted")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    if header != FIELDS:
        raise ReportError(f"{path}: line 1: header {','.join(header)}, expected {','.join(FIELDS)}")
    runs: dict[tuple, dict] = {}
    for row in reader:
        where = f"{path}: line {reader.line_num}"
        if len(row) != len(FIELDS):
            raise ReportError(f"{where}: {len(row)} fields, expected {len(FIELDS)} ({','.join(FIELDS)})")
        task, variant, seed, metric, value = row
        try:
            seed, value = int(seed), float(value)
        except ValueError:
            raise ReportError(f"{where}: seed {seed!r} is not an integer or value {value!r} not a number") from None
        if not (task and variant and metric):
            raise ReportError(f"{where}: task, variant and metric must not be empty")
        rec = runs.setdefault((task, variant, seed), {"grid": grid or path.parent.name, "task": task,
                                                      "variant": variant, "seed": seed, "status": "ok", "metrics": {}})
        if metric in rec["metrics"]:
            raise ReportError(f"{where}: a second value of {metric} for {variant}/seed{seed}")
        rec["metrics"][metric] = value
    return list(runs.values())


def read_headlines(path: Path, grid: str) -> Stored:
    """The grid's entry of headlines.json; a file of the earlier form (the headline alone, gaps as a mapping)
    is read too. Stored() when there is no file or no entry."""
    if not path.is_file():
        return Stored()
    data = read_json(path)
    entry = data.get(grid) if isinstance(data, dict) else None
    if entry is None:
        return Stored()
    if not isinstance(entry, dict):
        raise ReportError(f"{path}: the entry of grid {grid} is not a mapping")
    if "capability" in entry:  # the earlier form: {grid: headline}
        entry = {"headline": entry}
    headline = dict(entry.get("headline") or {})
    if isinstance(headline.get("gaps"), dict):  # the earlier form: {name: [variant, reference, metric]}
        headline["gaps"] = [{"name": name, "variant": v, "reference": r, "metric": m}
                            for name, (v, r, m) in headline["gaps"].items()]
    known = set(Stored.__dataclass_fields__)
    return Stored(**{**{k: v for k, v in entry.items() if k in known}, "headline": headline})


def import_task(class_path: str | None):
    """The task class at class_path, or None if there is none or it cannot be imported."""
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def task_class_named(task: str, headline: dict) -> str | None:
    """For a results.csv whose headlines.json predates the task class being kept: the task class of the
    package constrained.tasks.<task> (the grid's task name), the one whose headline is the stored one if it
    holds several."""
    from constrained.tasks.task import Headline, Task

    if not re.fullmatch(r"[A-Za-z_]\w*", task):
        return None
    try:
        module = importlib.import_module(f"constrained.tasks.{task}")
    except ImportError:
        return None
    found = {f"{module.__name__}.{name}": obj for name, obj in vars(module).items()
             if inspect.isclass(obj) and issubclass(obj, Task) and obj.__module__.startswith(module.__name__)}
    if headline and len(found) > 1:
        wanted = Headline.from_dict(headline)
        found = {k: c for k, c in found.items() if getattr(c, "headline", None) == wanted}
    return next(iter(found)) if len(found) == 1 else None


def unrecorded_runs(src: Path) -> list[dict]:
    """Run folders (<grid>/<variant>/seed<k>) under src that hold no result.json: started, not finished."""
    out = []
    for folder in sorted(p for p in src.rglob("seed*") if p.is_dir() and re.fullmatch(r"seed\d+", p.name)):
        if not (folder / RECORD).exists() and folder.parent.parent.exists():
            out.append({"grid": folder.parent.parent.name, "variant": folder.parent.name,
                        "seed": int(folder.name[4:]), "status": "missing", "folder": str(folder),
                        "reason": "its folder has no result.json (still running, or stopped before it finished)"})
    return out


def read_wall_times(path: Path) -> list[dict]:
    entries = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}: line {i}: not valid JSON ({e.msg})") from None
    return entries
