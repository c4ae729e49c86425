"""The slurm launcher (constrained ablate --launcher slurm) without a cluster: its array driven through submitit's
LocalExecutor (each job a real process, as on a node), and the sbatch script submitit writes, read from disk
after a stand-in sbatch accepted it."""

import json
import os
import sys
from pathlib import Path

import pytest
from submitit.core.utils import DelayedSubmission

from constrained.cli import main
from constrained.experiments.report import load_records
from constrained.experiments.slurm import ablate_slurm
from tests.helpers import TINY, write_grid

BASELINE = {"name": "baseline", "config": "configs/icl_regression/baseline.yaml"}
WAIT = {"timeout_min": 60}  # a job warned (SIGUSR2) long before this limit counts as pre-empted, not timed out


def comparable(out):
    return {(r["variant"], r["seed"]): {k: r[k] for k in ("status", "metrics", "task_class", "headline")}
            for r in load_records([out])}


def test_array_on_local_executor_reports_what_the_local_launcher_reports(tmp_path):
    grid = write_grid(tmp_path, variants=[BASELINE])  # 1 variant x 2 seeds
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    assert main(["ablate", str(grid), "--out", str(local)]) == 0
    assert ablate_slurm(str(grid), str(slurm), WAIT, wait=True, cluster="local") == 0
    assert sorted(comparable(slurm)) == [("baseline", 0), ("baseline", 1)]
    assert comparable(slurm) == comparable(local)
    assert (slurm / "tiny" / "results.csv").read_text() == (local / "tiny" / "results.csv").read_text()
    jobs = [json.loads(line) for line in (slurm / "tiny" / "slurm" / "jobs.jsonl").read_text().splitlines()]
    assert [j["run"] for j in jobs] == ["baseline/seed0", "baseline/seed1"]
    assert all("Job completed successfully" in open(j["stdout"]).read() for j in jobs)
    assert "with 2 job(s)" in (slurm / "tiny" / "report.md").read_text()


def signal_at_step(name):
    return {"trainer.callbacks": [{"class_path": "tests.job_signals.SignalJobAtStep",
                                   "init_args": {"step": 4, "signal": name}}]}


