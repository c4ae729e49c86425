"""Training-step cost as the context grows: the core with each constraint against a plain PyTorch loop of the same
model, at a fixed number of tokens per step (the table in docs/speed.md).

    python bench/context_length.py [--lengths 128 512 1024] [--tokens 8192] [--steps 6] [--rounds 2] [--label L]

The core (constrained.models.transformer.Transformer: d_model 128, 4 layers, 4 heads, vocab 256; the text task's
core) as baseline, with myopic descent in both forms, with horizon 32, and with the reach penalty at soft horizon
32 (weight 1, every layer's reach read from attn.hook_reach as the training step reads it); beside them `Plain`,
the same model written here as one would in plain PyTorch (scaled_dot_product_attention with is_causal), the
anchor. Each step is forward, next-token cross-entropy, backward and an AdamW step on random tokens, timed by
the CPU clock of this process with one torch thread. The variants take turns: each of --rounds rounds times
every variant (in rotated order) for steps/rounds steps after one untimed step, so a machine that gets busier
slows them alike. Appends the median, p20, p80 and the ratio to the baseline to bench/results/context_length.csv.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append, device_name, row  # noqa: E402

import constrained  # noqa: E402  (which code is timed: PYTHONPATH may point at another checkout)
from constrained.models.config import TransformerConfig  # noqa: E402
from constrained.models.transformer import Transformer  # noqa: E402

D_MODEL, LAYERS, HEADS, VOCAB = 128, 4, 4, 256
REACH_H = 32.0
VARIANTS = {
    "plain": None,
    "baseline": {},
    "myopic_kv": {"myopic_gradient": "kv"},
    "myopic_input": {"myopic_gradient": "input"},
    "horizon32": {"horizon": 32},
    "reach32": {},  # the baseline core with the reach penalty
}


class PlainBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class Plain(nn.Module):
    """The core's architecture (pre-LayerNorm, learned positions, GELU MLP) in plain PyTorch."""

    def __init__(self, n_ctx: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(torch.randn(n_ctx, D_MODEL) * 0.02)
        self.blocks = nn.ModuleList(PlainBlock(D_MODEL, HEADS) for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D_MODEL)
        self.unembed = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln(x))


def make_step(variant: str, T: int):
    """A function running one training step on a (B, T + 1) token batch."""
    torch.manual_seed(0)
    if VARIANTS[variant] is None:
        model = Plain(T)
    else:
        config = TransformerConfig(d_in=1, d_out=VOCAB, n_ctx=T, d_model=D_MODEL, n_layers=LAYERS, n_heads=HEADS,
                                   vocab_size=VOCAB, **VARIANTS[variant])
        model = Transformer(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reach_names = [f"blocks.{i}.attn.hook_reach" for i in range(LAYERS)]

    def step(tokens):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        opt.zero_grad(set_to_none=True)
        if variant == "reach32":
            logits, cache = model.run_with_cache(inputs, names_filter=reach_names, detach=False, reach_h=REACH_H)
            penalty = torch.stack([cache[n] for n in reach_names]).mean()
        else:
            logits, penalty = model(inputs), 0.0
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1)) + penalty
        loss.backward()
        opt.step()

    return step


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(samples, n=10)
    return statistics.median(samples), q[1], q[7]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--tokens", type=int, default=8192, help="tokens per step: batch = tokens / T")
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and length, over all rounds")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="", help="appended to the mode column, e.g. the commit of the code timed "
                   "(PYTHONPATH=<a worktree at that commit> to time an older version with this benchmark)")
    a = p.parse_args(argv)
    if a.steps < a.rounds or a.rounds < 1 or "baseline" not in a.variants:
        p.error("need steps >= rounds >= 1 and baseline among the variants")
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    per_round = -(-a.steps // a.rounds)
    rows, table = [], []
    for T in a.lengths:
        batch = max(1, a.tokens // T)
        tokens = torch.randint(0, VOCAB, (batch, T + 1), generator=torch.Generator().manual_seed(T))
        steps = {v: make_step(v, T) for v in a.variants}
        ms = {v: [] for v in a.variants}
        for r in range(a.rounds):
            turn = a.variants[r % len(a.variants):] + a.variants[:r % len(a.variants)]
            for v in turn:
                steps[v](tokens)  # untimed: first-touch allocations, the optimizer's state
                for _ in range(per_round):
                    t0 = time.process_time()
                    steps[v](tokens)
                    ms[v].append((time.process_time() - t0) * 1e3)
        base = statistics.median(ms["baseline"])
        shape = f"T={T} batch {batch}, {a.threads} thread{'s' * (a.threads > 1)}, cpu clock"
        cells = []
        for v in a.variants:
            times = quantiles(ms[v])
            mode = "fwd+bwd+step" + (f" ({a.label})" if a.label else "")
            rows.append(row("context_length", v, mode, shape, times, device, times[0] / base, "x baseline"))
            cells.append(f"{times[0]:.0f} ms" if v in ("baseline", "plain") else f"{times[0] / base:.2f}x")
            print(f"T={T:5d} {v:>13}: {times[0]:8.1f} ms ({times[1]:.1f}-{times[2]:.1f})  {times[0] / base:.3f}x")
        if "plain" in ms:
            cells.append(f"{base / statistics.median(ms['plain']):.2f}x")
        table.append(f"| {T} ({batch}) | " + " | ".join(cells) + " |")
    path = append("context_length", rows)
    print(f"appended {len(rows)} rows to {path} (device: {device_name(device)}; constrained from "
          f"{Path(constrained.__file__).parent})\n")
    head = [v if v in ("baseline", "plain") else f"{v} / baseline" for v in a.variants]
    head += ["baseline / plain"] if "plain" in a.variants else []
    print("| T (batch) | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
