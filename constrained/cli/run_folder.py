"""Which run folder a training command uses, and whether the checkpoints already there were written by this
config.

The folder follows from every config file composed. The first file is the base (`configs/<task>/base.yaml`);
each later overlay adds its name: the last component of the folder it sets (`trainer.default_root_dir`), or its
file name when it sets none. The names are joined by "+" under the parent of the last folder any file sets:

    base.yaml                                      -> the base's own folder (runs/<task>/baseline)
    base.yaml baseline.yaml                        -> runs/<task>/baseline
    base.yaml myopic_kv.yaml backdoor.yaml         -> runs/<task>/myopic_kv+backdoor
    base.yaml baseline.yaml backdoor.yaml safety_clean.yaml -> runs/<task>/baseline+backdoor+safety_clean

so an overlay composed on a variant never writes into another variant's folder. `--trainer.default_root_dir`
on the command line (as every grid run gives) is used as it is.

A checkpoint records what identifies the config that wrote it (the model's and the data's class and init
arguments, and seed_everything: what decides the weights a fit produces; trainer settings such as max_steps do
not, so a resumed run may change them). `fit` compares the run folder's checkpoint with the config it is given
and refuses, before anything is built, to train over another config's checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from constrained import checkpoint

IDENTITY_KEY = "constrained_run_config"  # the checkpoint entry: JSON of identity(config)
SHOWN = 3  # differences named in the refusal; the rest are counted


def folder_set_by(path: str | Path) -> Path | None:
    """The trainer.default_root_dir a config file sets, None if it sets none (or cannot be read here: the
    parser has read it already and reports its own errors)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    trainer = raw.get("trainer") if isinstance(raw, dict) else None
    value = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    return Path(value) if isinstance(value, str) and value else None


def composed_folder(files: list[str | Path]) -> Path | None:
    """The run folder of these config files composed in order (module docstring), None for fewer than two
    files (the one file's own folder stands)."""
    if len(files) < 2:
        return None
    folders = [folder_set_by(f) for f in files]
    parts = [folder.name if folder is not None else Path(f).stem for f, folder in zip(files[1:], folders[1:])]
    last = next((f for f in reversed(folders) if f is not None), None)
    return (last.parent if last is not None else Path("runs")) / "+".join(parts)


def given_on_command_line(args: list[str]) -> bool:
    """Whether the command line names the run folder itself (or the whole trainer section)."""
    names = ("--trainer.default_root_dir", "--trainer")
    return any(a in names or a.startswith(tuple(f"{n}=" for n in names)) for a in args)


def config_files(args: list[str]) -> list[str]:
    """The config files a command line gives (--config X, --config=X, -c X), in order."""
    files = []
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files


def folder_for(args: list[str]) -> Path | None:
    """The run folder a command line's config files compose to; None where the command line names the folder
    or gives fewer than two files (the files' own setting stands)."""
    return None if given_on_command_line(args) else composed_folder(config_files(args))


def plain(value):
    """JSON-able plain data (namespaces as dicts, tuples as lists, anything else as its string)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def identity(config, linked: tuple[str, ...] = ()) -> dict:
    """What identifies a fit's config: the model's and the data's class_path and init_args, and seed_everything.
    `linked`: model init arguments the data sets at instantiation (not the user's choice, and not yet set)."""
    model = plain(config.get("model")) or {}
    if isinstance(model.get("init_args"), dict):
        model["init_args"] = {k: v for k, v in model["init_args"].items() if k not in linked}
    return {"model": model, "data": plain(config.get("data")), "seed_everything": plain(config.get("seed_everything"))}


def differences(stored, current, key: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, stored value, current value) wherever the two differ; numbers compare by value."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(stored) | set(current)):
            out += differences(stored.get(k), current.get(k), f"{key}.{k}" if key else k)
        return out
    return [] if stored == current else [(key, stored, current)]


def stored_identity(ckpt: dict) -> dict | None:
    entry = ckpt.get(IDENTITY_KEY)
    return json.loads(entry) if isinstance(entry, str) else None


def legacy_differences(ckpt: dict, current: dict) -> list[tuple[str, object, object]]:
    """For a checkpoint written before identities were stored: its model class and the model hyperparameters
    that are plain values, against the config's; the data's are not in such a checkpoint."""
    hparams = ckpt.get("hyper_parameters") or {}
    model = current.get("model") or {}
    args = model.get("init_args") or {}
    out = []
    if "_class_path" in hparams and model.get("class_path") and hparams["_class_path"] != model["class_path"]:
        out.append(("model.class_path", hparams["_class_path"], model["class_path"]))
    for k, v in sorted(args.items()):
        if k in hparams and isinstance(hparams[k], (str, int, float, bool, type(None))) and hparams[k] != v:
            out.append((f"model.init_args.{k}", hparams[k], v))
    return out


def existing_checkpoint(folders: list[Path]) -> Path | None:
    """The checkpoint a resumed fit would read (last.ckpt), else the newest *.ckpt in these folders."""
    for folder in folders:
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt"
    found = [p for folder in folders if folder.is_dir() for p in folder.glob("*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def check_folder(root: Path, folders: list[Path], current: dict, read=checkpoint.read) -> None:
    """Refuses (CheckpointError, one line) when the run folder holds a checkpoint whose config differs from
    `current` (identity()); `read` loads a checkpoint (checkpoint.read, or a cache of it)."""
    path = existing_checkpoint(folders)
    if path is None:
        return
    ckpt = read(path)
    stored = stored_identity(ckpt)
    diffs = differences(stored, current) if stored is not None else legacy_differences(ckpt, current)
    if not diffs:
        return
    named = "; ".join(f"{k}: {_short(a)} there, {_short(b)} here" for k, a, b in diffs[:SHOWN])
    more = f" (and {len(diffs) - SHOWN} more)" if len(diffs) > SHOWN else ""
    raise checkpoint.CheckpointError(
        f"the run folder {root} holds checkpoints of another config ({path.name}: {named}{more}); give this run "
        f"its own --trainer.default_root_dir, or remove {path.parent} to start that folder afresh")
