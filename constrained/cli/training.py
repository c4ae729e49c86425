"""The training subcommands (fit, validate, test): LightningCLI with the project's run folder, checkpoints,
links from the task into the model, and errors a user can fix reported in one line."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from constrained import checkpoint

# what the model takes from the task (Task attribute -> SequenceModel argument), linked at instantiation
LINKS = (("input_dim", "d_in"), ("output_dim", "d_out"), ("seq_len", "n_ctx"), ("query_positions", "query_positions"),
         ("vocab_size", "vocab_size"))


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt every `every_n_train_steps` steps and at the end of training, whatever metric the
    best-checkpoint callback monitors: a run killed before its first validation still resumes from here."""

    def __init__(self, every_n_train_steps: int = 100):
        if every_n_train_steps < 1:
            raise ValueError(f"last_checkpoint.every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(monitor=None, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class CLI(LightningCLI):
    """Run folder = trainer.default_root_dir: checkpoints/ (fixed, so `--ckpt_path last` finds them),
    logs/version_N/ per invocation (config.yaml, metrics.csv, TensorBoard events), task outputs."""

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
            "checkpoint.save_last": False,  # last.ckpt is LastCheckpoint's, on its own schedule
            "checkpoint.filename": "best-{step}",
        })
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        for attr, target in LINKS:
            parser.link_arguments("data", f"model.init_args.{target}", compute_fn=_getter(attr),
                                  apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.init_args.seed", compute_fn=_data_seed)

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the model's config with the hyperparameters stored in a checkpoint when --ckpt_path
        names a file (not for `last`), silently dropping options given for this run, e.g. a test-time
        planner_budget. Here the config given is the run, whichever way the checkpoint is named: a config that
        does not fit the weights fails at load_state_dict, naming the keys. The checkpoint is also read here
        (safely, weights_only), before Lightning reads it again, so that a missing or corrupt file is named
        before anything is built: one extra load at start-up, never in the training loop."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path:
            return
        path = Path(ckpt_path)
        if ckpt_path == "last":  # Lightning resolves it through the checkpoint callbacks; a fresh run has none yet
            path = Path(self.config[sub].trainer.get("default_root_dir") or "runs/default") / "checkpoints/last.ckpt"
            if not path.is_file():
                return
        elif ckpt_path in ("best", "hpc", "registry"):
            return
        checkpoint.read(path)

    def _instantiate_trainer(self, config, callbacks):
        root = Path(config.get("default_root_dir") or "runs/default")
        check_writable(root)
        config["default_root_dir"] = str(root)
        if config.get("logger") in (None, True):
            csv = CSVLogger(root, name="logs")
            config["logger"] = [csv, TensorBoardLogger(root, name="logs", version=csv.version, sub_dir="tb")]
        for cb in [*callbacks, *(config.get("callbacks") or [])]:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str((root / "checkpoints").resolve())
        return super()._instantiate_trainer(config, callbacks)


def check_writable(root: Path) -> None:
    """The run folder and its checkpoints/ can be created and written, checked before any work: a run must not
    train for an hour and then lose its result to a file where a folder should be, a missing permission or a
    full disk."""
    probe = root / "checkpoints" / f".write-test-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        where = Path(e.filename) if e.filename else root
        why = "a file is there, where a folder should be" if isinstance(e, (FileExistsError, NotADirectoryError)) \
            else e.strerror or str(e)
        raise ValueError(f"cannot write the run folder {root} (trainer.default_root_dir): {where}: {why}") from None


def _getter(attr):
    return lambda data: getattr(data, attr)


def _data_seed(seed):
    if isinstance(seed, bool) or seed is None:
        raise ValueError("seed_everything must be an integer so that the run is reproducible")
    return int(seed)


def run_training(args: list[str] | None) -> None:
    """args=None reads sys.argv (the console script); a list runs in-process (tests, scripts)."""
    CLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
        save_config_kwargs={"overwrite": True},
        args=args,
    )
