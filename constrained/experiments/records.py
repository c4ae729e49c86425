"""A run's record (result.json, written atomically: whole or absent), the lock that lets one live process
train a run at a time, and what a finished run's folder says about it (metrics, task class).

The record is the contract between launchers, shards and the report: a run with an "ok" record is
finished and is never trained again; any other run is (re)started from its last checkpoint.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from constrained.files import write_text

RECORD = "result.json"
LOCK = "run.lock"


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(folder: Path, record: dict) -> None:
    write_text(folder / RECORD, json.dumps(record, indent=1, sort_keys=True))


def finished(folder: Path) -> bool:
    return (read_record(folder) or {}).get("status") == "ok"


@contextmanager
def claim(folder: Path) -> Iterator[bool]:
    """Yields True while this process holds the run's lock, False if another live process holds it.

    An advisory flock on run.lock: the operating system drops it when its holder exits, however it exits,
    so a killed runner leaves no stale lock behind (on a cluster file system, flock must be supported)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _versions(folder: Path) -> list[Path]:
    return sorted((folder / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def latest_metrics(folder: Path) -> dict[str, float]:
    """The last logged value of every metric of the run's latest invocation (its test)."""
    versions = _versions(folder)
    metrics: dict[str, float] = {}
    with (versions[-1] / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            metrics.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return metrics


def task_class_of(folder: Path) -> str | None:
    """The data class path of the run's resolved config (what the report imports for headline and sections)."""
    for version in reversed(_versions(folder)):
        config = version / "config.yaml"
        if config.is_file():
            data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
            return data.get("class_path")
    return None
