"""The penalties' future signals come with the training data (Task.stream_signals, TrainStream), equal to what
the training step used to compute itself, and the step uses them."""

import lightning as L
import pytest
import torch

from constrained.models.sequence_model import SequenceModel
from constrained.tasks.icl_regression.task import IclRegression
from constrained.tasks.loaders import TrainStream, signal_keys
from constrained.tasks.precache import Precache


@pytest.mark.parametrize("task", [IclRegression(batch_size=8, n_points=6), Precache(batch_size=8, K=3, T=10)])
def test_streamed_batches_carry_the_signal_the_task_defines(task):
    task.stream_signals([None, 3, None])
    batch = next(iter(TrainStream(task, start_step=4, rank=0)))
    plain = task.train_batch(4, 0)
    for k in (None, 3):
        rows_key, z_key = signal_keys(k)
        rows, z = task.future_signal(plain, k)
        assert torch.equal(batch[rows_key], rows) and torch.equal(batch[z_key], z)
        got = task.batch_signal(batch, k)
        assert got[0] is batch[rows_key] and got[1] is batch[z_key]
    assert not any(key.startswith("future_signal.4.") for key in batch)  # only the future_k values asked for
    rows, z = task.batch_signal(plain, 4)  # not attached: computed on the spot
    assert torch.equal(z, task.future_signal(plain, 4)[1])


def test_without_penalties_batches_carry_no_signal():
    batch = next(iter(TrainStream(Precache(batch_size=4, K=3, T=10), 0, 0)))
    assert not any(key.startswith("future_signal.") for key in batch)


@pytest.mark.parametrize("penalty", [{"kind": "future_info", "weight": 1.0},
                                     {"kind": "adversarial_probe", "weight": 1.0, "future_k": 3}])
def test_fit_uses_the_streamed_signal_and_never_recomputes_it(monkeypatch, penalty):
    task = Precache(batch_size=8, K=3, T=10, n_val=16, n_test=16)
    model = SequenceModel(d_model=16, n_layers=1, d_in=task.input_dim, n_ctx=task.seq_len, warmup_steps=1,
                          penalties=[penalty])
    seen = []

    class Check(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(signal_keys(penalty.get("future_k"))[1] in batch)
            # from here on the step itself must not build a signal: it is in the batch
            monkeypatch.setattr(task, "future_signal", _refuse)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            monkeypatch.undo()

    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[Check()])
    trainer.fit(model, datamodule=task)
    assert seen == [True, True]


def _refuse(*args, **kwargs):
    raise AssertionError("the training step computed a future signal the batch already carries")


def test_loss_terms_are_the_same_with_the_streamed_signal():
    task = Precache(batch_size=8, K=3, T=10)
    model = SequenceModel(d_model=16, n_layers=1, d_in=task.input_dim, n_ctx=task.seq_len,
                          penalties=[{"kind": "future_info", "weight": 1.0}])
    model.task = task
    model.log = lambda *args, **kwargs: None
    plain = task.train_batch(0, 0)
    task.stream_signals([None])
    streamed = task.with_signals(task.train_batch(0, 0))
    a, b = model.loss_terms(plain), model.loss_terms(streamed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
