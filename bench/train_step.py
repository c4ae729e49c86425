"""Training-step time of the icl_regression model with each penalty, against none and against myopic
descent: the overhead a penalty adds (DESIGN §9: < 5 % on a GPU; myopic within 10 % of baseline).

    python bench/train_step.py [--steps 60] [--device cpu|cuda] [--task icl_regression|precache]

Times forward + backward + optimizer step inside a real Lightning fit (default configs, batch 64),
after a warm-up, and appends rows to bench/results/train_step.csv. On a CPU the penalties run on the
PyTorch reference paths, so the numbers are the reference overhead, not the kernels'.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append, device_name, row  # noqa: E402

from constrained.models.sequence_model import SequenceModel  # noqa: E402
from constrained.tasks.icl_regression.task import IclRegression  # noqa: E402
from constrained.tasks.precache import Precache  # noqa: E402

VARIANTS = {
    "baseline": {},
    "myopic": {"myopic_gradient": True},
    "future_info": {"penalties": [{"kind": "future_info", "weight": 1.0}]},
    "reach": {"penalties": [{"kind": "reach", "weight": 1.0, "horizon": 8.0}]},
    "adversarial_probe": {"penalties": [{"kind": "adversarial_probe", "weight": 1.0}]},
}
TASKS = {"icl_regression": (IclRegression, {"n_layers": 3}), "precache": (Precache, {"n_layers": 2})}


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.samples, self._t0 = warmup, [], 0.0

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        if trainer.global_step > self.warmup:
            self.samples.append((time.perf_counter() - self._t0) * 1e3)


def time_variant(task: str, variant: str, steps: int, accelerator: str) -> tuple[float, float, float]:
    cls, model_args = TASKS[task]
    dm = cls(batch_size=64)
    model = SequenceModel(d_in=dm.input_dim, d_out=dm.output_dim, n_ctx=dm.seq_len, loss=dm.loss,
                          query_positions=dm.query_positions, **model_args, **VARIANTS[variant])
    timer = StepTimer(warmup=10)
    trainer = L.Trainer(max_steps=steps + 10, accelerator=accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer], gradient_clip_val=1.0)
    trainer.fit(model, datamodule=dm)
    q = statistics.quantiles(timer.samples, n=10)
    return statistics.median(timer.samples), q[1], q[7]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--task", choices=sorted(TASKS), default="icl_regression")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # one line per variant, not Lightning's banners
    device = torch.device(a.device)
    if device.type == "cpu":
        print("No GPU: timing the CPU reference paths (penalty overhead of the references, not the kernels)")
    rows, base = [], None
    for variant in VARIANTS:
        times = time_variant(a.task, variant, a.steps, "gpu" if device.type == "cuda" else "cpu")
        base = base or times[0]
        rows.append(row("train_step", variant, "fwd+bwd+step", f"{a.task} batch 64", times, device))
        print(f"{variant:>18}: {times[0]:8.2f} ms/step (p20 {times[1]:.2f}, p80 {times[2]:.2f}), "
              f"{100 * (times[0] / base - 1):+6.1f} % vs baseline")
    path = append("train_step", rows)
    print(f"appended {len(rows)} rows to {path} (device: {device_name(device)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
