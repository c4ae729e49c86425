"""The options of a grid file's `slurm:` mapping and of `ablate --launcher slurm`, checked before any work."""

from __future__ import annotations


class OptionError(ValueError):
    """A launcher option that is unknown or has a bad value; the message names it."""


# The options of the `slurm:` mapping of a grid file, each also a command-line option (--name-with-dashes).
# Names are submitit's (as in Hydra's submitit launcher); (type, smallest value or None, help).
OPTIONS: dict[str, tuple[type, float | None, str]] = {
    "partition": (str, None, "SLURM partition"),
    "account": (str, None, "account charged for the jobs"),
    "qos": (str, None, "quality of service"),
    "constraint": (str, None, "node features, e.g. a100"),
    "timeout_min": (int, 1, "time limit of each job in minutes (required; a job stopped by it is requeued and "
                            "resumes from its last checkpoint, at most 3 times)"),
    "gpus_per_node": (int, 0, "GPUs of each job"),
    "cpus_per_task": (int, 1, "CPUs of each task"),
    "mem_gb": (float, 0, "memory of each job's node, in GB"),
    "nodes": (int, 1, "nodes of each job (set trainer.num_nodes to the same)"),
    "tasks_per_node": (int, 1, "tasks of each job's node, one per GPU for multi-GPU runs (set trainer.devices "
                               "to the same)"),
    "array_parallelism": (int, 1, "at most this many jobs of the array run at once"),
    "setup": (list, None, "shell lines run before each job, e.g. 'module load cuda' (repeatable)"),
    "additional_parameters": (dict, None, "any other sbatch option, KEY=VALUE without the dashes (KEY alone for "
                                          "a flag), e.g. mail-type=END (repeatable)"),
}
REQUIRED = ("timeout_min",)
GENERIC = {"timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node"}  # submitit's shared
# sbatch options the launcher writes itself, and those that have an option of their own above
RESERVED = {"array": None, "output": None, "error": None, "open-mode": None, "job-name": None, "signal": None,
            "partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
            "time": "timeout_min", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_task",
            "mem": "mem_gb", "nodes": "nodes", "ntasks-per-node": "tasks_per_node"}
FLAGS = {"setup": "--setup", "additional_parameters": "--sbatch"}


def flag(key: str) -> str:
    return FLAGS.get(key, "--" + key.replace("_", "-"))


def check_options(options: dict, label=lambda key: f"slurm.{key}") -> dict:
    """The options, or an OptionError naming the first unknown key or bad value (label(key) names it)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise OptionError(f"unknown slurm option(s) {unknown}; allowed: {sorted(OPTIONS)}")
    for key, value in options.items():
        kind, low, _ = OPTIONS[key]
        if kind is str:
            ok = isinstance(value, str) and value.strip() != ""
        elif kind in (int, float):
            ok = (isinstance(value, int) or kind is float and isinstance(value, float)) \
                and not isinstance(value, bool) and value >= low and (kind is int or value > 0)
        elif kind is list:
            ok = isinstance(value, list) and all(isinstance(line, str) for line in value)
        else:
            ok = isinstance(value, dict) and all(isinstance(k, str) and k != "" and (v is True or isinstance(
                v, (str, int, float)) and not isinstance(v, bool)) for k, v in value.items())
        if not ok:
            want = {str: "a non-empty string", int: f"an integer >= {low}", float: "a number > 0",
                    list: "a list of shell lines",
                    dict: "a mapping of sbatch option names to values (true for a flag)"}[kind]
            raise OptionError(f"{label(key)} must be {want}, got {value!r}")
        if kind is dict:
            for name in value:
                taken = name.lstrip("-").replace("_", "-")
                if taken in RESERVED:
                    own = RESERVED[taken]
                    raise OptionError(f"{label(key)}: sbatch option '{name}' " + (
                        f"has its own option: use {own} ({flag(own)})" if own else "is set by the launcher"))
    return options
