"""A grid file: a task's base config, its variants (overlay files, optional overrides) and seeds, expanded
into runs in a fixed order that shards index. Every problem with the file is found before any run starts.

A variant's config is one overlay file or a list of them, composed in order after the base (e.g. a constraint
and a backdoor). In an override's value the text {seed} becomes the run's seed, so a fine-tuning grid can start
each seed from its own checkpoint: `model.init_args.init_from: runs/ablations/g/baseline/seed{seed}/checkpoints/
last.ckpt`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from constrained.experiments.slurm_options import OptionError, check_options

GRID_KEYS = {"name", "task", "base", "seeds", "variants", "overrides", "threads", "slurm", "notes"}
VARIANT_KEYS = {"name", "config", "overrides"}
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class GridError(ValueError):
    """A grid file that cannot run; raised before any run starts."""


@dataclass
class Variant:
    name: str
    config: list[Path]
    overrides: dict = field(default_factory=dict)


@dataclass
class Grid:
    name: str
    task: str
    base: Path
    seeds: list[int]
    variants: list[Variant]
    overrides: dict = field(default_factory=dict)
    threads: int = 1  # CPU threads per run, whatever runs beside it: results do not depend on --jobs
    slurm: dict = field(default_factory=dict)  # options of the slurm launcher (experiments/slurm.py)
    path: str | None = None  # the grid file, named in each run's record so a report counts the runs against it
    notes: list[str] = field(default_factory=list)  # printed under the report's table: what the variants mean

    def runs(self) -> list[Run]:
        """All runs in a fixed order (variants as listed, then seeds), the order shards index."""
        return [Run(self, v, s) for v in self.variants for s in self.seeds]


@dataclass
class Run:
    grid: Grid
    variant: Variant
    seed: int

    @property
    def key(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"

    def folder(self, out: Path) -> Path:
        return out / self.grid.name / self.variant.name / f"seed{self.seed}"

    def record(self, folder: Path) -> dict:
        """What every record of this run starts with."""
        return {"grid": self.grid.name, "task": self.grid.task, "variant": self.variant.name, "seed": self.seed,
                "args": self.args(folder), "grid_file": self.grid.path}

    def args(self, folder: Path) -> list[str]:
        args = ["--config", str(self.grid.base)] + [a for c in self.variant.config for a in ("--config", str(c))]
        for key, value in {**self.grid.overrides, **self.variant.overrides}.items():
            text = value if isinstance(value, str) else json.dumps(value)
            args += [f"--{key}", text.replace("{seed}", str(self.seed))]
        return args + ["--seed_everything", str(self.seed), "--trainer.default_root_dir", str(folder), *QUIET]


def _mapping(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{what} must be a mapping of dotted config keys to values, got {value!r}")
    return value


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GridError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file is a mapping (name, task, base, seeds, variants, ...)")
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise GridError(f"{path}: unknown grid key(s) {sorted(unknown)}; allowed: {sorted(GRID_KEYS)}")
    for key in ("task", "base", "seeds", "variants"):
        if key not in raw:
            raise GridError(f"{path}: missing key '{key}'")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise GridError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{path}: duplicate seeds in {seeds}")
    threads = raw.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise GridError(f"{path}: threads (CPU threads per run) must be an integer >= 1, got {threads!r}")
    base = Path(raw["base"])
    if not base.is_file():
        raise GridError(f"{path}: base config {base} does not exist")
    variants, names = [], set()
    for i, v in enumerate(raw["variants"] or []):
        if not isinstance(v, dict) or "name" not in v or "config" not in v:
            raise GridError(f"{path}: variant #{i} needs 'name' and 'config', got {v!r}")
        extra = set(v) - VARIANT_KEYS
        if extra:
            raise GridError(f"{path}: variant '{v['name']}' has unknown key(s) {sorted(extra)}")
        if v["name"] in names:
            raise GridError(f"{path}: duplicate variant name '{v['name']}'")
        names.add(v["name"])
        configs = v["config"] if isinstance(v["config"], list) else [v["config"]]
        if not configs or not all(isinstance(c, str) for c in configs):
            raise GridError(f"{path}: variant '{v['name']}': config must be a file or a list of files, got "
                            f"{v['config']!r}")
        for config in configs:
            if not Path(config).is_file():
                raise GridError(f"{path}: variant '{v['name']}': config file {config} does not exist")
        variants.append(Variant(str(v["name"]), [Path(c) for c in configs],
                                _mapping(v.get("overrides"), f"variant '{v['name']}'")))
    if not variants:
        raise GridError(f"{path}: the variant list is empty")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise GridError(f"{path}: slurm must be a mapping of launcher options (partition, timeout_min, ...), "
                        f"got {slurm!r}")
    try:
        check_options(slurm)
    except OptionError as e:
        raise GridError(f"{path}: {e}") from None
    notes = raw.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise GridError(f"{path}: notes must be a list of lines of text, got {notes!r}")
    return Grid(str(raw.get("name", path.stem)), str(raw["task"]), base, seeds, variants,
                _mapping(raw.get("overrides"), "overrides"), threads, slurm, str(path), notes)


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise GridError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise GridError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n
