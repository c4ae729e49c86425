"""Files a reader must never see half-written: each is written beside its target, then renamed over it."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic on one file system: the file is whole or absent
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unwritable(folder: str | Path) -> str | None:
    """Why files cannot be written in folder (created if missing), or None if they can: a file where a folder
    should be, a missing permission, a read-only mount or a full disk, found before any work is done."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        where = Path(e.filename) if e.filename else folder
        why = "a file is there, where a folder should be" if isinstance(e, (FileExistsError, NotADirectoryError)) \
            else e.strerror or str(e)
        return f"{where}: {why}"
    return None


def write_csv(rows: list[dict], path: str | Path, fields: list[str] | None = None) -> None:
    """rows as CSV with a header (fields: the first row's keys, or `fields` for an empty table)."""
    write_text(path, csv_text(rows, fields))


def csv_text(rows: list[dict], fields: list[str] | None = None) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields or (list(rows[0]) if rows else []))
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
