"""The per-term training metrics are logged only on the steps Lightning writes (SequenceModel.logs_this_step), and
the loggers get exactly what they got when every step logged them."""

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from constrained.models.sequence_model import SequenceModel
from constrained.tasks.precache import Precache


def _fit(root, every_step: bool, monkeypatch) -> list[dict]:
    if every_step:
        monkeypatch.setattr(SequenceModel, "logs_this_step", lambda self: True)
    torch.manual_seed(0)
    task = Precache(batch_size=8, K=3, T=10, n_val=16, n_test=16)
    model = SequenceModel(d_model=16, n_layers=1, d_in=task.input_dim, n_ctx=task.seq_len, warmup_steps=1,
                          penalties=[{"kind": "future_info", "weight": 0.5}, {"kind": "reach", "weight": 0.0}])
    trainer = L.Trainer(max_steps=7, log_every_n_steps=3, logger=CSVLogger(root, name="", version=0),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=task)
    monkeypatch.undo()
    with (root / "version_0" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_loggers_get_the_same_metrics_as_when_every_step_logged(tmp_path, monkeypatch):
    gated = _fit(tmp_path / "gated", False, monkeypatch)
    every = _fit(tmp_path / "every", True, monkeypatch)
    assert [r["step"] for r in gated] == [r["step"] for r in every] == ["2", "5"]
    for g, e in zip(gated, every):
        assert g.keys() == e.keys()
        for key in ("train/task", "train/future_info", "train/loss", "penalty/future_info", "penalty/reach"):
            assert g[key] and float(g[key]) == pytest.approx(float(e[key]), rel=1e-5), key


def test_without_a_trainer_every_call_logs():
    model = SequenceModel(d_in=2, n_ctx=4)
    assert model.logs_this_step()
