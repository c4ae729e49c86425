"""Files a reader must never see half-written: each is written beside its target, then renamed over it."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic on one file system: the file is whole or absent


def write_csv(rows: list[dict], path: str | Path, fields: list[str] | None = None) -> None:
    """rows as CSV with a header (fields: the first row's keys, or `fields` for an empty table)."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields or (list(rows[0]) if rows else []))
    w.writeheader()
    w.writerows(rows)
    write_text(path, out.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
