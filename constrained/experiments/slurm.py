"""`constrained ablate GRID.yaml --launcher slurm`: the runs of a grid that are not finished yet, submitted as
one SLURM job array through submitit, one array task per (variant, seed).

Each task trains its run with runner.execute, so the lock, the resume from the last checkpoint and the
record are the local launcher's: a finished run is never trained again, and a run held by a live process
(a local runner, an earlier job, a requeued one) is left to it. A job stopped by the scheduler's warning
signal (pre-emption, time limit) is requeued by submitit and resumes from its run's last checkpoint; a job
that fails or dies without a result leaves a "failed" record naming its error and its log, and the same
command run again submits only what is not finished. submitit's files and the jobs' logs are under
OUT/<grid>/slurm/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from submitit.helpers import Checkpointable

from constrained.experiments.grid import Grid, GridError, Run, load_grid
from constrained.experiments.records import claim, finished, read_record, write_record
from constrained.experiments.runner import (
    BUSY,
    PHASES,
    check_out,
    die_with_parent,
    execute,
    log_wall_time,
    pending,
    run_env,
)
from constrained.experiments.slurm_options import GENERIC, OPTIONS, REQUIRED, OptionError, check_options, flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--wait and one option per entry of OPTIONS (a value given here wins over the grid file's)."""
    parser.add_argument("--wait", action="store_true",
                        help="slurm: wait for the jobs, then write the report (without it: print the job ids)")
    for key, (kind, _, text) in OPTIONS.items():
        if kind in (list, dict):
            parser.add_argument(flag(key), dest=key, action="append", default=None, help=f"slurm: {text}",
                                metavar="KEY=VALUE" if kind is dict else "LINE")
        else:
            parser.add_argument(flag(key), dest=key, type=kind, default=None, help=f"slurm: {text}")


def given_options(args: argparse.Namespace) -> dict:
    """The slurm options given on the command line, as grid-file values."""
    options = {}
    for key in OPTIONS:
        value = getattr(args, key)
        if value is None:
            continue
        if OPTIONS[key][0] is dict:
            pairs = [item.partition("=") for item in value]
            bad = [item for item, (name, eq, text) in zip(value, pairs) if not name or eq and not text]
            if bad:
                raise GridError(f"--sbatch takes KEY=VALUE, or KEY for a flag (e.g. mail-type=END), got {bad[0]!r}")
            value = {name: text if eq else True for name, eq, text in pairs}
        options[key] = value
    try:
        return check_options(options, flag)
    except OptionError as e:
        raise GridError(str(e)) from None


def merged_options(grid: Grid, given: dict) -> dict:
    """The grid file's options with the command line's over them (sbatch options merged key by key)."""
    options = {**grid.slurm, **given}
    if "additional_parameters" in grid.slurm and "additional_parameters" in given:
        options["additional_parameters"] = {**grid.slurm["additional_parameters"], **given["additional_parameters"]}
    for key in REQUIRED:
        if key not in options:
            raise GridError(f"the slurm launcher needs {key} ({OPTIONS[key][2].split(' (')[0]}): set it under "
                            f"slurm: in the grid file or with {flag(key)}")
    return options


def executor_parameters(grid: Grid, options: dict) -> dict:
    """submitit.AutoExecutor parameters: its shared names as they are, the SLURM-only ones prefixed slurm_."""
    return {"name": grid.name, **{k if k in GENERIC else f"slurm_{k}": v for k, v in options.items()}}


class RunJob(Checkpointable):
    """One array task: trains one run. Checkpointable, so that a job stopped at its time limit is requeued
    (as a pre-empted one always is) and simply runs again: execute resumes the run from its last checkpoint."""

    def __init__(self, run: Run, out: Path, cwd: str):
        self.run, self.out, self.cwd = run, out, cwd

    def __call__(self) -> dict:
        import submitit

        os.chdir(self.cwd)  # the grid's config paths and OUT are relative to where the command was given
        env = submitit.JobEnvironment()
        if env.global_rank > 0:
            return follow(self.run, self.out, env.global_rank)
        try:
            return execute(self.run, self.out)
        except BaseException as e:  # the scheduler's signal (requeued: SystemExit) or an error: say so, then go
            record_failure(self.run, self.out, env.job_id, str(env.paths.stderr), _why(e))
            raise


