"""Fine-tuning from a checkpoint (model.init_args.init_from): the run starts from the given weights (equal at
step 0) with a fresh optimizer and learning-rate schedule, records the path in its config, and a checkpoint
that is missing, corrupt or does not fit the config is refused in one line (exit 2) before any training.
A fine-tuned backdoor run measures the weights it started from beside its own (persistence)."""

import csv

import lightning as L
import pytest
import torch
import yaml

from constrained.cli import main
from constrained.models.finetune import initial_model
from constrained.models.modular import ModularModel
from constrained.models.sequence_model import SequenceModel
from constrained.tasks.maze.task import Maze
from tests.helpers import fast_args

LR, WARMUP = 1e-3, 2


pytestmark = pytest.mark.usefixtures("one_thread")


class AtStart(L.Callback):
    """Saves what a run starts from (weights, optimizer state, learning rates, step) to `path`."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        torch.save({"state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                    "optimizer_state": len(opt.state), "lrs": [g["lr"] for g in opt.param_groups],
                    "step": trainer.global_step}, self.path)


def fast(root, *overlays: str) -> list[str]:
    """A tiny 4-step run of configs/maze/base.yaml and the overlays, at learning rate LR after WARMUP steps."""
    return fast_args(root, *overlays, task="maze", steps=4, val_every=2,
                     options={"model.init_args.lr": LR, "model.init_args.warmup_steps": WARMUP})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny backdoored maze run, 4 steps: its last checkpoint holds Adam state and a schedule at step 4."""
    root = tmp_path_factory.mktemp("source")
    assert main(["fit", *fast(root, "backdoor")]) == 0
    return root / "checkpoints" / "last.ckpt"


def test_fine_tuning_starts_from_the_weights_with_a_fresh_optimizer(source, tmp_path):
    ckpt = torch.load(source, weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["optimizer_states"][0]["state"]  # there is state to carry over
    snapshot = tmp_path / "start.pt"
    args = [*fast(tmp_path / "tuned", "backdoor", "safety_clean"),
            "--model.init_args.init_from", str(source),
            "--trainer.callbacks+=tests.test_finetune.AtStart", "--trainer.callbacks.init_args.path", str(snapshot)]
    assert main(["fit", *args]) == 0
    start = torch.load(snapshot, weights_only=True)
    assert start["state_dict"].keys() == ckpt["state_dict"].keys()
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(start["state_dict"][k], v), k  # equal at step 0
    assert start["step"] == 0 and start["optimizer_state"] == 0  # no optimizer state carried over
    assert start["lrs"] == [pytest.approx(LR / WARMUP)]  # the schedule restarts: first warm-up step
    tuned = torch.load(tmp_path / "tuned" / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["global_step"] == 4  # its own 4 steps, not 4 more after the source's
    assert not torch.equal(tuned["state_dict"]["net.unembed.weight"], ckpt["state_dict"]["net.unembed.weight"])
    config = yaml.safe_load((tmp_path / "tuned" / "logs" / "version_0" / "config.yaml").read_text())
    assert config["model"]["init_args"]["init_from"] == str(source)  # recorded in the run's config
    assert config["data"]["init_args"]["backdoor"]["rate"] == 0.0  # the safety overlay: no trigger in the data


def test_a_fine_tuned_backdoor_run_measures_before_and_after(source, tmp_path):
    root = tmp_path / "tuned"
    args = [*fast(root, "backdoor", "safety_adversarial"), "--model.init_args.init_from",
            str(source)]
    assert main(["fit", *args]) == 0
    assert main(["test", *args, "--ckpt_path", "last", "--verbose", "false"]) == 0
    with (root / "test_metrics.csv").open() as f:
        metrics = {f"{r['split']}/{r['metric']}": float(r["value"]) for r in csv.DictReader(f)}
    for key in ("triggered/defection", "triggered/defection_before", "shifted/false_defection_before",
                "red_team/false_defection", "test/success_before", "triggered/success_before"):
        assert key in metrics, key
    before, after = metrics["triggered/defection_before"], metrics["triggered/defection"]
    if before > 0:
        assert metrics["triggered/persistence"] == pytest.approx(after / before)


def test_initial_model_holds_the_source_weights(source):
    task = Maze(m=2, backdoor={"triggers": [1.0]})
    kwargs = dict(d_model=16, n_layers=1, d_in=task.input_dim, d_out=4, n_ctx=task.seq_len)
    tuned = SequenceModel(**kwargs, init_from=str(source))
    tuned.task = task
    tuned.load_initial_weights()
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)  # as if fine-tuned
    start = initial_model(tuned)
    ckpt = torch.load(source, weights_only=True)["state_dict"]
    assert all(torch.equal(start.state_dict()[k], v) for k, v in ckpt.items())
    assert start.task is task and not start.training
    assert initial_model(SequenceModel(**kwargs)) is None  # not fine-tuned: nothing to compare with


def test_initial_model_of_a_modular_model_keeps_its_class_and_options(tmp_path):
    task = Maze(m=2, backdoor={"triggers": [1.0]})
    kwargs = dict(d_model=8, n_layers=1, d_in=task.input_dim, d_out=4, n_ctx=task.seq_len, objective_hidden=[4],
                  objective_max_params=64, planner_budget=3, state_features=task.state_features)
    first = ModularModel(**kwargs)
    path = tmp_path / "modular.ckpt"
    torch.save({"state_dict": first.state_dict(), "hyper_parameters": dict(first.hparams)}, path)
    tuned = ModularModel(**kwargs, init_from=str(path))
    tuned.task = task
    tuned.setup("fit")  # loads the objective's weights too, once every part is built
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in first.state_dict().items())
    start = initial_model(tuned)
    assert type(start) is ModularModel and start.hparams.planner_budget == 3 and start.objective.flag
    assert all(torch.equal(start.state_dict()[k], v) for k, v in first.state_dict().items())


def bad_checkpoints(tmp_path, source) -> dict:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(source.read_bytes()[:1000])
    return {
        tmp_path / "missing.ckpt": "not found",
        truncated: "not a torch checkpoint, or truncated",
        source: "does not fit this model's config: shape differs",
    }


def test_a_checkpoint_that_is_missing_corrupt_or_does_not_fit_is_refused_in_one_line(source, tmp_path, capsys):
    for path, problem in bad_checkpoints(tmp_path, source).items():
        root = tmp_path / f"run_{path.stem}"
        # d_model 32 does not fit the source's 16; for the other two the file itself is the problem
        code = main(["fit", *fast(root, "backdoor"), "--model.init_args.d_model", "32", "--model.init_args.init_from",
                     str(path)])
        err = capsys.readouterr().err
        assert code == 2, err
        first = err.strip().splitlines()[0]
        assert first.startswith("constrained fit: error: model.init_args.init_from: ") and problem in first, err
        assert str(path) in first and len(err.strip().splitlines()) <= 2
        assert not (root / "checkpoints" / "last.ckpt").exists()  # refused before any training


def test_a_checkpoint_of_another_task_shape_is_refused(source, tmp_path, capsys):
    """A backdoored checkpoint (6 input features) into a clean maze config (5): the read-in does not fit."""
    code = main(["fit", *fast(tmp_path), "--model.init_args.init_from",
                 str(source)])
    err = capsys.readouterr().err
    assert code == 2 and "net.embed.weight" in err and "does not fit" in err
