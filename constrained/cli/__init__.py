"""`constrained` command: LightningCLI training subcommands plus the project's own tools."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from constrained import checkpoint

SHORT_HELP = """usage: constrained COMMAND [options]

Train transformers under architectural constraints and measure mesa-optimization signatures.

training (LightningCLI; `constrained fit --help` for every option):
  fit        train:   constrained fit --config configs/icl_regression/base.yaml \\
                                      --config configs/icl_regression/myopic.yaml
  validate   evaluate a checkpoint on the validation set (--ckpt_path)
  test       e(k) curves and test metrics, written to the run folder (--ckpt_path)

comparisons:
  ablate GRID.yaml [--jobs J] [--shard I/N] [--out DIR] [--retest]
             every variant x seed of a grid: fit, test, one record per run, then the report
  report DIR [DIR ...] [--out OUT]
             merge run records (several shards) into results.csv, report.md and plots
  curves RUN_DIR [RUN_DIR ...]   print e(k) of several runs beside least squares and averaging

checks:
  prove [--spec NAME] [--json] [--timeout-ms N]
             z3 specs (mask, penalty algebra) and the myopic and modular isolation checks; exit 0 only if all proved
  verify CHECKPOINT [--json] [--margin X] [--bound Y] [--timeout-ms N]
             check a modular model's objective module exactly over every maze square: the cheese
             scores above every other square by a margin, scores bounded; exit 0 only if proved
