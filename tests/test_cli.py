import argparse
import csv
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from constrained.cli import main
from constrained.experiments.grid import load_grid
from tests.helpers import fast_args

CONFIGS = "configs/icl_regression"

VARIANTS = sorted(Path(p).stem for p in glob.glob(f"{CONFIGS}/*.yaml") if not p.endswith("base.yaml"))


def test_no_arguments_prints_short_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: constrained" in out and "fit" in out and len(out.splitlines()) < 30


def test_variant_overlays_exist():
    assert {"baseline", "myopic_kv", "myopic_input", "horizon8", "concatenated_baseline", "concatenated_myopic_kv",
            "concatenated_myopic_input"} <= set(VARIANTS)


def _print_config(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


OVERLAYS = sorted(p for p in glob.glob("configs/*/*.yaml") if not p.startswith("configs/ablations/")
                  and not p.endswith("/base.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_config_parses(overlay, capsys):
    """Every overlay in configs/, composed with its folder's base, as `constrained fit --print_config` reads it."""
    base = str(Path(overlay).parent / "base.yaml")
    out = _print_config(["--config", base, "--config", overlay], capsys)
    assert "class_path: constrained.models." in out and "class_path: constrained.tasks." in out


GRID_RUNS = sorted((str(path), v.name) for path in glob.glob("configs/ablations/*.yaml")
                   for v in load_grid(path).variants)


@pytest.mark.parametrize("grid,variant", GRID_RUNS)
def test_every_grid_variant_parses(grid, variant, capsys, tmp_path):
    """What `constrained ablate` runs for each variant (base, overlay, overrides) parses."""
    run = next(r for r in load_grid(grid).runs() if r.variant.name == variant)
    _print_config(run.args(tmp_path), capsys)


def test_fit_then_test_writes_run_folder(tmp_path):
    main(["fit", *fast_args(tmp_path)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert (tmp_path / "logs" / "version_0" / "config.yaml").is_file()
    assert list((tmp_path / "logs" / "version_0" / "tb").glob("events.*"))
    main(["test", *fast_args(tmp_path), "--ckpt_path", "last", "--verbose", "false"])
    with (tmp_path / "icl_curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    predictors = {r["predictor"] for r in rows}
    assert predictors == {"model", "zero", "averaging", "least_squares", "gd_step"}
    assert {r["split"] for r in rows} == {"test", "shifted"}
    assert {int(r["k"]) for r in rows} == set(range(6))
    assert (tmp_path / "icl_curve.png").stat().st_size > 10_000
    with (tmp_path / "logs" / "version_1" / "metrics.csv").open() as f:
        logged = next(csv.DictReader(f))
    assert float(logged["test/e5"]) > 0 and "shifted/dist_least_squares_k3" in logged
    # training logs of the fit are kept, not overwritten by the test run
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").stat().st_size > 0


def test_checkpoint_loads_with_weights_only(tmp_path):
    main(["fit", *fast_args(tmp_path)])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("net.blocks.0") for k in ckpt["state_dict"])


def _final_weights(root):
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    steps = ["--trainer.max_steps", "8", "--last_checkpoint.every_n_train_steps", "4"]
    main(["fit", *fast_args(tmp_path / "full"), *steps])
    crashed = tmp_path / "crashed"
    crash = ["--trainer.callbacks+=tests.helpers.CrashAtStep", "--trainer.callbacks.init_args.step", "4"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", *fast_args(crashed), *steps, *crash])
    assert torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    main(["fit", *fast_args(crashed), *steps, "--ckpt_path", "last"])
    full, resumed = _final_weights(tmp_path / "full"), _final_weights(crashed)
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=1e-6, msg=k)


def test_nan_loss_stops_training_with_step_and_term(tmp_path, monkeypatch, capsys):
    from constrained.tasks.icl_regression import IclRegression

    original = IclRegression.loss
    calls = []

    def poisoned(self, pred, batch):
        loss = original(self, pred, batch)
        calls.append(pred.requires_grad)
        return loss * float("nan") if pred.requires_grad and calls.count(True) == 4 else loss

    monkeypatch.setattr(IclRegression, "loss", poisoned)
    assert main(["fit", *fast_args(tmp_path), "--last_checkpoint.every_n_train_steps", "1"]) == 2
    assert "step 3: term 'task'" in capsys.readouterr().err
    # the three finished steps are kept; the bad step never ran
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_last_checkpoint_exists_before_the_first_validation(tmp_path):
    """A run killed before its first validation (step 500 by default) can still be resumed."""
    crash = ["--trainer.callbacks+=tests.helpers.CrashAtStep", "--trainer.callbacks.init_args.step", "5"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", *fast_args(tmp_path), "--trainer.max_steps", "20", "--trainer.val_check_interval", "10",
              "--last_checkpoint.every_n_train_steps", "2", *crash])
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not list((tmp_path / "checkpoints").glob("best-*"))


def _error_of(args, capsys):
    """A parse-time error: exit status 2 and one or two lines naming the cause, no usage and no traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) <= 2 and "usage:" not in err and "Traceback" not in err, err
    return err


def test_unknown_key_on_command_line(tmp_path, capsys):
    err = _error_of(["fit", *fast_args(tmp_path), "--model.init_args.d_modle", "32"], capsys)
    assert "d_modle" in err


@pytest.mark.parametrize("text,expected", [("model:\n  init_args:\n    n_layerz: 2\n", "n_layerz"),
                                           ("trainer:\n  max_steps: [3\n", "bad.yaml is not valid YAML: line")])
def test_bad_config_file_is_named(tmp_path, capsys, text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    err = _error_of(["fit", *fast_args(tmp_path), "--config", str(bad)], capsys)
    assert expected in err


def test_wrong_type(tmp_path, capsys):
    err = _error_of(["fit", *fast_args(tmp_path), "--model.init_args.n_heads", "two"], capsys)
    assert "n_heads" in err


def test_missing_config_file(tmp_path, capsys):
    err = _error_of(["fit", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml" in err


def test_class_path_typo_lists_the_classes_that_exist(tmp_path, capsys):
    err = _error_of(["fit", *fast_args(tmp_path), "--data.class_path", "constrained.tasks.icl_regression.IclRegresion"],
                    capsys)
    assert "data.class_path: no class constrained.tasks.icl_regression.IclRegresion" in err
    assert "constrained.tasks.precache.Precache" in err


@pytest.mark.parametrize("option,value", [("model.init_args.lr", "fast"), ("data.init_args.noise_std", "nan")])
def test_bad_value_on_the_command_line_names_the_key(tmp_path, capsys, option, value):
    err = _error_of(["fit", *fast_args(tmp_path), f"--{option}", value], capsys)
    assert option in err


@pytest.mark.parametrize("text,key", [("data:\n  init_args:\n    noise_std: .nan\n", "data.init_args.noise_std"),
                                      ("data:\n  init_args:\n    shifted: {x_scale: .inf}\n",
                                       "data.init_args.shifted.x_scale")])
def test_non_finite_value_in_yaml_is_named_before_training(tmp_path, capsys, text, key):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(text)
    assert main(["fit", *fast_args(tmp_path / "run"), "--config", str(overlay)]) == 2
    err = capsys.readouterr().err
    assert f"{key} must be a finite number" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "logs").exists()


@pytest.mark.parametrize("make", ["file_for_checkpoints", "file_for_root"])
def test_unwritable_run_folder_is_named_before_training(tmp_path, capsys, make):
    root = tmp_path / "run"
    if make == "file_for_checkpoints":
        root.mkdir()
        (root / "checkpoints").write_text("not a folder")
    else:
        root.write_text("not a folder")
    assert main(["fit", *fast_args(root)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run folder" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize("override,match", [
    (["--model.init_args.d_model", "18", "--model.init_args.n_heads", "4"], "divisible by n_heads"),
    (["--model.init_args.horizon", "0"], "horizon must be >= 1"),
    (["--data.init_args.n_points", "0"], "n_points must be >= 1"),
])
def test_impossible_values_fail_before_training(tmp_path, override, match, capsys):
    assert main(["fit", *fast_args(tmp_path), *override]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert not (tmp_path / "checkpoints").exists()


def test_debug_variable_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("CONSTRAINED_DEBUG", "1")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        main(["fit", *fast_args(tmp_path), "--model.init_args.d_model", "18", "--model.init_args.n_heads", "4"])


def test_ddp_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "-m", "constrained", "fit", *fast_args(tmp_path),
           "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6


@pytest.mark.parametrize("content", [b"garbage" * 10, b""])
def test_corrupt_checkpoint_is_named_before_anything_runs(tmp_path, capsys, content):
    main(["fit", *fast_args(tmp_path)])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(content)
    for where in ("last", str(ckpt)):
        assert main(["test", *fast_args(tmp_path), "--ckpt_path", where]) == 2
        err = capsys.readouterr().err
        assert f"cannot read checkpoint {ckpt}" in err and "weights_only=False" not in err, err
    assert main(["test", *fast_args(tmp_path), "--ckpt_path", str(tmp_path / "nope.ckpt")]) == 2
    assert "nope.ckpt not found" in capsys.readouterr().err


def test_importing_the_package_loads_no_part():
    """`import constrained` and the mask spec load neither Lightning, Triton nor any task, so a spec or a kernel
    can be used without them."""
    code = ("import sys, constrained, constrained.proofs.mask; "
            "print(sorted(m for m in ('lightning', 'triton', 'torch', 'constrained.tasks.task', "
            "'constrained.models.transformer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]", out


def test_checkpoint_with_a_python_object_is_refused_without_unsafe_advice(tmp_path, capsys):
    main(["fit", *fast_args(tmp_path)])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["smuggled"] = argparse.Namespace(code="anything")  # what a safe load must refuse
    torch.save(state, ckpt)
    assert main(["test", *fast_args(tmp_path), "--ckpt_path", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {ckpt}" in err and "argparse.Namespace" in err
    assert "weights_only" not in err and "add_safe_globals" not in err and "safe_globals" not in err, err
