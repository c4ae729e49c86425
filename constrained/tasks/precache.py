"""Pre-caching (Wu, Morris, Levine 2024, "Do language models plan for future tokens?"): a later target
needs an expensive function of earlier tokens, so a model that computes it ahead of time, at the
earlier positions, does better. Myopic descent forbids training those positions for later ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from constrained.tasks.task import Evaluation, Gap, Headline, Task, check_finite, masked


def precache_targets(xs: torch.Tensor, zs: torch.Tensor, a: float, K: int) -> torch.Tensor:
    """y_n = z_n · Σ_{i=1..K} sin(a·x_{n−i}) + (1 − z_n) · x_n; terms with n − i < 0 are absent.

    xs: (n, T); zs: (n, T) of 0.0 / 1.0; returns ys (n, T)."""
    s = torch.sin(a * xs)
    lagged = torch.zeros_like(xs)
    for i in range(1, K + 1):  # a lag of i >= T adds nothing: both slices are empty
        lagged[:, i:] += s[:, :-i]
    return zs * lagged + (1 - zs) * xs


class Precache(Task):
    """Args:
        a: frequency of the sine; larger is harder to learn (the paper's a = 10 did not learn on CPU).
        K: how many earlier tokens each target sums over; loss and metrics only at positions n >= K,
            where the sum is complete.
        T: sequence length. p: probability that a token asks for the sum (z = 1) rather than a copy.
        seed: training stream (set from seed_everything); eval_seed: fixed val/test sets.
    """

    headline = Headline("test/mse_over_var", lower_is_better=True,
                        signatures=("test/probe_next_target_last_selectivity", "test/future_info_last", "test/reach",
                                    "test/iteration"),
                        gaps=(Gap("myopia gap, kv form", "myopic_kv", "baseline", "test/huber"),
                              Gap("myopia gap, input form", "myopic_input", "baseline", "test/huber")))

    def __init__(
        self,
        a: float = 3.0,
        K: int = 10,
        T: int = 32,
        p: float = 1.0,
        batch_size: int = 64,
        n_val: int = 512,
        n_test: int = 2048,
        seed: int = 0,
        eval_seed: int = 1234,
    ):
        super().__init__(batch_size, n_val, n_test, seed, eval_seed)
        check_finite(a=a, p=p)
        if not a > 0:
            raise ValueError(f"data.init_args.a must be > 0, got {a}")
        if K < 1:
            raise ValueError(f"data.init_args.K must be >= 1, got {K}")
        # T >= K + 2: at least one scored position (n >= K) with a next target for the probe
        if T < K + 2:
            raise ValueError(f"data.init_args.T must be >= K + 2 = {K + 2} (positions n >= K are scored and the "
                             f"probe needs a next target), got {T}")
        if not 0 <= p <= 1:
            raise ValueError(f"data.init_args.p must be in [0, 1], got {p}")
        self.a, self.K, self.T, self.p = float(a), K, T, float(p)

    @property
    def seq_len(self) -> int:
        return self.T

    @property
    def input_dim(self) -> int:
        return 2  # token (x_n, z_n)

    def loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.huber_loss(*masked(pred, batch))

    def make_batch(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        xs = torch.randn(n, self.T, generator=gen)
        zs = (torch.rand(n, self.T, generator=gen) < self.p).float()
        ys = precache_targets(xs, zs, self.a, self.K)
        loss_mask = torch.zeros(n, self.T, dtype=torch.bool)
        loss_mask[:, self.K:] = True
        inputs = torch.stack([xs, zs], dim=-1)  # (n, T, 2)
        return {"inputs": inputs, "targets": ys.unsqueeze(-1), "loss_mask": loss_mask, "xs": xs, "zs": zs, "ys": ys}

    @property
    def reach_horizon(self) -> float:
        return float(self.K)  # y_n reads x_{n-1..n-K}: only reach past what the task needs counts

    @property
    def default_future_k(self) -> int:
        return self.K  # the targets that sum over the tokens seen at t: y_{t+2..t+K} (docs/design.md, metrics)

    def probe_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """next_target: y_{n+1} read from the hidden state at n. Decodable there only if position n
        already holds sin(a·x_n) (or an equivalent), i.e. if it computed something for the next position."""
        ys = batch["ys"]
        n, T = ys.shape
        values = torch.zeros(n, T, 1, dtype=ys.dtype, device=ys.device)
        values[:, :-1, 0] = ys[:, 1:]
        mask = torch.zeros(n, T, dtype=torch.bool, device=ys.device)
        mask[:, self.K: T - 1] = True
        return {"next_target": (mask, values)}

    def evaluate(self, preds: dict[str, torch.Tensor], model=None, start=None) -> Evaluation:
        """Huber (the base objective) and MSE / Var(y) on the scored positions."""
        metrics = {}
        for split, pred in preds.items():
            b = self.eval_set(split)
            mask = b["loss_mask"]
            p, y = pred[mask].double(), b["targets"][mask].double()  # (N, 1): scored positions only
            huber = F.huber_loss(p, y, delta=1.0).item()
            mse_over_var = (F.mse_loss(p, y) / y.var(correction=0)).item()
            metrics.update({f"{split}/huber": huber, f"{split}/mse_over_var": mse_over_var, f"{split}/loss": huber})
        return Evaluation(metrics)