def _why(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return ("the job was stopped by the scheduler (pre-empted or at its time limit) and requeued; "
                "the requeued job resumes from the run's last checkpoint")
    return f"{type(e).__name__}: {e}"


def follow(run: Run, out: Path, rank: int) -> dict:
    """A task of rank > 0 of a multi-task job: the same fit and test, which Lightning's SLURM support joins to
    rank 0's (it reads the task's SLURM variables); rank 0 alone holds the run's lock and writes its record."""
    folder = run.folder(out)
    status = "ok"
    if not finished(folder):
        for phase in ("fit", "test"):
            with (folder / f"{phase}.rank{rank}.log").open("w") as log:
                code = subprocess.run([sys.executable, "-m", "constrained", phase, *run.args(folder), *PHASES[phase]],
                                      stdout=log, stderr=subprocess.STDOUT, env=run_env(run.grid.threads),
                                      preexec_fn=die_with_parent).returncode
            if code != 0:
                status = "failed"
                break
    return {"variant": run.variant.name, "seed": run.seed, "status": status, "rank": rank}


def record_failure(run: Run, out: Path, job_id: str, log: str, error: str) -> dict:
    """A "failed" record for a run whose job ended without one, unless the run is finished, held by a live
    process (a requeued job: BUSY) or already recorded by this job itself."""
    folder = run.folder(out)
    with claim(folder) as mine:
        if not mine:
            return {"variant": run.variant.name, "seed": run.seed, "status": BUSY}
        old = read_record(folder)
        if old is not None and (old.get("status") == "ok" or old.get("job_id") == job_id):
            return old
        record = {**run.record(folder), "status": "failed", "phase": "job", "job_id": job_id,
                  "error": "\n".join(error.strip().splitlines()[-15:]), "log": log}
        write_record(folder, record)
        return record


# sacct states of a job that will still run or is running (submitit's incomplete states, UNKNOWN aside: a job
# sacct does not know, or no sacct at all, is resubmitted)
ALIVE = {"READY", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING", "SUSPENDED",
         "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}


def queued(grid: Grid, out: Path, runs: list[Run]) -> list[Run]:
    """The runs whose latest job (jobs.jsonl) is still queued or running, by one sacct call: a rerun of the
    command while an earlier array waits in the queue does not submit its runs twice."""
    import submitit

    folder = out / grid.name / "slurm"
    log = folder / "jobs.jsonl"
    if not log.is_file():
        return []
    latest = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        latest[entry["run"]] = entry["job_id"]
    jobs = {r.key: submitit.SlurmJob(folder, latest[r.key]) for r in runs if r.key in latest}
    return [r for r in runs if r.key in jobs and jobs[r.key].state.split(" ")[0].upper() in ALIVE]


def held(run: Run, out: Path) -> bool:
    """Whether a live process is training the run now (its job is running): it is not submitted again."""
    with claim(run.folder(out)) as mine:
        return not mine


def submit(grid: Grid, out: Path, runs: list[Run], options: dict, cluster: str) -> list:
    import submitit

    executor = submitit.AutoExecutor(folder=out / grid.name / "slurm", cluster=cluster)
    executor.update_parameters(**executor_parameters(grid, options))
    cwd = os.getcwd()
    with executor.batch():
        jobs = [executor.submit(RunJob(run, out, cwd)) for run in runs]
    with (out / grid.name / "slurm" / "jobs.jsonl").open("a") as f:
        for job, run in zip(jobs, runs):
            f.write(json.dumps({"job_id": job.job_id, "run": run.key, "stdout": str(job.paths.stdout),
                                "stderr": str(job.paths.stderr), "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
                    + "\n")
    return jobs


def settle(job, run: Run, out: Path) -> dict:
    """Waits for the job; its run's record (a job that died without one gets a "failed" record here)."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return job.results()[0]
    except UncompletedJobError as e:  # the function raised (its own record says why), or the job died
        last = "raised an error" if isinstance(e, FailedJobError) else f"ended without a result (state {job.state})"
        err = job.paths.stderr
        log = err if err.is_file() and err.stat().st_size else job.paths.stdout  # a killed job says nothing on stderr
        return record_failure(run, out, job.job_id, str(log), f"{e}\njob {job.job_id} {last}")


def ablate_slurm(grid_path: str, out: str, given: dict, wait: bool = False, cluster: str = "slurm") -> int:
    """given: slurm options from the command line (over the grid file's). cluster="local" runs the array's jobs
    as processes of this machine through submitit's LocalExecutor, as on a node (what the tests drive)."""
    grid = load_grid(grid_path)
    options = merged_options(grid, given)
    if cluster == "slurm" and shutil.which("srun") is None:
        raise GridError("--launcher slurm: no srun on this machine; run on a SLURM login node")
    if cluster == "local" and (options.get("nodes", 1) > 1 or options.get("tasks_per_node", 1) > 1):
        raise GridError("several nodes or tasks per job need a SLURM cluster")
    out_dir = Path(out)
    check_out(out_dir, grid)
    mine, todo = pending(grid, out_dir)
    alive = queued(grid, out_dir, todo) if cluster == "slurm" else []
    busy = [r for r in todo if r not in alive and held(r, out_dir)]
    todo = [r for r in todo if r not in alive and r not in busy]
    print(f"grid {grid.name}: {len(mine)} runs, {len(mine) - len(todo) - len(busy) - len(alive)} already finished, "
          f"{len(alive)} in an earlier job still queued or running, {len(busy)} being trained by another process, "
          f"{len(todo)} to submit")
    if not todo:
        from constrained.experiments.report import report

        if any(read_record(r.folder(out_dir)) for r in mine):
            report([out_dir / grid.name])
        return 0
    start = time.time()
    try:
        jobs = submit(grid, out_dir, todo, options, cluster)
    except Exception as e:  # sbatch refused the array (a bad partition, account, time limit)
        from submitit.core.utils import FailedJobError

        if not isinstance(e, FailedJobError):
            raise
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise GridError(f"sbatch refused the array: {lines[-1] if lines else e}") from None
    logs = out_dir / grid.name / "slurm"
    for job, run in zip(jobs, todo):
        print(f"  {run.key}: job {job.job_id}")
    print(f"logs: {logs}/<job id>_0_log.out|err (jobs.jsonl maps runs to jobs)")
    if not wait:
        print(f"when the jobs are done: constrained report {out_dir / grid.name}")
        return 0
    failed, busy_now = [], []
    for job, run in zip(jobs, todo):
        rec = settle(job, run, out_dir)
        print(f"  {run.key} (job {job.job_id}): {rec['status']}", flush=True)
        if rec["status"] == BUSY:
            busy_now.append(rec)
        elif rec["status"] != "ok":
            failed.append(rec)
            print(f"run {run.key} failed in {rec.get('phase')} ({rec.get('log')}):\n{rec.get('error')}")
    wall = time.time() - start
    log_wall_time(out_dir, grid, {"shard": "0/1", "launcher": "slurm", "runs": len(todo) - len(busy_now),
                                  "retested": 0, "jobs": len(jobs), "seconds": round(wall, 1)})
    print(f"{len(todo) - len(busy_now)} run(s) in {wall / 60:.1f} min, {len(failed)} failed"
          + (f"; {len(busy_now)} skipped: another live process is training them" if busy_now else ""))
    from constrained.experiments.report import report

    report([out_dir / grid.name])
    return 1 if failed else 0


def launcher_options(args: argparse.Namespace) -> dict:
    """The slurm options of an `ablate` command line, refusing those that do not go with its --launcher."""
    given = given_options(args)
    if args.launcher == "local":
        extra = [flag(k) for k in given] + (["--wait"] if args.wait else [])
        if extra:
            raise GridError(f"{', '.join(extra)}: only with --launcher slurm")
    else:
        extra = (["--jobs"] if args.jobs != 1 else []) + (["--shard"] if args.shard else []) \
            + (["--retest"] if args.retest else [])
        if extra:
            raise GridError(f"{', '.join(extra)}: only with --launcher local (the slurm launcher submits one job "
                            "per run)")
    return given
