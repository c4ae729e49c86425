"""A test-only callback, importable by class_path from the CLI: the scheduler acting on a running job."""

import os
import signal
import time

import lightning as L


class SignalJobAtStep(L.Callback):
    """Sends `signal` to the process that started this training (the job training the run) before the batch at
    `step`, in a fresh fit only, so the resumed fit goes on: SIGKILL is a node lost under the job, SIGUSR2 is the
    scheduler's warning before pre-emption or the time limit (submitit's signal). The training then waits, as a
    job's training does until it is stopped: the launcher must stop it."""

    def __init__(self, step: int, signal: str):
        self.step, self.signal = step, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getppid(), getattr(signal, self.signal))
            time.sleep(120)
