import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from constrained.cli import main
from constrained.experiments.grid import GridError, load_grid, parse_shard
from constrained.experiments.report import load_records
from tests.helpers import write_grid


def ablate(grid, out, *extra, **kw):
    cmd = [sys.executable, "-m", "constrained", "ablate", str(grid), "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def records(out):
    return sorted(out.rglob("result.json"))


def keys(out):
    return sorted((r["variant"], r["seed"]) for r in load_records([out]))


def test_kill_mid_grid_then_rerun_loses_and_duplicates_nothing(tmp_path):
    grid, out = write_grid(tmp_path), tmp_path / "out"
    proc = ablate(grid, out, start_new_session=True)
    deadline = time.time() + 240
    while not records(out) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and whatever it was running
    proc.wait()
    done_before = len(records(out))
    assert 1 <= done_before < 4, "the kill should land mid-grid"
    rerun = ablate(grid, out)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log[-3000:]
    assert f"{done_before} already finished" in log
    assert keys(out) == [("baseline", 0), ("baseline", 1), ("myopic", 0), ("myopic", 1)]
    assert len(records(out)) == 4  # on disk, not through load_records, which keeps one per run by design
    assert all(r["status"] == "ok" for r in load_records([out]))
    assert "Wall time of the `ablate` invocations" in (out / "tiny" / "report.md").read_text()
    assert (out / "tiny" / "results.csv").is_file() and (out / "tiny" / "report.md").is_file()
    # sharded runs, two at a time (--jobs 2), merged, give the same results to the digit as the unsharded grid
    # run one at a time and partly killed: each run has a fixed thread count, whatever runs beside it
    shards = [tmp_path / "shard0", tmp_path / "shard1"]
    for i, d in enumerate(shards):
        p = ablate(grid, d, "--shard", f"{i}/2", "--jobs", "2")
        assert p.wait(timeout=300) == 0
    assert keys(shards[0]) and keys(shards[1]) and not set(keys(shards[0])) & set(keys(shards[1]))
    merged = {(r["variant"], r["seed"]): r["metrics"] for r in load_records(shards)}
    whole = {(r["variant"], r["seed"]): r["metrics"] for r in load_records([out])}
    assert merged == whole
    assert main(["report", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "results.csv").read_text().count("\n") > 4 * 50


def test_two_runners_on_one_folder_train_each_run_once(tmp_path):
    """A run held by a live process is skipped by every other one: two runners started together on the same
    output folder train each run exactly once (one fit and one test invocation each), and both finish cleanly."""
    out = tmp_path / "out"
    grid = write_grid(tmp_path, variants=[{"name": "baseline", "config": "configs/icl_regression/baseline.yaml"}])
    procs = [ablate(grid, out) for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    for seed in (0, 1):
        folder = out / "tiny" / "baseline" / f"seed{seed}"
        assert len(list((folder / "logs").glob("version_*"))) == 2, f"seed{seed} was trained more than once"
        assert json.loads((folder / "result.json").read_text())["status"] == "ok"
    assert any("another live process" in log or "already finished" in log for log in logs)


def test_failing_run_is_recorded_and_the_grid_goes_on(tmp_path):
    broken = {"model.init_args.d_model": 18, "model.init_args.n_heads": 4}
    grid = write_grid(tmp_path, variants=[
        {"name": "broken", "config": "configs/icl_regression/baseline.yaml", "overrides": broken},
        {"name": "fine", "config": "configs/icl_regression/baseline.yaml"},
    ], seeds=[0])
    out = tmp_path / "out"
    proc = ablate(grid, out)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, log[-2000:]
    recs = {r["variant"]: r for r in load_records([out])}
    assert recs["broken"]["status"] == "failed" and "divisible by n_heads" in recs["broken"]["error"]
    assert recs["fine"]["status"] == "ok"
    assert "FAILED broken/seed0" in (out / "tiny" / "report.md").read_text()
    saved = json.loads((out / "tiny" / "fine" / "seed0" / "result.json").read_text())
    assert saved["args"][:2] == ["--config", "configs/icl_regression/base.yaml"]
    # --retest re-runs only the test phase of a finished run (new metrics), keeping its training
    (out / "tiny" / "fine" / "seed0" / "fit.log").write_text("untouched")
    proc = ablate(grid, out, "--retest")
    log = proc.communicate(timeout=300)[0]
    assert "1 to re-test" in log, log[-2000:]
    again = json.loads((out / "tiny" / "fine" / "seed0" / "result.json").read_text())
    assert again["status"] == "ok" and again["fit_seconds"] == saved["fit_seconds"]
    assert (out / "tiny" / "fine" / "seed0" / "fit.log").read_text() == "untouched"
    assert again["metrics"]["test/e5"] == pytest.approx(saved["metrics"]["test/e5"], rel=1e-5)


@pytest.mark.parametrize("change,match", [
    ({"variants": [{"name": "x", "config": "configs/icl_regression/nope.yaml"}]}, "does not exist"),
    ({"variants": [{"name": "a", "config": "configs/icl_regression/baseline.yaml"},
                   {"name": "a", "config": "configs/icl_regression/myopic_kv.yaml"}]}, "duplicate variant name 'a'"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [0, 0]}, "duplicate seeds"),
    ({"variants": []}, "variant list is empty"),
    ({"base": "configs/nope.yaml"}, "base config"),
    ({"colour": "red"}, "unknown grid key"),
])
def test_bad_grid_is_rejected_before_any_run(tmp_path, change, match):
    with pytest.raises(GridError, match=match):
        load_grid(write_grid(tmp_path, **change))


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard(text):
    with pytest.raises(GridError, match="shard"):
        parse_shard(text)


def test_cli_reports_bad_grid_and_bad_shard_without_running(tmp_path, capsys):
    assert main(["ablate", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    grid = write_grid(tmp_path)
    assert main(["ablate", str(grid), "--shard", "3/2", "--out", str(tmp_path / "o")]) == 2
    assert "shard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_shipped_grids_load():
    for path in Path("configs/ablations").glob("*.yaml"):
        grid = load_grid(path)
        assert len(grid.runs()) == len(grid.variants) * len(grid.seeds)
