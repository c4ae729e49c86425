import pytest
import torch

from constrained.seeding import generator
from constrained.tasks.icl_regression import algorithms
from constrained.tasks.icl_regression.task import Distribution, IclRegression, Shift, sample, tokenize


def test_training_stream_is_a_pure_function_of_seed_step_rank():
    dm = IclRegression(seed=3)
    a = dm.make_batch(generator(3, 0, 17, 0), 4, "train")
    b = dm.make_batch(generator(3, 0, 17, 0), 4, "train")
    c = dm.make_batch(generator(3, 0, 18, 0), 4, "train")
    d = dm.make_batch(generator(3, 0, 17, 1), 4, "train")
    assert torch.equal(a["inputs"], b["inputs"])
    assert not torch.equal(a["inputs"], c["inputs"]) and not torch.equal(a["inputs"], d["inputs"])


def test_train_stream_resumes_at_global_step():
    from constrained.tasks.loaders import TrainStream

    dm = IclRegression(seed=1, batch_size=4)
    from_zero = iter(TrainStream(dm, 0, 0))
    for _ in range(5):
        next(from_zero)
    assert torch.equal(next(from_zero)["inputs"], next(iter(TrainStream(dm, 5, 0)))["inputs"])


def test_eval_sets_fixed_by_eval_seed_not_training_seed():
    a, b = IclRegression(seed=0, n_test=8), IclRegression(seed=5, n_test=8)
    assert torch.equal(a.eval_set("test")["inputs"], b.eval_set("test")["inputs"])
    assert not torch.equal(a.eval_set("test")["inputs"], a.eval_set("val")["inputs"][:8])


def test_targets_are_linear_in_x():
    xs, ys, ws = sample(generator(0), 10, 4, 7, Distribution())
    torch.testing.assert_close(ys, torch.einsum("npd,nd->np", xs, ws))


def test_interleaved_tokens():
    xs, ys, _ = sample(generator(0), 2, 3, 4, Distribution())
    inputs, targets, mask = tokenize(xs, ys, "interleaved")
    assert inputs.shape == (2, 8, 3)
    torch.testing.assert_close(inputs[:, 0::2], xs)
    torch.testing.assert_close(inputs[:, 1::2, 0], ys)
    assert (inputs[:, 1::2, 1:] == 0).all()
    torch.testing.assert_close(targets[:, 0::2, 0], ys)
    assert mask[0].tolist() == [True, False] * 4


def test_concatenated_tokens():
    xs, ys, _ = sample(generator(0), 2, 3, 4, Distribution())
    inputs, _, _ = tokenize(xs, ys, "concatenated")
    assert inputs.shape == (2, 8, 5)
    q, c = inputs[:, 0::2], inputs[:, 1::2]
    torch.testing.assert_close(q[..., :3], xs)
    assert (q[..., 3] == 0).all() and (q[..., 4] == 1).all()
    torch.testing.assert_close(c[..., :3], xs)
    torch.testing.assert_close(c[..., 3], ys)
    assert (c[..., 4] == 0).all()
    assert IclRegression(token_format="concatenated", n_points=4).query_positions == [0, 2, 4, 6]


def test_least_squares_error_matches_theory():
    """Noiseless min-norm least squares: e(k) = (d - k) / d for k < d, 0 for k >= d."""
    d, P = 5, 10
    xs, ys, _ = sample(generator(1), 4000, d, P, Distribution())
    err = ((algorithms.least_squares(xs, ys) - ys) ** 2).mean(0) / d
    for k in range(P):
        expected = (d - k) / d if k < d else 0.0
        assert abs(err[k].item() - expected) < 0.05, (k, err[k].item())


def test_averaging_and_tuned_gd_step():
    d, P = 5, 12
    xs, ys, _ = sample(generator(2), 4000, d, P, Distribution())
    avg = ((algorithms.averaging(xs, ys) - ys) ** 2).mean(0) / d
    assert abs(avg[10].item() - (d + 1) / 10) < 0.1 * (d + 1) / 10 + 0.05  # about (d + 1) / k
    held_x, held_y, _ = sample(generator(3), 4000, d, P, Distribution())
    eta = algorithms.tune_gd_step(held_x, held_y)
    gd = ((algorithms.gd_step(xs, ys, eta) - ys) ** 2).mean(0) / d
    assert (gd[1:] <= avg[1:] + 1e-3).all()  # step size tuned: never worse than step size 1
    assert (gd[1:] < 1.0).all()  # and better than predicting zero


def test_shift_overrides_only_given_fields():
    base = Distribution(noise_std=0.1)
    shifted = Shift(x_scale=2.0).apply(base)
    assert shifted == Distribution(noise_std=0.1, x_scale=2.0)
    dm = IclRegression(shifted=Shift(x_covariance="skewed"), n_test=512)
    x = dm.eval_set("shifted")["xs"]
    var = x.pow(2).mean((0, 1))
    assert var[0] > 3 * var[-1]  # skewed: decaying variances
    assert dm.splits == ["test", "shifted"]
    assert IclRegression().splits == ["test"]


@pytest.mark.parametrize("kw,match", [({"n_points": 0}, "n_points"), ({"d": 0}, "data.init_args.d"),
                                      ({"token_format": "other"}, "token_format"), ({"x_scale": 0.0}, "x_scale")])
def test_bad_data_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        IclRegression(**kw)
