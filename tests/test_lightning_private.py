"""The two places the project still leans on Lightning's private parts, each pinned: if a Lightning upgrade
moves either, a test here fails instead of the behaviour changing unseen.

- CLI._parse_ckpt_path replaces LightningCLI's hook that swaps the model's config for the hyper-parameters
  stored in a checkpoint (it would drop options given for this run);
- SequenceModel.logs_this_step asks the trainer's logger connector on which steps the loggers are written."""

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from constrained.cli.training import CLI, run_training
from constrained.models.sequence_model import SequenceModel
from constrained.tasks.precache import Precache
from tests.helpers import fast_args


class Called(Exception):
    pass


def test_lightning_cli_still_calls_the_checkpoint_hook_the_cli_replaces(tmp_path, monkeypatch):
    assert "_parse_ckpt_path" in vars(LightningCLI)  # Lightning's own, which ours overrides

    def replaced(self):
        raise Called(self.config["subcommand"])

    monkeypatch.setattr(CLI, "_parse_ckpt_path", replaced)
    with pytest.raises(Called, match="fit"):
        run_training(["fit", *fast_args(tmp_path)])


def test_the_trainer_still_says_which_steps_it_logs(tmp_path, monkeypatch):
    seen = []
    step = SequenceModel.training_step

    def recording(self, batch, batch_idx):
        seen.append(self.logs_this_step())
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SequenceModel, "training_step", recording)
    torch.manual_seed(0)
    task = Precache(batch_size=8, K=3, T=10, n_val=16, n_test=16)
    model = SequenceModel(d_model=16, n_layers=1, d_in=task.input_dim, n_ctx=task.seq_len, warmup_steps=1)
    trainer = L.Trainer(max_steps=7, log_every_n_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=task)
    assert isinstance(trainer._logger_connector.should_update_logs, bool)
    assert seen == [False, False, True, False, False, True, False]  # the 3rd and 6th steps are written
