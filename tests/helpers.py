"""Test-only callbacks, importable by class_path from the CLI."""

import lightning as L


class CrashAtStep(L.Callback):
    """Simulates a run killed mid-training: raises before the batch at `step` runs."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
