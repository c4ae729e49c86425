"""In-context linear regression (Garg et al. 2022): the task where a plain transformer learns
an internal optimizer. Data is drawn from seeds, never downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from constrained.seeding import generator, stream
from constrained.tasks.icl_regression import algorithms, curve
from constrained.tasks.task import Evaluation, Headline, Task, check_finite, masked


@dataclass
class Distribution:
    """How x and y are drawn. The shifted (OOD) test set overrides some of these fields."""

    noise_std: float = 0.0
    x_scale: float = 1.0
    x_covariance: Literal["isotropic", "skewed"] = "isotropic"

    def __post_init__(self):
        check_finite(noise_std=self.noise_std, x_scale=self.x_scale)
        if self.noise_std < 0 or self.x_scale <= 0:
            raise ValueError(f"data.init_args: need noise_std >= 0 and x_scale > 0, got {self}")
        if self.x_covariance not in ("isotropic", "skewed"):
            raise ValueError(f"x_covariance must be 'isotropic' or 'skewed', got {self.x_covariance!r}")


@dataclass
class Shift:
    """Fields left null keep the training distribution's value."""

    noise_std: float | None = None
    x_scale: float | None = None
    x_covariance: Literal["isotropic", "skewed"] | None = None

    def apply(self, base: Distribution) -> Distribution:
        fields = {k: v for k, v in vars(self).items() if v is not None}
        check_finite(**{f"shifted.{k}": v for k, v in fields.items() if k != "x_covariance"})
        return Distribution(**{**vars(base), **fields})


def x_stds(d: int, covariance: str) -> torch.Tensor:
    """Per-coordinate std. 'skewed': variances proportional to 1/i^2, rescaled so E|x|^2 = d."""
    if covariance == "isotropic":
        return torch.ones(d)
    var = 1.0 / torch.arange(1, d + 1, dtype=torch.float32) ** 2
    return (var * d / var.sum()).sqrt()


def sample(gen: torch.Generator, n: int, d: int, n_points: int, dist: Distribution):
    """Draw n regression problems: xs (n, P, d), ys (n, P), ws (n, d)."""
    ws = torch.randn(n, d, generator=gen)
    xs = torch.randn(n, n_points, d, generator=gen) * x_stds(d, dist.x_covariance) * dist.x_scale
    noise = torch.randn(n, n_points, generator=gen) * dist.noise_std
    ys = torch.einsum("npd,nd->np", xs, ws) + noise
    return xs, ys, ws


def tokenize(xs: torch.Tensor, ys: torch.Tensor, token_format: str):
    """Sequences of 2P tokens; the target y_i is predicted at position 2i in both formats.

    interleaved (Garg): x_0, [y_0, 0..], x_1, ... (width d).
    concatenated (von Oswald): q_0, c_0, q_1, c_1, ... with query q_i = (x_i, 0, 1) and
    context c_i = (x_i, y_i, 0) (width d + 2); no token reads a query but the query itself.
    """
    n, P, d = xs.shape
    if token_format == "interleaved":
        ytok = torch.zeros_like(xs)
        ytok[..., 0] = ys
        inputs = torch.stack([xs, ytok], dim=2).reshape(n, 2 * P, d)  # (n, 2P, d)
    else:
        zeros, ones = torch.zeros(n, P, 1), torch.ones(n, P, 1)
        query = torch.cat([xs, zeros, ones], dim=-1)  # (n, P, d+2)
        context = torch.cat([xs, ys.unsqueeze(-1), zeros], dim=-1)  # (n, P, d+2)
        inputs = torch.stack([query, context], dim=2).reshape(n, 2 * P, d + 2)  # (n, 2P, d+2)
    targets = torch.zeros(n, 2 * P, 1)
    targets[:, 0::2, 0] = ys
    loss_mask = torch.zeros(n, 2 * P, dtype=torch.bool)
    loss_mask[:, 0::2] = True
    return inputs, targets, loss_mask