"""

TRAINING = ("fit", "validate", "test")
# A bad value (d_model not divisible by n_heads, horizon < 1, ...) or a non-finite loss is the user's problem, not
# a bug: one line naming it, exit 2. CONSTRAINED_DEBUG=1 re-raises for the traceback.
USER_ERRORS = (ValueError, FloatingPointError)


class CLI(LightningCLI):
    """Run folder = trainer.default_root_dir: checkpoints/ (fixed, so `--ckpt_path last` finds them),
    logs/version_N/ per invocation (config.yaml, metrics.csv, TensorBoard events), task outputs."""

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-{step}",
        })
        for attr, target in (("input_dim", "d_in"), ("output_dim", "d_out"), ("seq_len", "n_ctx"),
                             ("query_positions", "query_positions"), ("loss", "loss")):
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
        if ckpt_path == "last":  # Lightning resolves it through the checkpoint callback; a fresh run has none yet
            path = Path(self.config[sub].trainer.get("default_root_dir") or "runs/default") / "checkpoints/last.ckpt"
            if not path.is_file():
                return
        elif ckpt_path in ("best", "hpc", "registry"):
            return
        checkpoint.read(path)

    def _instantiate_trainer(self, config, callbacks):
        root = Path(config.get("default_root_dir") or "runs/default")
        config["default_root_dir"] = str(root)
        if config.get("logger") in (None, True):
            csv = CSVLogger(root, name="logs")
            config["logger"] = [csv, TensorBoardLogger(root, name="logs", version=csv.version, sub_dir="tb")]
        for cb in [*callbacks, *(config.get("callbacks") or [])]:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str((root / "checkpoints").resolve())
        return super()._instantiate_trainer(config, callbacks)


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
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def curves(run_dirs: list[str]) -> None:
    from constrained.tasks.icl_regression import curve as icl_curve

    data = {}
    for d in run_dirs:
        path = Path(d) / "icl_curve.csv"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (run `constrained test` on that run first)")
        run = Path(d)
        label = f"{run.parent.name}/{run.name}" if run.name.startswith("seed") else run.name  # ablation folders
        data[label] = icl_curve.read(path)
    print(icl_curve.table(data))


def ablate_command(rest: list[str]) -> int:
    import argparse

    from constrained.experiments.runner import GridError, ablate

    p = argparse.ArgumentParser(prog="constrained ablate", description="Train and test every variant x seed of a grid.")
    p.add_argument("grid", help="grid YAML, e.g. configs/ablations/icl_regression.yaml")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel on this machine")
    p.add_argument("--shard", default=None, help="I/N: run only this deterministic share of the grid")
    p.add_argument("--retest", action="store_true",
                   help="also re-run the test phase of finished runs from their last checkpoint (new metrics)")
    p.add_argument("--out", default="runs/ablations", help="output folder (default runs/ablations)")
    a = p.parse_args(rest)
    try:
        return ablate(a.grid, a.out, a.jobs, a.shard, a.retest)
    except GridError as e:
        print(f"constrained ablate: error: {e}", file=sys.stderr)
        return 2


def report_command(rest: list[str]) -> int:
    import argparse

    from constrained.experiments.report import report

    p = argparse.ArgumentParser(prog="constrained report", description="Merge run records into a report.")
    p.add_argument("dirs", nargs="+", help="grid output folders (one per shard, or one merged)")
    p.add_argument("--out", default=None, help="where to write the report (default: the first folder)")
    a = p.parse_args(rest)
    report(a.dirs, a.out)
    return 0


def prove_command(rest: list[str]) -> int:
    import argparse
    import json

    from constrained.proofs.result import DEFAULT_TIMEOUT_MS
    from constrained.proofs.runner import SPECS, run

    p = argparse.ArgumentParser(prog="constrained prove", description="Run the formal specifications.")
    p.add_argument("--spec", action="append", choices=list(SPECS), help="run only this spec (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_TIMEOUT_MS,
                   help="time limit of each solver query; running out of it is a failure "
                        f"(default {DEFAULT_TIMEOUT_MS})")
    a = p.parse_args(rest)
    results = run(a.spec, a.timeout_ms)
    if a.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        print(_proof_table(results))
    return 0 if all(r.proved for r in results) else 1


def verify_command(rest: list[str]) -> int:
    import argparse
    import json
    from fractions import Fraction

    from constrained.proofs import objective as spec

    p = argparse.ArgumentParser(prog="constrained verify",
                                description="Check a modular model's objective module against the maze's declared "
                                            "property, exactly, over every (agent, cheese) pair of squares.")
    p.add_argument("checkpoint", help="a modular model's Lightning checkpoint (.ckpt)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--margin", type=Fraction, default=spec.DEFAULT_MARGIN,
                   help=f"how far the cheese must score above every other square (default {spec.DEFAULT_MARGIN})")
    p.add_argument("--bound", type=Fraction, default=spec.DEFAULT_BOUND,
                   help=f"largest |score| allowed anywhere (default {spec.DEFAULT_BOUND})")
    p.add_argument("--timeout-ms", type=int, default=spec.DEFAULT_TIMEOUT_MS,
                   help="time limit of the whole check; running out of it is a failure "
                        f"(default {spec.DEFAULT_TIMEOUT_MS})")
    a = p.parse_args(rest)
    try:
        objective, hparams = spec.load(a.checkpoint)
    except spec.CheckpointError as e:
        print(f"constrained verify: error: {e}", file=sys.stderr)
        return 2
    result = spec.spec(objective, a.margin, a.bound, a.timeout_ms)
    data = hparams.get("objective_data")
    if a.json:
        print(json.dumps({**result.to_dict(), "objective_data": data, "margin": str(a.margin), "bound": str(a.bound)},
                         indent=2, ensure_ascii=False))
    else:
        print(f"{a.checkpoint}: objective trained on {data or 'unknown'} data, "
              f"grid {objective.grid_size}x{objective.grid_size}, hidden {objective.hidden}")
        print(_proof_table([result]))
        if result.status == "refuted":
            print(spec.render(result.counterexample, (objective.grid_size - 1) // 2))
    return 0 if result.proved else 1


def _proof_table(results) -> str:
    """spec, result, seconds; under each failure, its claim and counterexample (or the solver's reason)."""
    lines = [f"{'spec':<14}{'result':<10}{'seconds':>8}"]
    for r in results:
        lines.append(f"{r.spec:<14}{r.status:<10}{r.seconds:>8.2f}")
        if not r.proved:
            why = ", ".join(f"{k}={v}" for k, v in r.counterexample.items()) or r.reason
            lines.append(f"  {r.claim}: {why}")
    return "\n".join(lines)


def user_error(e: BaseException) -> str | None:
    """The one-line message of an error the user can fix, None for anything else (a bug: full traceback)."""
    if isinstance(e, USER_ERRORS):
        return str(root_cause(e))
    if isinstance(e, RuntimeError) and "Error(s) in loading state_dict" in str(e):
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        return "the checkpoint's weights do not fit this config: " + "; ".join(lines[:3]) + more
    return None


def root_cause(e: BaseException) -> BaseException:
    """The innermost explicit cause that is itself a user error: jsonargparse wraps a constructor's ValueError in
    its own, while a CheckpointError's cause (torch's unpickler) is only the detail."""
    while isinstance(e.__cause__, USER_ERRORS):
        e = e.__cause__
    return e


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(SHORT_HELP)
        return 0
    command, rest = args[0], args[1:]
    if command in TRAINING:
        try:
            run_training(None if argv is None else args)
        except (*USER_ERRORS, RuntimeError) as e:
            message = user_error(e)
            if message is None or os.environ.get("CONSTRAINED_DEBUG"):
                raise
            print(f"constrained {command}: error: {message}\n(CONSTRAINED_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
            return 2
    elif command == "ablate":
        return ablate_command(rest)
    elif command == "report":
        return report_command(rest)
    elif command == "prove":
        return prove_command(rest)
    elif command == "verify":
        return verify_command(rest)
    elif command == "curves":
        if not rest:
            raise SystemExit("usage: constrained curves RUN_DIR [RUN_DIR ...]")
        curves(rest)
    else:
        print(f"constrained: unknown command {command!r}\n\n{SHORT_HELP}", file=sys.stderr)
        return 2
    return 0
