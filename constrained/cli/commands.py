"""The project's own subcommands: ablate, report, prove, and the commands tasks declare (Task.commands),
found by looking through the task modules of constrained.tasks, so a new task's command needs no entry here."""

from __future__ import annotations

import argparse
import json
import sys

from constrained.cli.classes import task_classes


def ablate_command(rest: list[str]) -> int:
    from constrained.experiments.grid import GridError
    from constrained.experiments.results import ReportError
    from constrained.experiments.runner import ablate
    from constrained.experiments.slurm import ablate_slurm, add_arguments, launcher_options

    p = argparse.ArgumentParser(prog="constrained ablate", description="Train and test every variant x seed of a grid.")
    p.add_argument("grid", help="grid YAML, e.g. configs/ablations/<grid>.yaml")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel on this machine")
    p.add_argument("--shard", default=None, help="I/N: run only this deterministic share of the grid")
    p.add_argument("--retest", action="store_true",
                   help="also re-run the test phase of finished runs from their last checkpoint (new metrics)")
    p.add_argument("--out", default="runs/ablations", help="output folder (default runs/ablations)")
    p.add_argument("--seeds", default=None, help="comma-separated: run only these of the grid's seeds (e.g. 0 to "
                   "check one seed of every variant against a recorded grid with `constrained compare`)")
    p.add_argument("--variants", default=None, help="comma-separated: run only these of the grid's variants")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: a process pool on this machine (default); slurm: one job per unfinished run, "
                        "submitted as one SLURM array")
    add_arguments(p)
    a = p.parse_args(rest)
    try:
        given = launcher_options(a)
        seeds = parse_seeds(a.seeds)
        variants = None if a.variants is None else a.variants.split(",")
        if a.launcher == "slurm":
            if seeds is not None or variants is not None:
                raise GridError("--seeds and --variants work with the local launcher; for slurm, list them in the "
                                "grid file")
            return ablate_slurm(a.grid, a.out, given, a.wait)
        return ablate(a.grid, a.out, a.jobs, a.shard, a.retest, seeds, variants)
    except (GridError, ReportError) as e:
        print(f"constrained ablate: error: {e}", file=sys.stderr)
        return 2


def parse_seeds(text: str | None) -> list[int] | None:
    from constrained.experiments.grid import GridError

    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise GridError(f"--seeds must be comma-separated integers, got {text!r}") from None
    return seeds


def compare_command(rest: list[str]) -> int:
    from constrained.experiments.compare import compare

    p = argparse.ArgumentParser(prog="constrained compare",
                                description="New runs of a grid beside its recorded results: within the seed spread?")
    p.add_argument("recorded", help="the recorded grid: its output folder or results.csv (e.g. docs/results/<grid>/"
                                    "results.csv)")
    p.add_argument("new", nargs="+", help="the new runs: grid output folder(s) or results.csv")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    a = p.parse_args(rest)
    try:
        lines, outside = compare([a.recorded], a.new)
    except ValueError as e:
        print(f"constrained compare: error: {e}", file=sys.stderr)
        return 2
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        from pathlib import Path

        from constrained.files import write_text

        write_text(Path(a.out), text)
    return 0


def report_command(rest: list[str]) -> int:
    from constrained.experiments.report import report

    p = argparse.ArgumentParser(prog="constrained report", description="Merge run records into a report.")
    p.add_argument("dirs", nargs="+", help="grid output folders (one per shard, or one merged), or a results.csv")
    p.add_argument("--out", default=None, help="where to write the report (default: the first folder, or the folder of "
                                               "the results.csv; a file there is never replaced with less)")
    p.add_argument("--grid", action="append", default=[], metavar="GRID.yaml",
                   help="count the runs against this grid file, naming those missing (default: the one the records "
                        "name)")
    a = p.parse_args(rest)
    try:
        report(a.dirs, a.out, a.grid)
    except ValueError as e:  # a source that does not parse (ReportError), a grid file that does not (GridError)
        print(f"constrained report: error: {e}", file=sys.stderr)
        return 2
    return 0


def prove_command(rest: list[str]) -> int:
    from constrained.proofs.result import DEFAULT_TIMEOUT_MS, table
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
        print(table(results))
    return 0 if all(r.proved for r in results) else 1


def export_command(rest: list[str]) -> int:
    from constrained.checkpoint import CheckpointError
    from constrained.models.export import FORMATS, ExportError, export

    p = argparse.ArgumentParser(prog="constrained export",
                                description="Write a checkpoint's transformer as a TransformerLens HookedTransformer "
                                            "(config.json, state_dict.pt, export.json); needs the lens extra.")
    p.add_argument("checkpoint", help="a checkpoint of `constrained fit`, e.g. runs/<task>/<variant>/checkpoints/"
                                      "last.ckpt")
    p.add_argument("out_dir", help="folder to write the export into")
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="export format (default transformer_lens)")
    a = p.parse_args(rest)
    try:
        meta = export(a.checkpoint, a.out_dir, a.format)
    except (ExportError, CheckpointError) as e:
        print(f"constrained export: error: {e}", file=sys.stderr)
        return 2
    kind = "token" if meta["input"] == "tokens" else "vector-input"
    print(f"wrote {a.out_dir}: a {kind} HookedTransformer whose outputs equal the checkpoint's within "
          f"{meta['max_abs_diff']:.1e}")
    for note in meta["notes"]:
        print(f"  {note}")
    return 0


def measure_command(rest: list[str]) -> int:
    from constrained.cli.measure import MeasureError, loader_args, run
    from constrained.cli.summary import metric_lines

    p = argparse.ArgumentParser(prog="constrained measure",
                                description="A task's test-time probe scores and signatures on any model with "
                                            "run_with_cache and TransformerLens hook names.")
    p.add_argument("--config", action="append", required=True,
                   help="training config(s) naming the task (data: ...), composed in order like `constrained fit`")
    p.add_argument("--model-loader", required=True,
                   help="MODULE:FUNCTION returning the model, e.g. constrained.models.lens:load (an export) or "
                        "constrained.models.lens:from_pretrained (a model TransformerLens knows by name)")
    p.add_argument("--loader-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument of the loader (repeatable; values read as YAML), e.g. path=runs/x/lens")
    p.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    a = p.parse_args(rest)
    try:
        metrics = run(a.config, a.model_loader, loader_args(a.loader_arg), a.out)
    except MeasureError as e:
        print(f"constrained measure: error: {e}", file=sys.stderr)
        return 2
    print(f"constrained measure: {len(metrics)} test-time metrics (probes beside their random-init control, "
          f"future_info, reach, iteration)\n  model  {a.model_loader}({', '.join(a.loader_arg)})\n"
          f"  task   {' + '.join(a.config)}\n")
    print("\n".join(metric_lines(metrics)))
    if a.out:
        print(f"written to {a.out}")
    return 0


def task_commands() -> dict[str, tuple[type, object]]:
    """command name -> (the task that declares it, the function)."""
    out = {}
    for task in task_classes():
        for name, fn in getattr(task, "commands", {}).items():
            out[name] = (task, fn)
    return out
