"""Test-only callbacks, importable by class_path from the CLI."""

import lightning as L


class CrashAtStep(L.Callback):
    """Simulates a run killed mid-training: raises before the batch at `step` runs."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class FailInSetup(L.Callback):
    """A user error found after the trainer is built and before anything is logged."""

    def setup(self, trainer, pl_module, stage):
        raise ValueError("simulated bad option found in setup")


def one_line_error(capsys, prefix: str = "") -> str:
    """The error a command printed: one line (and the CONSTRAINED_DEBUG hint), no traceback, no usage."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "CONSTRAINED_DEBUG" not in line]
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    assert lines[0].startswith(prefix), err
    return lines[0]
