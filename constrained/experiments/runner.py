"""`constrained ablate GRID.yaml`: every (variant, seed) of a grid trained and tested the same way.

Each run is `constrained fit` then `constrained test` in its own process and its own folder
OUT/<grid>/<variant>/seed<k>/. A finished run writes result.json atomically; a rerun skips
finished runs and resumes interrupted ones from their last checkpoint, so nothing is lost.
"""

from __future__ import annotations

import csv
import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

GRID_KEYS = {"name", "task", "base", "seeds", "variants", "overrides"}
VARIANT_KEYS = {"name", "config", "overrides"}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class GridError(ValueError):
    """A grid file that cannot run; raised before any run starts."""


@dataclass
class Variant:
    name: str
    config: Path
    overrides: dict = field(default_factory=dict)


@dataclass
class Grid:
    name: str
    task: str
    base: Path
    seeds: list[int]
    variants: list[Variant]
    overrides: dict = field(default_factory=dict)

    def runs(self) -> list[Run]:
        """All runs in a fixed order (variants as listed, then seeds), the order shards index."""
        return [Run(self, v, s) for v in self.variants for s in self.seeds]


@dataclass
class Run:
    grid: Grid
    variant: Variant
    seed: int

    @property
    def key(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / self.grid.name / self.variant.name / f"seed{self.seed}"

    def args(self, folder: Path) -> list[str]:
        args = ["--config", str(self.grid.base), "--config", str(self.variant.config)]
        for key, value in {**self.grid.overrides, **self.variant.overrides}.items():
            args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return args + ["--seed_everything", str(self.seed), "--trainer.default_root_dir", str(folder), *QUIET]


def _mapping(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{what} must be a mapping of dotted config keys to values, got {value!r}")
    return value


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise GridError(f"{path}: unknown grid key(s) {sorted(unknown)}; allowed: {sorted(GRID_KEYS)}")
    for key in ("task", "base", "seeds", "variants"):
        if key not in raw:
            raise GridError(f"{path}: missing key '{key}'")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise GridError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{path}: duplicate seeds in {seeds}")
    base = Path(raw["base"])
    if not base.is_file():
        raise GridError(f"{path}: base config {base} does not exist")
    variants, names = [], set()
    for i, v in enumerate(raw["variants"] or []):
        if not isinstance(v, dict) or "name" not in v or "config" not in v:
            raise GridError(f"{path}: variant #{i} needs 'name' and 'config', got {v!r}")
        extra = set(v) - VARIANT_KEYS
        if extra:
            raise GridError(f"{path}: variant '{v['name']}' has unknown key(s) {sorted(extra)}")
        if v["name"] in names:
            raise GridError(f"{path}: duplicate variant name '{v['name']}'")
        names.add(v["name"])
        config = Path(v["config"])
        if not config.is_file():
            raise GridError(f"{path}: variant '{v['name']}': config file {config} does not exist")
        variants.append(Variant(str(v["name"]), config, _mapping(v.get("overrides"), f"variant '{v['name']}'")))
    if not variants:
        raise GridError(f"{path}: the variant list is empty")
    return Grid(str(raw.get("name", path.stem)), str(raw["task"]), base, seeds, variants,
                _mapping(raw.get("overrides"), "overrides"))


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise GridError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise GridError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


def headline_of(base: Path) -> dict:
    """The task's HEADLINE (capability and signature metrics), from the data class the base config names."""
    class_path = (yaml.safe_load(base.read_text()).get("data") or {}).get("class_path", "")
    module, _, name = class_path.rpartition(".")
    if not module.startswith("constrained"):
        return {}
    return dict(getattr(getattr(importlib.import_module(module), name), "HEADLINE", {}))


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(folder: Path, record: dict) -> None:
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, folder / "result.json")  # atomic: a record is whole or absent


def _die_with_parent():
    """Children die with the runner, so a killed grid leaves no orphan writing into a run folder."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _latest_metrics(folder: Path) -> dict[str, float]:
    versions = sorted((folder / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    metrics: dict[str, float] = {}
    with (versions[-1] / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            metrics.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return metrics


PHASES = {"fit": ["--ckpt_path", "last"], "test": ["--ckpt_path", "last", "--verbose", "false"]}


def execute(run: Run, out: Path, threads: int, phases: tuple[str, ...] = ("fit", "test")) -> dict:
    """fit (resuming from the last checkpoint if one exists) then test, in child processes.
    phases=("test",) re-tests a finished run from its last checkpoint, keeping its fit time."""
    folder = run.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "constrained"]
    record = {"grid": run.grid.name, "task": run.grid.task, "variant": run.variant.name, "seed": run.seed,
              "args": run.args(folder), "headline": headline_of(run.grid.base)}
    times = {k: v for k, v in (read_record(folder) or {}).items() if k == "fit_seconds" and "fit" not in phases}
    for phase in phases:
        extra = PHASES[phase]
        start = time.time()
        with (folder / f"{phase}.log").open("w") as log:
            proc = subprocess.run([*base, phase, *run.args(folder), *extra], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, preexec_fn=_die_with_parent)
        times[f"{phase}_seconds"] = round(time.time() - start, 2)
        if proc.returncode != 0:
            tail = (folder / f"{phase}.log").read_text().strip().splitlines()[-15:]
            record.update(status="failed", phase=phase, error="\n".join(tail), **times)
            write_record(folder, record)
            return record
    record.update(status="ok", metrics=_latest_metrics(folder), **times)
    write_record(folder, record)
    return record


def ablate(grid_path: str, out: str = "runs/ablations", jobs: int = 1, shard: str | None = None,
           retest: bool = False) -> int:
    """retest: also re-run the test phase of finished runs (from their last checkpoint), e.g. after a
    metric was added; their training is not repeated."""
    from tqdm import tqdm

    grid = load_grid(grid_path)
    i, n = parse_shard(shard)
    if jobs < 1:
        raise GridError(f"--jobs must be >= 1, got {jobs}")
    out_dir = Path(out)
    mine = [r for k, r in enumerate(grid.runs()) if k % n == i]
    todo = [r for r in mine if (read_record(r.folder(out_dir)) or {}).get("status") != "ok"]
    again = [r for r in mine if r not in todo] if retest else []
    print(f"grid {grid.name}: {len(grid.runs())} runs, shard {i}/{n}: {len(mine)}, "
          f"{len(mine) - len(todo)} already finished, {len(todo)} to run with {jobs} job(s)"
          + (f", {len(again)} to re-test" if retest else ""))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start, failed = time.time(), []
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(todo) + len(again), unit="run") as bar:
        futures = {pool.submit(execute, r, out_dir, threads): r for r in todo}
        futures.update({pool.submit(execute, r, out_dir, threads, ("test",)): r for r in again})
        for fut in as_completed(futures):
            rec = fut.result()
            bar.set_postfix_str(f"{rec['variant']}/seed{rec['seed']}: {rec['status']}")
            bar.update()
            if rec["status"] != "ok":
                failed.append(rec)
                tqdm.write(f"run {rec['variant']}/seed{rec['seed']} failed in {rec['phase']}:\n{rec['error']}")
    wall = time.time() - start
    (out_dir / grid.name).mkdir(parents=True, exist_ok=True)
    # one line per invocation (appended), so a grid run in several sittings or shards keeps every wall time
    with (out_dir / grid.name / "wall_times.jsonl").open("a") as f:
        f.write(json.dumps({"shard": f"{i}/{n}", "runs": len(todo), "retested": len(again), "jobs": jobs,
                            "seconds": round(wall, 1), "cpus": os.cpu_count(),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    print(f"{len(todo)} run(s) in {wall / 60:.1f} min, {len(failed)} failed")
    from constrained.experiments.report import report

    report([out_dir / grid.name])
    return 1 if failed else 0
