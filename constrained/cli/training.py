"""The training subcommands (fit, validate, test): LightningCLI with the project's run folder, checkpoints,
links from the task into the model, and errors a user can fix reported in one line."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from constrained import checkpoint
from constrained.cli import run_folder
from constrained.cli.quiet import quiet
from constrained.cli.summary import fit_summary, test_summary
from constrained.files import unwritable

# what the model takes from the task (Task attribute -> model argument), linked at instantiation; a model without
# the argument ignores the link (state_features: what a modular model's objective reads, constrained/common/planning.py)
LINKS = (("input_dim", "d_in"), ("output_dim", "d_out"), ("seq_len", "n_ctx"), ("query_positions", "query_positions"),
         ("vocab_size", "vocab_size"), ("state_features", "state_features"))


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt every `every_n_train_steps` steps and at the end of training, whatever metric the
    best-checkpoint callback monitors: a run killed before its first validation still resumes from here."""

    def __init__(self, every_n_train_steps: int = 100):
        if every_n_train_steps < 1:
            raise ValueError(f"last_checkpoint.every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(monitor=None, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps)
        self.save_every = every_n_train_steps

    def on_train_end(self, trainer, pl_module) -> None:
        # after a step that is a multiple of save_every, ModelCheckpoint has just written last.ckpt
        if trainer.global_step % self.save_every and not trainer.fast_dev_run:
            self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)  # part of the state
            trainer.save_checkpoint(self.last_model_path, weights_only=self.save_weights_only)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint written whole or not at all (checkpoint.write); a failed save names the file and keeps
    the one already there."""

    def save_checkpoint(self, state, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
            return super().save_checkpoint(state, path, storage_options)
        path = Path(path)
        existed = path.is_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write(state, path)
        except OSError as e:
            kept = "the checkpoint saved before is kept unchanged" if existed else "no earlier one was there"
            raise checkpoint.CheckpointError(f"cannot save checkpoint {path} (step {state.get('global_step')}): "
                                             f"{e.strerror or e}; {kept}") from None


class RunIdentity(L.Callback):
    """Writes what identifies the run's config (run_folder.identity) into every checkpoint, so that a later fit
    in the same folder can tell whether the checkpoints are its own."""

    def __init__(self, identity: dict):
        self.identity = json.dumps(identity, sort_keys=True)

    def on_save_checkpoint(self, trainer, pl_module, ckpt) -> None:
        ckpt[run_folder.IDENTITY_KEY] = self.identity


class CLI(LightningCLI):
    """Run folder = trainer.default_root_dir, composed from the config files unless the command line names it
    (run_folder.py): checkpoints/ (fixed, so `--ckpt_path last` finds them), logs/version_N/ per invocation
    (config.yaml, metrics.csv, TensorBoard events), task outputs. `fit` refuses a folder whose checkpoints
    another config wrote."""

    def __init__(self, *args, made: list | None = None, **kwargs):
        self._made = [] if made is None else made  # what this invocation created, removed if it fails before logging
        self._identity: dict | None = None
        self._read: dict[Path, dict] = {}  # checkpoints read at start-up, each read once, dropped before training
        self._summarize = False
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        """The run folder composed from the config files (run_folder.py) is added at the end of the command line,
        where it wins over every file, unless the command line names one: --print_config and config.yaml show the
        folder the run uses."""
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        given = list(sys.argv[1:] if args is None else args)
        folder = run_folder.folder_for(given)
        self.config = parser.parse_args(given + ["--trainer.default_root_dir", str(folder)] if folder else given)

    def _checkpoint(self, path: Path) -> dict:
        path = Path(path)
        if path not in self._read:
            self._read[path] = checkpoint.read(path)
        return self._read[path]

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
        before anything is built: one extra load at start-up, never in the training loop.

        test and validate score trained weights: with no checkpoint they would score a random initialisation and
        write metrics that look real, so that is refused unless asked for (--ckpt_path none)."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        config = self.config[sub]
        ckpt_path = config.get("ckpt_path")
        if isinstance(ckpt_path, str) and ckpt_path.lower() == "none":
            config["ckpt_path"] = None
            return
        if not ckpt_path:
            init_from = (config.get("model") or {}).get("init_args", {}).get("init_from")
            if sub in ("test", "validate") and not init_from:
                raise checkpoint.CheckpointError(
                    f"no weights to {sub}: give --ckpt_path (last, best or a file), or --ckpt_path none to {sub} "
                    f"the randomly initialised model on purpose")
            return
        folder = self._root(config) / "checkpoints"
        if ckpt_path == "last":  # Lightning resolves it through the checkpoint callbacks; a fresh run has none yet
            path = folder / "last.ckpt"
            if not path.is_file():
                if sub == "fit":
                    return
                raise checkpoint.CheckpointError(
                    f"no checkpoint to {sub}: {path} does not exist (train the run with `constrained fit` first, "
                    f"or give --ckpt_path none to {sub} the randomly initialised model on purpose)")
        elif ckpt_path == "best":
            best = config.get("checkpoint") or {}
            path = best_checkpoint(Path(best.get("dirpath") or folder), best.get("filename") or "best-{step}")
            config["ckpt_path"] = str(path)
        elif ckpt_path in ("hpc", "registry"):
            return
        else:
            path = Path(ckpt_path)
        self._checkpoint(path)

    @staticmethod
    def _root(config) -> Path:
        return Path(config.trainer.get("default_root_dir") or "runs/default")

    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub:
            config = self.config[sub]
            check_numbers(config.as_dict())
            self._identity = run_folder.identity(config, linked=tuple(target for _, target in LINKS))
            if sub == "fit":
                root = self._root(config)
                best = (config.get("checkpoint") or {}).get("dirpath")
                folders = [root / "checkpoints"] + ([Path(best)] if best else [])
                run_folder.check_folder(root, folders, self._identity, read=self._checkpoint)
        self._read.clear()  # a checkpoint's weights and optimizer state are not kept through training

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(fit_summary(self.datamodule, self.trainer))

    def before_test(self) -> None:
        # Lightning's table of every metric gives way to the summary after the test (--verbose false: neither)
        self._summarize = bool(self.config_init["test"].get("verbose", True))
        self.config_init["test"]["verbose"] = False

    def after_test(self) -> None:
        if self._summarize and self.trainer.is_global_zero:
            print(test_summary(self.datamodule, self.trainer))

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = section.get("trainer") or {}
        root = Path(config.get("default_root_dir") or "runs/default")
        self._made += check_writable(root)
        kwargs["default_root_dir"] = str(root)
        if config.get("logger") in (None, True):
            csv = CSVLogger(root, name="logs")
            self._made.append(csv)
            kwargs["logger"] = [csv, TensorBoardLogger(root, name="logs", version=csv.version, sub_dir="tb")]
        if self._identity is not None:
            callbacks = config.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
            kwargs["callbacks"] = [*callbacks, RunIdentity(self._identity)]
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        for cb in trainer.checkpoint_callbacks:  # read when the run sets up, so set here before it does
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str((root / "checkpoints").resolve())
        return trainer


def check_writable(root: Path) -> list[Path]:
    """The run folder and its checkpoints/ can be created and written, checked before any work: a run must not
    train for an hour and then lose its result to a file where a folder should be, a missing permission or a
    full disk. Returns the folders it created."""
    missing = [p for p in (root / "checkpoints", root) if not p.exists()]
    why = unwritable(root / "checkpoints")
    if why:
        raise ValueError(f"cannot write the run folder {root} (trainer.default_root_dir): {why}")
    return missing


def best_checkpoint(folder: Path, filename: str) -> Path:
    """The file `--ckpt_path best` names: the one checkpoint the best-checkpoint callback keeps (save_top_k 1),
    found by its file name, since a new process has no callback state that would remember it."""
    prefix = filename.split("{", 1)[0]
    found = sorted(p for p in folder.glob(f"{prefix}*.ckpt") if p.name != "last.ckpt") if folder.is_dir() else []
    if not found:
        raise checkpoint.CheckpointError(
            f"--ckpt_path best: no best checkpoint ({prefix}*.ckpt) in {folder}: one is written at each validation "
            f"(checkpoint.monitor); give --ckpt_path last or a file")
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise checkpoint.CheckpointError(f"--ckpt_path best: {len(found)} checkpoints match {prefix}*.ckpt in "
                                         f"{folder} ({names}); give the one to use as a file")
    return found[0]


FLOAT32_MAX = 3.4028234663852886e38


def check_numbers(config, key: str = "") -> None:
    """Every number in the config is finite and fits float32, the dtype the model and the data compute in: a
    NaN learning rate or an x_scale of 1e39 is named before anything is built, not found by a crash in setup or
    a NaN loss."""
    if isinstance(config, dict):
        for k, v in config.items():
            check_numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(config, (list, tuple)):
        for i, v in enumerate(config):
            check_numbers(v, f"{key}[{i}]")
    elif isinstance(config, float) and not (math.isfinite(config) and abs(config) <= FLOAT32_MAX):
        raise ValueError(f"{key} must be a finite number"
                         + (f" within float32's range (|x| <= {FLOAT32_MAX:.3g})" if math.isfinite(config) else "")
                         + f", got {config}")


def clean_up(made: list) -> None:
    """After a failed invocation: the log folder it opened, if nothing was logged into it (config.yaml and
    hparams.yaml alone are no record), and the folders it created that are still empty."""
    for item in made:
        if isinstance(item, CSVLogger):
            log_dir = Path(item.log_dir)  # a failing trainer flushes what was logged (finalize) before this runs
            if log_dir.is_dir() and not (log_dir / "metrics.csv").exists():
                shutil.rmtree(log_dir, ignore_errors=True)
                _remove_if_empty(log_dir.parent)
    for folder in (p for p in made if isinstance(p, Path)):
        _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _getter(attr):
    # a linked value becomes a hyper-parameter, so it is passed as plain data; a task without the attribute links None
    def get(data):
        value = getattr(data, attr, None)
        return value.to_dict() if hasattr(value, "to_dict") else value
    return get


def _data_seed(seed):
    if isinstance(seed, bool) or seed is None:
        raise ValueError("seed_everything must be an integer so that the run is reproducible")
    return int(seed)


def run_training(args: list[str] | None) -> None:
    """args=None reads sys.argv (the console script); a list runs in-process (tests, scripts)."""
    made: list = []
    quiet()
    try:
        CLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            args=args,
            made=made,
        )
    except BaseException:
        clean_up(made)
        raise
