"""`constrained` command: LightningCLI training subcommands, the project's own tools, and the commands tasks
declare. Nothing here names a task."""

from __future__ import annotations

import argparse
import os
import sys

SHORT_HELP = """usage: constrained COMMAND [options]

Train transformers under architectural constraints and measure mesa-optimization signatures.

training (LightningCLI; `constrained fit --help` for every option):
  fit        train:   constrained fit --config configs/<task>/base.yaml --config configs/<task>/<variant>.yaml
  validate   evaluate a checkpoint on the validation set (--ckpt_path last|best|FILE, or none: the random init)
  test       the task's test metrics and signatures, written to the run folder (--ckpt_path as for validate)

comparisons:
  ablate GRID.yaml [--jobs J] [--shard I/N] [--out DIR] [--retest] [--seeds S,..] [--variants V,..]
             [--launcher local|slurm [--wait] ...]: fit and test every variant x seed, then the report
  report DIR [DIR ...] [--out OUT] [--grid GRID.yaml]
             merge run records (several shards) into results.csv, report.md and plots
  compare RECORDED NEW [...]  new runs (ablate --seeds 0) beside a recorded grid: within the seed spread?

checks:
  prove [--spec NAME] [--json] [--timeout-ms N]
             z3 specs (mask, penalty algebra, reach, horizon reach) and the isolation checks; exit 0 only if all proved

TransformerLens (pip install -e ".[lens]"):
  export     CHECKPOINT OUT_DIR: the checkpoint's transformer as a HookedTransformer (config, state dict)
  measure    --config C --model-loader MODULE:FUNCTION: a task's signatures on any TransformerLens-hooked model
"""

TRAINING = ("fit", "validate", "test")


def _help() -> str:
    from constrained.cli.commands import task_commands

    lines = [SHORT_HELP.rstrip(), "", "task commands (declared by the tasks; `constrained NAME --help`):"]
    for name, (task, fn) in sorted(task_commands().items()):
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        lines.append(f"  {name:<10} {doc} [{task.__name__}]")
    return "\n".join(lines) + "\n"


def training_command(command: str, args: list[str] | None, argv_for_errors: list[str]) -> int:
    from constrained.cli.errors import USER_ERRORS, parse_error, user_error
    from constrained.cli.training import run_training

    try:
        run_training(args)
    except argparse.ArgumentError as e:
        if os.environ.get("CONSTRAINED_DEBUG"):
            raise
        print(f"constrained {command}: error: {parse_error(e, argv_for_errors)}", file=sys.stderr)
        return 2
    except (*USER_ERRORS, RuntimeError) as e:
        message = user_error(e)
        if message is None or os.environ.get("CONSTRAINED_DEBUG"):
            raise
        print(f"constrained {command}: error: {message}\n(CONSTRAINED_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_help())
        return 0
    command, rest = args[0], args[1:]
    if command in TRAINING:
        return training_command(command, None if argv is None else args, args)
    from constrained.cli import commands

    builtin = {"ablate": commands.ablate_command, "report": commands.report_command, "prove": commands.prove_command,
               "export": commands.export_command, "measure": commands.measure_command,
               "compare": commands.compare_command}
    if command in builtin:
        return builtin[command](rest)
    found = commands.task_commands().get(command)
    if found is not None:
        return found[1](rest)
    print(f"constrained: unknown command {command!r}\n\n{_help()}", file=sys.stderr)
    return 2
