import os

# before any kernel module is imported: Triton reads it when a kernel is decorated
os.environ["TRITON_INTERPRET"] = "1"

import lightning.pytorch  # noqa: F401  (its log handlers bind to the stderr of the moment: the real one, not a test's capture)
import pytest
import torch

from constrained.models.transformer import Transformer

CONFIGS = "configs/icl_regression"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(**kw) -> Transformer:
    args = dict(d_in=5, d_out=1, n_ctx=12, d_model=16, n_layers=2, n_heads=2)
    return Transformer(**{**args, **kw})


def fast_args(root, *overlays: str) -> list[str]:
    """CLI arguments for a tiny, quick icl_regression run in `root`."""
    cfg = [a for o in ("base", *overlays) for a in ("--config", f"{CONFIGS}/{o}.yaml")]
    return cfg + [
        "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", "6",
        "--trainer.val_check_interval", "3",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--model.init_args.d_model", "16",
        "--model.init_args.n_layers", "1",
        "--model.init_args.warmup_steps", "2",
        "--data.init_args.batch_size", "8",
        "--data.init_args.n_val", "16",
        "--data.init_args.n_test", "32",
        "--data.init_args.n_points", "6",
    ]


@pytest.fixture
def one_thread():
    """Tiny tensors: worker threads only add contention on a busy host (the forwards get many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