class IclRegression(Task):
    """In-context linear regression. Args:
        d: input dimension; n_points: examples per sequence (e(k) for k = 0..n_points-1).
        token_format: interleaved (pre-caching helps) or concatenated (the control).
        shifted: overrides for the OOD test set, e.g. {x_scale: 2.0}; null for none.
        seed: training stream (set from seed_everything); eval_seed: fixed val/test sets.
    """

    # distance at k = 3 < d: for k >= d noiseless least squares is exact, so its distance would just be e(k)
    headline = Headline("test/e10", lower_is_better=True,
                        signatures=("test/probe_w_hat_last_selectivity", "test/dist_least_squares_k3",
                                    "test/future_info_last", "test/reach", "test/iteration"))
    report_sections = (curve.report_section,)
    commands = {"curves": curve.curves_command}

    def __init__(
        self,
        d: int = 5,
        n_points: int = 15,
        noise_std: float = 0.0,
        x_scale: float = 1.0,
        x_covariance: Literal["isotropic", "skewed"] = "isotropic",
        token_format: Literal["interleaved", "concatenated"] = "interleaved",
        shifted: Shift | None = None,
        batch_size: int = 64,
        n_val: int = 512,
        n_test: int = 2048,
        seed: int = 0,
        eval_seed: int = 1234,
    ):
        super().__init__(batch_size, n_val, n_test, seed, eval_seed)
        for name, value in (("d", d), ("n_points", n_points)):
            if value < 1:
                raise ValueError(f"data.init_args.{name} must be >= 1, got {value}")
        if token_format not in ("interleaved", "concatenated"):
            raise ValueError(f"token_format must be 'interleaved' or 'concatenated', got {token_format!r}")
        self.d, self.n_points, self.token_format = d, n_points, token_format
        self.distribution = Distribution(noise_std, x_scale, x_covariance)
        self.shifted = shifted.apply(self.distribution) if shifted is not None else None

    @property
    def input_dim(self) -> int:
        return self.d if self.token_format == "interleaved" else self.d + 2

    @property
    def seq_len(self) -> int:
        return 2 * self.n_points

    @property
    def query_positions(self) -> list[int] | None:
        return list(range(0, self.seq_len, 2)) if self.token_format == "concatenated" else None

    @property
    def extra_splits(self) -> tuple[str, ...]:
        return ("shifted",) if self.shifted is not None else ()

    def loss(self, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(*masked(pred, batch))

    def make_batch(self, gen: torch.Generator, n: int, split: str) -> dict[str, torch.Tensor]:
        dist = self.shifted if split == "shifted" else self.distribution
        xs, ys, ws = sample(gen, n, self.d, self.n_points, dist)
        inputs, targets, loss_mask = tokenize(xs, ys, self.token_format)
        return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask, "xs": xs, "ys": ys}

    def probe_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """w_hat (Akyürek et al. 2022): at the token carrying y_i (position 2i + 1 in both formats), the
        min-norm least-squares estimate from examples 0..i, i.e. what an internal optimizer holds there."""
        xs, ys = batch["xs"], batch["ys"]
        n, P, d = xs.shape
        values = torch.zeros(n, 2 * P, d, dtype=xs.dtype, device=xs.device)
        for i in range(P):
            values[:, 2 * i + 1] = (torch.linalg.pinv(xs[:, : i + 1]) @ ys[:, : i + 1, None]).squeeze(-1)  # (n, d)
        mask = torch.zeros(n, 2 * P, dtype=torch.bool, device=xs.device)
        mask[:, 1::2] = True
        return {"w_hat": (mask, values)}

    def future_signal(self, batch: dict[str, torch.Tensor], future_k: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """ŵ_k at each y token (future_k unused): the estimate an in-context optimizer would carry forward
        to later predictions, which the current prediction does not need."""
        mask, values = self.probe_targets(batch)["w_hat"]
        return mask, values[mask]

    def evaluate(self, preds: dict[str, torch.Tensor], model=None, start=None) -> Evaluation:
        """e(k) of the model and of explicit algorithms per test split, and the model's distance to each
        (table icl_curve)."""
        held = self.make_batch(generator(self.eval_seed, stream("gd_tune")), self.n_test, "train")
        eta = algorithms.tune_gd_step(held["xs"], held["ys"])
        rows = []
        for split, pred in preds.items():
            b = self.eval_set(split)
            model_pred = pred[b["loss_mask"]].view(len(pred), self.n_points)  # (n, P): y_k from k examples
            baselines = algorithms.baseline_predictions(b["xs"], b["ys"], eta)
            rows += curve.curve_rows(split, model_pred, b["ys"], baselines, self.d)
        return Evaluation(curve.metrics(rows), {"icl_curve": rows})

    def write_artifacts(self, evaluation: Evaluation, out_dir: Path) -> None:
        super().write_artifacts(evaluation, out_dir)
        curve.plot(evaluation.tables["icl_curve"], out_dir / "icl_curve.png")