def test_killed_and_preempted_jobs_resume_and_finished_runs_are_not_retrained(tmp_path, capsys):
    """Three copies of one run: left alone, its job killed at step 4 (a lost node), its job warned at step 4
    (pre-emption: submitit requeues it). Checkpoints every 2 steps; a resumed run ends with the same weights,
    so the same metrics, as the one left alone."""
    grid = write_grid(tmp_path, seeds=[0], overrides={**TINY, "trainer.max_steps": 6,
                                                      "last_checkpoint.every_n_train_steps": 2}, variants=[
        {"name": "steady", "config": "configs/icl_regression/baseline.yaml"},
        {"name": "killed", "config": "configs/icl_regression/baseline.yaml", "overrides": signal_at_step("SIGKILL")},
        {"name": "preempted", "config": "configs/icl_regression/baseline.yaml",
         "overrides": signal_at_step("SIGUSR2")}])
    out = tmp_path / "out"
    runs = {v: out / "tiny" / v / "seed0" for v in ("steady", "killed", "preempted")}

    assert ablate_slurm(str(grid), str(out), WAIT, wait=True, cluster="local") == 1
    recs = {r["variant"]: r for r in load_records([out])}
    assert recs["steady"]["status"] == "ok" and recs["preempted"]["status"] == "ok"
    assert "Restoring states from the checkpoint" in (runs["preempted"] / "fit.log").read_text()
    assert "this job is preempted" in open(json.loads(
        (out / "tiny" / "slurm" / "jobs.jsonl").read_text().splitlines()[2])["stderr"]).read()
    assert recs["preempted"]["metrics"] == pytest.approx(recs["steady"]["metrics"], rel=1e-5)
    killed = recs["killed"]
    assert killed["status"] == "failed" and "ended without a result" in killed["error"]
    assert killed["log"].startswith(str(out / "tiny" / "slurm")) and killed["log"].endswith("_log.out")
    assert "Loading pickle" in Path(killed["log"]).read_text()  # the job's own log: it started, then nothing
    assert "FAILED killed/seed0 in job" in (out / "tiny" / "report.md").read_text()
    steady_record = (runs["steady"] / "result.json").read_text()
    capsys.readouterr()

    assert ablate_slurm(str(grid), str(out), WAIT, wait=True, cluster="local") == 0  # the same command again
    printed = capsys.readouterr().out
    assert "3 runs, 2 already finished" in printed and "1 to submit" in printed
    resumed = json.loads((runs["killed"] / "result.json").read_text())
    assert resumed["status"] == "ok"
    assert "Restoring states from the checkpoint" in (runs["killed"] / "fit.log").read_text()
    assert resumed["metrics"] == pytest.approx(recs["steady"]["metrics"], rel=1e-5)
    assert (runs["steady"] / "result.json").read_text() == steady_record
    assert len(list((runs["steady"] / "logs").glob("version_*"))) == 2  # one fit, one test: never retrained

    records = {v: (r / "result.json").read_text() for v, r in runs.items()}
    assert ablate_slurm(str(grid), str(out), WAIT, wait=True, cluster="local") == 0
    printed = capsys.readouterr().out
    assert "3 runs, 3 already finished" in printed and "0 to submit" in printed
    assert {v: (r / "result.json").read_text() for v, r in runs.items()} == records
    assert len((out / "tiny" / "slurm" / "jobs.jsonl").read_text().splitlines()) == 4


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    """srun, sbatch and sacct stand-ins on PATH: sbatch accepts every script, logs its argument and says job
    4242; sacct says what the file sacct_out beside it says (nothing by default)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$1" >> {bin_dir}/calls\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sacct").write_text(f"#!/bin/sh\necho 'JobID|State|NodeList'\ncat {bin_dir}/sacct_out 2>/dev/null\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir / "calls"


def sbatch_lines(path):
    text = path.read_text()
    flags = [line.removeprefix("#SBATCH --") for line in text.splitlines() if line.startswith("#SBATCH")]
    return dict(f.split("=", 1) if "=" in f else (f, True) for f in flags), text


def test_sbatch_script_says_what_the_grid_file_and_command_line_say(tmp_path, fake_cluster, capsys):
    grid = write_grid(tmp_path, variants=[BASELINE], slurm={
        "partition": "cpu", "timeout_min": 90, "gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 16,
        "setup": ["module load cuda"], "additional_parameters": {"mail-type": "END"}})
    out = tmp_path / "out"
    assert main(["ablate", str(grid), "--out", str(out), "--launcher", "slurm", "--partition", "gpu",
                 "--mem-gb", "7.5", "--sbatch", "mail-user=me@lab.org", "--sbatch", "exclusive"]) == 0
    logs = out / "tiny" / "slurm"
    flags, text = sbatch_lines(logs / "4242_submission.sh")
    assert flags == {
        "array": "0-1%2", "partition": "gpu", "time": "90", "gpus-per-node": "1", "cpus-per-task": "4",
        "mem": "7680MB", "nodes": "1", "job-name": "tiny", "mail-type": "END", "mail-user": "me@lab.org",
        "exclusive": True, "output": f"{logs}/%A_%a_0_log.out", "error": f"{logs}/%A_%a_0_log.err",
        "open-mode": "append", "signal": "USR2@90", "wckey": "submitit"}
    assert "\nmodule load cuda\n" in text and f"{sys.executable} -u -m submitit.core._submit {logs}" in text
    printed = capsys.readouterr().out
    assert "baseline/seed0: job 4242_0" in printed and "baseline/seed1: job 4242_1" in printed
    assert f"constrained report {out / 'tiny'}" in printed
    # array task k trains run k
    for k in (0, 1):
        job = DelayedSubmission.load(logs / f"4242_{k}_submitted.pkl").function
        assert job.run.key == f"baseline/seed{k}" and job.out == out
    # the same command again while job 4242_0 waits in the queue and 4242_1 has failed: only seed 1 is submitted
    (fake_cluster.parent / "sacct_out").write_text("4242_0|PENDING|None\n4242_1|FAILED|node7\n")
    assert main(["ablate", str(grid), "--out", str(out), "--launcher", "slurm"]) == 0
    assert "1 in an earlier job still queued or running, 0 being trained by another process, 1 to submit" \
        in capsys.readouterr().out
    assert len(fake_cluster.read_text().splitlines()) == 2
    flags, _ = sbatch_lines(logs / "4242_submission.sh")
    assert "array" not in flags and flags["partition"] == "cpu" and flags["mem"] == "16GB"
    assert DelayedSubmission.load(logs / "4242_submitted.pkl").function.run.key == "baseline/seed1"


@pytest.mark.parametrize("slurm,args,match", [
    ({"gpu": 1}, [], "grid.yaml: unknown slurm option(s) ['gpu']"),
    ("gpu", [], "slurm must be a mapping"),
    ({"timeout_min": "2h"}, [], "slurm.timeout_min must be an integer >= 1, got '2h'"),
    ({"timeout_min": 5, "mem_gb": 0}, [], "slurm.mem_gb must be a number > 0"),
    ({"timeout_min": 5, "additional_parameters": {"time": "1:00:00"}}, [], "use timeout_min (--timeout-min)"),
    ({"timeout_min": 5, "additional_parameters": {"output": "x"}}, [], "is set by the launcher"),
    ({}, [], "needs timeout_min"),
    ({"timeout_min": 5}, ["--gpus-per-node", "-1"], "--gpus-per-node must be an integer >= 0, got -1"),
    ({"timeout_min": 5}, ["--sbatch", "=x"], "--sbatch takes KEY=VALUE"),
    ({"timeout_min": 5}, ["--jobs", "2"], "--jobs: only with --launcher local"),
    ({"timeout_min": 5}, ["--shard", "0/2"], "--shard: only with --launcher local"),
])
def test_bad_slurm_options_are_refused_before_anything_is_submitted(tmp_path, fake_cluster, capsys, slurm, args,
                                                                       match):
    grid = write_grid(tmp_path, slurm=slurm)
    out = tmp_path / "out"
    assert main(["ablate", str(grid), "--out", str(out), "--launcher", "slurm", *args]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err
    assert not fake_cluster.exists() and not out.exists()


def test_slurm_options_need_the_slurm_launcher_and_srun(tmp_path, capsys, monkeypatch):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    assert main(["ablate", str(grid), "--out", str(out), "--partition", "gpu", "--wait"]) == 2
    assert "--partition, --wait: only with --launcher slurm" in capsys.readouterr().err
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["ablate", str(grid), "--out", str(out), "--launcher", "slurm", "--timeout-min", "5"]) == 2
    assert "no srun on this machine" in capsys.readouterr().err
    assert not out.exists()


def test_a_task_of_rank_above_zero_neither_locks_nor_records(tmp_path, monkeypatch):
    """In a multi-task job (one task per GPU) rank 0 holds the run's lock and writes its record; another rank
    only joins the training, and starts nothing for a run already finished."""
    from constrained.experiments.grid import load_grid
    from constrained.experiments.records import claim
    from constrained.experiments.slurm import RunJob

    run = load_grid(write_grid(tmp_path, variants=[BASELINE], seeds=[0])).runs()[0]
    out = tmp_path / "out"
    folder = run.folder(out)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"status": "ok"}))
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_FOLDER": str(tmp_path), "SLURM_JOB_ID": "5",
                        "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(name, value)
    with claim(folder) as mine:  # as if rank 0 were training it: rank 1 must not wait for or need the lock
        assert mine
        assert RunJob(run, out, os.getcwd())() == {"variant": "baseline", "seed": 0, "status": "ok", "rank": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["result.json", "run.lock"]


def test_an_array_sbatch_refuses_is_said_in_one_line_and_records_nothing(tmp_path, fake_cluster, capsys):
    refusal = "sbatch: error: invalid partition specified: gpx"
    (fake_cluster.parent / "sbatch").write_text(f"#!/bin/sh\necho '{refusal}' >&2\nexit 1\n")
    grid, out = write_grid(tmp_path, variants=[BASELINE]), tmp_path / "out"
    assert main(["ablate", str(grid), "--out", str(out), "--launcher", "slurm", "--timeout-min", "5",
                 "--partition", "gpx"]) == 2
    assert f"constrained ablate: error: sbatch refused the array: {refusal}" in capsys.readouterr().err
    assert not list(out.rglob("result.json")) and not (out / "tiny" / "slurm" / "jobs.jsonl").exists()
