"""Training-step time of a task's model with each constraint, against the baseline: the overhead a
constraint adds (the targets in docs/speed.md).

    python bench/train_step.py [--task icl_regression|precache|text] [--steps 60] [--rounds 5] [--device cpu|cuda]
    python bench/train_step.py --task precache --profile   # top ops per variant -> results/profile_<task>.txt

Times forward + backward + optimizer step inside real Lightning fits (default configs, batch 64) after a
warm-up, and appends rows to bench/results/train_step.csv with the ratio to the baseline. The variants take
turns: each of --rounds rounds fits every variant (in rotated order) for steps/rounds timed steps, so a
busy machine slows them alike rather than whichever ran last. Beside the step ("fwd+bwd+step") it records
the loop iteration ("step+data": the step plus fetching the batch, whose future signals the penalties'
data now carry). --profile profiles the timed steps instead of recording times.
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
from common import RESULTS, append, device_name, row, stamp  # noqa: E402

from constrained.models.sequence_model import SequenceModel  # noqa: E402
from constrained.tasks.icl_regression.task import IclRegression  # noqa: E402
from constrained.tasks.precache import Precache  # noqa: E402
from constrained.tasks.text import Text  # noqa: E402

VARIANTS = {
    "baseline": {},
    "myopic": {"myopic_gradient": True},
    "horizon": {"horizon": 8},
    "future_info": {"penalties": [{"kind": "future_info", "weight": 1.0}]},
    "reach": {"penalties": [{"kind": "reach", "weight": 1.0, "horizon": 8.0}]},
    "adversarial_probe": {"penalties": [{"kind": "adversarial_probe", "weight": 1.0}]},
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
TASKS = {"icl_regression": (IclRegression, {"n_layers": 3}), "precache": (Precache, {"n_layers": 2}),
         "text": (Text, {"n_layers": 4, "d_model": 128, "n_heads": 4})}  # text: configs/text/base.yaml's core


class StepTimer(L.Callback):
    """Milliseconds per step (batch start to end: forward, backward, optimizer step) and per loop iteration
    (end to end: the step and the fetching of its batch) after `warmup` steps; with a profiler, profiles them."""

    def __init__(self, warmup: int, profiler: torch.profiler.profile | None = None, clock=time.perf_counter):
        self.warmup, self.profiler, self.clock = warmup, profiler, clock
        self.step_ms: list[float] = []
        self.loop_ms: list[float] = []
        self._t0 = self._last_end = 0.0

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        if self.profiler is not None and trainer.global_step == self.warmup:
            self.profiler.start()
        self._t0 = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        now = self.clock()
        if trainer.global_step > self.warmup:
            self.step_ms.append((now - self._t0) * 1e3)
            self.loop_ms.append((now - self._last_end) * 1e3)
        self._last_end = now

    def on_train_end(self, trainer, pl_module):
        if self.profiler is not None:
            self.profiler.stop()


def time_variant(task: str, variant: str, steps: int, warmup: int, accelerator: str,
                 profiler: torch.profiler.profile | None = None, clock=time.perf_counter) -> StepTimer:
    """One fresh Lightning fit of warmup + steps steps; its timer holds the timed steps."""
    cls, model_args = TASKS[task]
    dm = cls(batch_size=64)
    torch.manual_seed(0)
    model = SequenceModel(d_in=dm.input_dim, d_out=dm.output_dim, n_ctx=dm.seq_len,
                          query_positions=dm.query_positions, vocab_size=dm.vocab_size, **model_args,
                          **VARIANTS[variant])
    timer = StepTimer(warmup, profiler, clock)
    trainer = L.Trainer(max_steps=steps + warmup, accelerator=accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer], gradient_clip_val=1.0)
    trainer.fit(model, datamodule=dm)
    return timer


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=10)
    return statistics.median(samples), q[1], q[7]


def profile(task: str, variants: list[str], steps: int, warmup: int, device: torch.device, argv: list[str]) -> Path:
    """torch.profiler over `steps` timed steps per variant; the top ops by self time go to profile_<task>.txt."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    lines = [f"# python bench/train_step.py {' '.join(argv)}",
             f"# {stamp(device)['date']}, {device_name(device)}, torch threads: {torch.get_num_threads()}, "
             f"{steps} steps per variant after {warmup} warm-up steps, batch 64; top ops by {sort}", ""]
    for variant in variants:
        prof = torch.profiler.profile(activities=activities)
        timer = time_variant(task, variant, steps, warmup, "gpu" if device.type == "cuda" else "cpu", prof)
        table = prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60)
        lines += [f"== {variant}: median {statistics.median(timer.step_ms):.2f} ms/step while profiled", table, ""]
        print(f"profiled {variant}")
    path = RESULTS / f"profile_{task}.txt"
    path.write_text("\n".join(lines))
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant, over all rounds")
    p.add_argument("--rounds", type=int, default=5, help="turns the variants take (each a fresh fit)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each fit")
    p.add_argument("--task", choices=sorted(TASKS), default="icl_regression")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which to run (default all); ratios need baseline among them")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or the CPU time of this process (steadier on a shared machine, where waiting "
                   "for a core is not the step's cost; CUDA work is not in it)")
    p.add_argument("--profile", action="store_true", help="profile the timed steps of each variant instead")
    a = p.parse_args(argv)
    if a.steps < 1 or a.rounds < 1 or a.warmup < 0 or a.steps < a.rounds:
        p.error(f"need steps >= rounds >= 1 and warmup >= 0, got {a.steps}, {a.rounds}, {a.warmup}")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # one line per variant, not Lightning's banners
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    if a.profile:
        print(f"wrote {profile(a.task, a.variants, a.steps, a.warmup, device, argv)}")
        return 0
    if device.type == "cpu":
        print("No GPU: timing the CPU paths (torch's fused attention; the reference where the pattern is needed)")
    step_ms = {v: [] for v in a.variants}
    loop_ms = {v: [] for v in a.variants}
    per_round = -(-a.steps // a.rounds)
    for r in range(a.rounds):
        turn = a.variants[r % len(a.variants):] + a.variants[:r % len(a.variants)]
        for variant in turn:
            timer = time_variant(a.task, variant, per_round, a.warmup, accelerator, clock=CLOCKS[a.clock])
            step_ms[variant] += timer.step_ms
            loop_ms[variant] += timer.loop_ms
        print(f"round {r + 1}/{a.rounds} done")
    shape = (f"{a.task} batch 64" + ("" if a.threads is None else f", {a.threads} thread{'s' * (a.threads > 1)}")
             + ("" if a.clock == "wall" else f", {a.clock} clock"))
    rows = []
    tokens = 64 * TASKS[a.task][0](batch_size=64).seq_len  # per step: batch 64 x sequence length
    for mode, samples in (("fwd+bwd+step", step_ms), ("step+data", loop_ms)):
        base = statistics.median(samples["baseline"]) if "baseline" in samples else None
        print(f"{mode} (median ms, p20-p80, ratio to baseline):")
        for variant in a.variants:
            times = quantiles(samples[variant])
            ratio = None if base is None else times[0] / base
            rows.append(row("train_step", variant, mode, shape, times, device, ratio, "x baseline"))
            print(f"  {variant:>18}: {times[0]:8.2f} ({times[1]:.2f}-{times[2]:.2f})"
                  + ("" if ratio is None else f"  {ratio:.3f}x") + f"  {tokens / times[0] * 1e3:,.0f} tokens/s")
    path = append("train_step", rows)
    print(f"appended {len(rows)} rows to {path} (device: {device_name(device)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
