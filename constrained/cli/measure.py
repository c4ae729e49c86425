"""`constrained measure`: a task's test-time mesa-signatures (probe scores beside a random-init control, future_info,
reach, iteration; signatures.test_time, the code `constrained test` runs) on any model with `run_with_cache` and
TransformerLens hook names, given the code that loads it: a Python function named MODULE:FUNCTION, called with
the --loader-arg values, e.g. constrained.models.lens:load (an export) or constrained.models.lens:from_pretrained
(a model TransformerLens knows by name)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from constrained.measure import hooked, signatures


class MeasureError(ValueError):
    """Bad input to `constrained measure`, said in one line before any work."""


def merged_config(paths: list[str]) -> dict:
    """The YAML files merged in order (later files override keys of earlier ones, lists are replaced), as
    `--config a --config b` composes them for `constrained fit`."""
    merged: dict = {}
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise MeasureError(f"config {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise MeasureError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise MeasureError(f"{path} is not a mapping of keys to values")
        merged = _merge(merged, data)
    return merged


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v.get("class_path", out[k].get("class_path")) \
                == out[k].get("class_path"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def task_from_configs(paths: list[str]):
    """The task (its `data:` section) of a training config, built as `constrained fit` builds it."""
    import argparse

    import lightning as L
    from jsonargparse import ArgumentParser

    from constrained.cli.errors import parse_error

    data = merged_config(paths).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise MeasureError(f"{', '.join(paths)}: no data: section with a class_path (the task to measure on)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    try:
        task = parser.instantiate(parser.parse_object({"data": data})).data
    except argparse.ArgumentError as e:
        raise MeasureError(parse_error(e, [])) from None
    task.setup("test")
    return task


def loader(spec: str) -> Callable:
    """The function named MODULE:FUNCTION."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise MeasureError(f"--model-loader {spec!r}: expected MODULE:FUNCTION, e.g. constrained.models.lens:load")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise MeasureError(f"--model-loader {spec}: cannot import {module} ({e})") from None
    except AttributeError:
        raise MeasureError(f"--model-loader {spec}: module {module} has no {name}") from None
    if not callable(fn):
        raise MeasureError(f"--model-loader {spec}: {name} is not a function")
    return fn


def loader_args(items: list[str]) -> dict:
    """KEY=VALUE pairs, each value read as YAML data (numbers, booleans, lists), never evaluated as code."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise MeasureError(f"--loader-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key] = value
    return out


def load_model(spec: str, kwargs: dict):
    """The loader's model, checked to have what the measurements read, in one line otherwise."""
    fn = loader(spec)
    try:
        model = fn(**kwargs)
    except TypeError as e:
        raise MeasureError(f"--model-loader {spec}: {e}") from None
    except (ValueError, OSError, ImportError) as e:
        raise MeasureError(f"--model-loader {spec}: {' '.join(str(e).split())}") from None
    if not callable(getattr(model, "run_with_cache", None)):
        raise MeasureError(f"--model-loader {spec} returned a {type(model).__name__}, which has no run_with_cache")
    return model


def check_fits(model, task) -> None:
    """The model takes the task's inputs and has every hook the measurements read."""
    try:
        L = hooked.n_layers(model)
        hooked.check_hooks(model, ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)])
    except (TypeError, ValueError) as e:
        raise MeasureError(str(e)) from None
    x = task.eval_set("test")["inputs"][:2]
    try:
        with torch.no_grad():
            model.eval()(x.to(hooked.device_of(model)))
    except Exception as e:  # any failure here means the model cannot read these inputs; say which and why
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = f"integer tokens < {task.vocab_size}" if task.vocab_size is not None else "float vectors"
        raise MeasureError(f"the model does not take {type(task).__name__}'s inputs ({tuple(x.shape)} {kind}): "
                           f"{detail}") from None


def run(configs: list[str], spec: str, kwargs: dict, out: str | None = None) -> dict[str, float]:
    """Build the task, load the model, measure; every input is checked before the measuring starts."""
    if out is not None and Path(out).is_dir():
        raise MeasureError(f"--out {out} is a folder; name the JSON file to write")
    task = task_from_configs(configs)
    model = load_model(spec, kwargs)
    check_fits(model, task)
    metrics = signatures.test_time(model, task)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"configs": configs, "model_loader": spec, "loader_args": kwargs, "task": type(task).__name__,
                  "metrics": metrics}
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return metrics
