"""`constrained ablate GRID.yaml`: every (variant, seed) of a grid trained and tested the same way.

Each run is `constrained fit` then `constrained test` in its own process and its own folder
OUT/<grid>/<variant>/seed<k>/. A finished run writes result.json atomically; a rerun skips finished runs
and resumes interrupted ones from their last checkpoint, so nothing is lost. A run being trained by a live
process (this runner's pool, another runner, a cluster job) is locked, and every other process skips it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from constrained.experiments.grid import Grid, GridError, Run, load_grid, parse_shard
from constrained.experiments.records import claim, finished, latest_metrics, read_record, task_class_of, write_record
from constrained.files import unwritable

PHASES = {"fit": ["--ckpt_path", "last"], "test": ["--ckpt_path", "last", "--verbose", "false"]}
BUSY = "busy"  # the status of a run another live process holds; never written as a record


def die_with_parent():
    """Children die with the runner, so a killed grid leaves no orphan writing into a run folder."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def headline_of(class_path: str | None) -> dict:
    """The headline of a task class (a dict, as stored in records), {} when it cannot be imported."""
    from constrained.experiments.results import import_task

    task = import_task(class_path)
    return task.headline.to_dict() if task is not None and hasattr(task, "headline") else {}


def run_env(threads: int) -> dict:
    """A run's environment: a fixed number of CPU threads, so its arithmetic (and with it every digit of its
    results) does not depend on how many runs share the machine."""
    n = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PYTHONUNBUFFERED": "1"}


def execute(run: Run, out: Path, phases: tuple[str, ...] = ("fit", "test")) -> dict:
    """fit (resuming from the last checkpoint if one exists) then test, in child processes, while holding the
    run's lock. phases=("test",) re-tests a finished run from its last checkpoint, keeping its fit time.
    Returns the record, or {"status": "busy"} when another live process holds the run."""
    folder = run.folder(out)
    with claim(folder) as mine:
        if not mine:
            return {"variant": run.variant.name, "seed": run.seed, "status": BUSY}
        if "fit" in phases and finished(folder):  # finished by another process while this one waited
            return read_record(folder)
        return _execute(run, folder, phases)


def _execute(run: Run, folder: Path, phases: tuple[str, ...]) -> dict:
    base = [sys.executable, "-m", "constrained"]
    record = run.record(folder)
    times = {k: v for k, v in (read_record(folder) or {}).items() if k == "fit_seconds" and "fit" not in phases}
    for phase in phases:
        start = time.time()
        log_path = folder / f"{phase}.log"
        with log_path.open("w") as log:
            proc = subprocess.run([*base, phase, *run.args(folder), *PHASES[phase]], stdout=log,
                                  stderr=subprocess.STDOUT, env=run_env(run.grid.threads), preexec_fn=die_with_parent)
        times[f"{phase}_seconds"] = round(time.time() - start, 2)
        if proc.returncode != 0:
            tail = log_path.read_text().strip().splitlines()[-15:]
            record.update(status="failed", phase=phase, error="\n".join(tail), log=str(log_path), **times)
            write_record(folder, record)
            return record
    task_class = task_class_of(folder)
    record.update(status="ok", metrics=latest_metrics(folder), task_class=task_class, headline=headline_of(task_class),
                  **times)
    write_record(folder, record)
    return record


def pending(grid: Grid, out: Path, shard: str | None = None) -> tuple[list[Run], list[Run]]:
    """(this shard's runs, those of them not finished yet)."""
    i, n = parse_shard(shard)
    mine = [r for k, r in enumerate(grid.runs()) if k % n == i]
    return mine, [r for r in mine if not finished(r.folder(out))]


def check_out(out: Path, grid: Grid) -> None:
    """The grid's output folder can be written, found before any run starts rather than as a traceback after it."""
    why = unwritable(out / grid.name)
    if why:
        raise GridError(f"--out {out}: cannot write the grid's results there: {why}")


def log_wall_time(out: Path, grid: Grid, entry: dict) -> None:
    """One line per invocation (appended), so a grid run in several sittings or shards keeps every wall time."""
    (out / grid.name).mkdir(parents=True, exist_ok=True)
    with (out / grid.name / "wall_times.jsonl").open("a") as f:
        f.write(json.dumps({**entry, "cpus": os.cpu_count(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def ablate(grid_path: str, out: str = "runs/ablations", jobs: int = 1, shard: str | None = None,
           retest: bool = False, seeds: list[int] | None = None, variants: list[str] | None = None) -> int:
    """retest: also re-run the test phase of finished runs (from their last checkpoint), e.g. after a
    metric was added; their training is not repeated. seeds, variants: only these of the grid's."""
    from tqdm import tqdm

    grid = load_grid(grid_path)
    parse_shard(shard)  # a bad shard is refused before the output folder is made
    if seeds is not None:
        unknown = sorted(set(seeds) - set(grid.seeds))
        if unknown:
            raise GridError(f"--seeds {unknown} not in the grid's seeds {grid.seeds}")
        grid.seeds = [s for s in grid.seeds if s in seeds]
    if variants is not None:
        names = [v.name for v in grid.variants]
        unknown = [v for v in variants if v not in names]
        if unknown:
            raise GridError(f"--variants {unknown} not in the grid's variants {names}")
        grid.variants = [v for v in grid.variants if v.name in variants]
    if jobs < 1:
        raise GridError(f"--jobs must be >= 1, got {jobs}")
    out_dir = Path(out)
    check_out(out_dir, grid)
    mine, todo = pending(grid, out_dir, shard)
    again = [r for r in mine if r not in todo] if retest else []
    print(f"grid {grid.name}: {len(grid.runs())} runs, shard {shard or '0/1'}: {len(mine)}, "
          f"{len(mine) - len(todo)} already finished, {len(todo)} to run with {jobs} job(s) of {grid.threads} "
          f"thread(s)" + (f", {len(again)} to re-test" if retest else ""))
    start, failed, busy = time.time(), [], []
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(todo) + len(again), unit="run") as bar:
        futures = {pool.submit(execute, r, out_dir): r for r in todo}
        futures.update({pool.submit(execute, r, out_dir, ("test",)): r for r in again})
        for fut in as_completed(futures):
            rec = fut.result()
            bar.set_postfix_str(f"{rec['variant']}/seed{rec['seed']}: {rec['status']}")
            bar.update()
            if rec["status"] == BUSY:
                busy.append(rec)
            elif rec["status"] != "ok":
                failed.append(rec)
                tqdm.write(f"run {rec['variant']}/seed{rec['seed']} failed in {rec['phase']} ({rec['log']}):\n"
                           f"{rec['error']}")
    wall = time.time() - start
    log_wall_time(out_dir, grid, {"shard": shard or "0/1", "runs": len(todo) - len(busy), "retested": len(again),
                                  "jobs": jobs, "seconds": round(wall, 1)})
    print(f"{len(todo) - len(busy)} run(s) in {wall / 60:.1f} min, {len(failed)} failed"
          + (f"; {len(busy)} skipped: another live process is training them" if busy else ""))
    from constrained.experiments.report import report

    report([out_dir / grid.name])
    return 1 if failed else 0
