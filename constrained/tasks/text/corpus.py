"""The text corpus: which files it holds, which split each file falls in, and the cache of each split's bytes.

Preparation as in nanoGPT: one pass writes the bytes of every split to a uint8 file (`<split>.bin`), read back
with np.memmap, so a corpus of many GB trains in constant memory. Each file is followed by one NUL byte, a
document boundary that no text file contains (a file holding a NUL byte is taken for binary and skipped).

A file's split is a pure function of its path relative to the corpus root (a hash), so no file leaks across
splits and the split never depends on which other files are present. A corpus named as one file is split by
position instead: its first bytes train, the next val, the last test (a hash of one path would put the whole
file in one split). The cache folder is keyed by the corpus
(its files' paths, sizes and modification times) and the split rule, reused when present, and written
atomically: a temporary folder, renamed into place when every file in it is complete.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
SEPARATOR = 0  # written after every file: where one document ends and the next begins
FORMAT = 1  # of the cache folder; part of its key, so a new layout never reads an old folder
READ_CHUNK = 1 << 22  # bytes read from a corpus file at a time (constant memory for any file size)
SKIP_DIRS = {"__pycache__"}
STDLIB_SKIP_DIRS = SKIP_DIRS | {"site-packages", "dist-packages"}  # installed packages are not the stdlib


@dataclass(frozen=True)
class SplitRule:
    """A file goes to test if u < test_fraction, else to val if u < test_fraction + val_fraction, else to train,
    where u in [0, 1) is the first 8 bytes of the SHA-256 of its path relative to the corpus root."""

    val_fraction: float
    test_fraction: float

    def split_of(self, relpath: str) -> str:
        digest = hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).digest()
        u = int.from_bytes(digest[:8], "big") / 2 ** 64
        if u < self.test_fraction:
            return "test"
        return "val" if u < self.test_fraction + self.val_fraction else "train"

    def describe(self) -> str:
        return (f"by file: a hash of the relative path, val_fraction={self.val_fraction}, "
                f"test_fraction={self.test_fraction}")


@dataclass(frozen=True)
class PositionRule:
    """One file's bytes split by position: train [0, a), val [a, b), test [b, n), where a and b are the
    (1 - val_fraction - test_fraction) and (1 - test_fraction) points of its n bytes."""

    val_fraction: float
    test_fraction: float

    def ranges(self, n: int) -> dict[str, tuple[int, int]]:
        a, b = round(n * (1 - self.val_fraction - self.test_fraction)), round(n * (1 - self.test_fraction))
        return {"train": (0, a), "val": (a, b), "test": (b, n)}

    def describe(self) -> str:
        return (f"by position in the one file: the first {1 - self.val_fraction - self.test_fraction:g} of its bytes "
                f"train, the next {self.val_fraction:g} val, the last {self.test_fraction:g} test")


@dataclass(frozen=True)
class File:
    path: Path
    relpath: str  # relative to the corpus root, "/"-separated: what the split hashes
    size: int
    mtime_ns: int


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(root: Path, skip_dirs: set[str], exclude: Path | None) -> Iterator[Path]:
    """Regular files under root, in sorted order, skipping hidden entries, skip_dirs and the folder `exclude`
    (the cache, when it lies inside the corpus)."""
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip_dirs
                         and (exclude is None or Path(here, d).resolve() != exclude))
        for name in sorted(files):
            path = Path(here, name)
            if not name.startswith(".") and path.is_file():
                yield path


def _glob_root(pattern: str) -> Path:
    """The folder a glob's relative paths start from: its leading components without wildcards."""
    parts = Path(pattern).parts
    fixed = parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def find_files(corpus: str | None, exclude: Path | None = None) -> tuple[str, Path, list[File]]:
    """(a description of the corpus, its root folder, its files sorted by relative path).

    corpus: None for the Python standard library's source (every *.py under sysconfig's stdlib folder, installed
    packages excluded); a text file; a folder (every file under it, hidden ones and __pycache__ excluded); or a
    glob (`**` recursive). Raises ValueError naming a corpus that does not exist or matches nothing."""
    if corpus is None:
        root = stdlib_root()
        paths = [p for p in _walk(root, STDLIB_SKIP_DIRS, exclude) if p.suffix == ".py"]
        description = f"the Python standard library's source ({root}, *.py)"
    else:
        expanded = os.path.expanduser(corpus)
        if glob.has_magic(expanded):
            root = _glob_root(expanded)
            paths = [Path(p) for p in sorted(glob.glob(expanded, recursive=True)) if Path(p).is_file()]
            if exclude is not None:
                paths = [p for p in paths if exclude not in p.resolve().parents]
            if not paths:
                raise ValueError(f"data.init_args.corpus: no file matches {corpus!r}")
        elif Path(expanded).is_dir():
            root = Path(expanded)
            paths = list(_walk(root, SKIP_DIRS, exclude))
        elif Path(expanded).is_file():
            root = Path(expanded).parent
            paths = [Path(expanded)]
        else:
            raise ValueError(f"data.init_args.corpus: {corpus} does not exist")
        description = corpus
    files = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as e:
            raise ValueError(f"data.init_args.corpus: cannot read {p}: {e.strerror or e}") from None
        files.append(File(p, p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return description, root, sorted(files, key=lambda f: f.relpath)


class Corpus:
    """The files of a corpus assigned to splits, and the cache of their bytes.

    Construction lists the files (stat only, no reading) and refuses, in one line naming the problem, a corpus
    that does not exist, is empty, is smaller than one sequence, or leaves a split empty, and a cache folder that
    exists but cannot be read. `prepare()` writes the cache if it is missing; `data(split)` maps it."""

    def __init__(self, corpus: str | None, cache_dir: str | Path, rule: SplitRule, min_bytes: int):
        self.cache_dir, self.rule, self.min_bytes = Path(cache_dir), rule, min_bytes
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise ValueError(f"data.init_args.cache_dir: {self.cache_dir} is a file, not a folder")
        self.description, self.root, files = find_files(corpus, self.cache_dir.resolve())
        one_file = corpus is not None and not glob.has_magic(os.path.expanduser(corpus)) and len(files) == 1 \
            and Path(os.path.expanduser(corpus)).is_file()
        if one_file:
            self.rule = rule = PositionRule(rule.val_fraction, rule.test_fraction)
        total = sum(f.size for f in files)
        if not files or total == 0:
            raise ValueError(f"data.init_args.corpus: {self.description} is empty ({len(files)} files, 0 bytes)")
        if total + len(files) < min_bytes:
            raise ValueError(f"data.init_args.corpus: {self.description} has {total} bytes, fewer than one sequence "
                             f"({min_bytes} bytes: T + 1)")
        if one_file:
            self.files = {s: files for s in SPLITS}
            for split, (start, stop) in rule.ranges(files[0].size).items():
                self._check_split(split, 1, stop - start + 1)
        else:
            self.files = {s: [f for f in files if rule.split_of(f.relpath) == s] for s in SPLITS}
            for split, members in self.files.items():
                self._check_split(split, len(members), sum(f.size + 1 for f in members))
        listing = [[f.relpath, f.size, f.mtime_ns] for f in files]
        key = json.dumps({"format": FORMAT, "root": str(self.root.resolve()), "rule": [rule.val_fraction,
                          rule.test_fraction] + (["position"] if one_file else []), "files": listing})
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = self.root.resolve().name if corpus is None else Path(corpus).name
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "corpus"
        self.name = f"{slug[:40]}-{digest}"
        self.folder = self.cache_dir / self.name
        self.meta: dict | None = read_meta(self.folder) if self.folder.exists() else None
        self._maps: dict[str, np.memmap] = {}

    def _check_split(self, split: str, n_files: int, n_bytes: int, skipped: int = 0) -> None:
        rule = f"split {self.rule.describe()}"
        if n_files == 0:
            total = sum(len(v) for v in self.files.values())
            raise ValueError(f"data.init_args.corpus: split {split!r} is empty: none of the {total} files of "
                             f"{self.description} falls into it" + (f" as text ({skipped} binary files skipped)"
                                                                     if skipped else "")
                             + f" ({rule}); name a corpus with more files or change the fractions"
                             + (", or name the one file itself to split it by position" if total == 1 else ""))
        if n_bytes < self.min_bytes:
            raise ValueError(f"data.init_args.corpus: split {split!r} has {n_bytes} bytes in {n_files} files of "
                             f"{self.description}, fewer than one sequence ({self.min_bytes} bytes: T + 1; {rule})")

    @property
    def ready(self) -> bool:
        return self.meta is not None

    def prepare(self) -> None:
        """Write the cache folder if it is missing (one process at a time: DDP ranks and parallel runs wait for
        the first); a failed or interrupted preparation leaves nothing in the cache but its lock file."""
        if self.ready:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"data.init_args.cache_dir: cannot create {self.cache_dir}: {e.strerror or e}") from None
        with _locked(self.cache_dir / f".{self.name}.lock"):
            if not self.folder.exists():
                for stale in self.cache_dir.glob(f".{self.name}.tmp-*"):  # its writer held this lock and died
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = self.cache_dir / f".{self.name}.tmp-{os.getpid()}"
                try:
                    tmp.mkdir()
                    self._write(tmp)
                    os.rename(tmp, self.folder)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            self.meta = read_meta(self.folder)

    def _write(self, folder: Path) -> None:
        """Every split's bytes, the train split's byte counts (references.py) and meta.json, written last."""
        from constrained.tasks.text.references import count_bytes

        splits = self._write_by_position(folder) if isinstance(self.rule, PositionRule) else self._write_by_file(folder)
        unigram, bigram = count_bytes(np.memmap(folder / "train.bin", dtype=np.uint8, mode="r"))
        np.save(folder / "unigram.npy", unigram)
        np.save(folder / "bigram.npy", bigram)
        meta = {"format": FORMAT, "corpus": self.description, "root": str(self.root.resolve()),
                "rule": self.rule.describe(), "splits": splits}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))

    def _write_by_file(self, folder: Path) -> dict[str, dict]:
        """Each split's text files, each followed by a separator; binary files skipped."""
        splits = {}
        for split, members in self.files.items():
            n_files = skipped = 0
            with (folder / f"{split}.bin").open("wb") as out:
                for f in members:
                    if _append_text(f.path, out):
                        n_files += 1
                    else:
                        skipped += 1
                n_bytes = out.tell()
            self._check_split(split, n_files, n_bytes, skipped)
            splits[split] = {"bytes": n_bytes, "files": n_files, "skipped_binary": skipped}
        return splits

    def _write_by_position(self, folder: Path) -> dict[str, dict]:
        """Each split's range of the one file, followed by a separator; a NUL byte anywhere makes it binary."""
        f, splits = self.files["train"][0], {}
        try:
            with f.path.open("rb") as src:
                for split, (start, stop) in self.rule.ranges(f.size).items():
                    with (folder / f"{split}.bin").open("wb") as out:
                        src.seek(start)
                        while start < stop:
                            chunk = src.read(min(READ_CHUNK, stop - start))
                            if not chunk:
                                raise ValueError(f"data.init_args.corpus: {f.path} is shorter than when it was "
                                                 f"listed ({start} of {f.size} bytes): it changed while being read")
                            if b"\0" in chunk:
                                raise ValueError(f"data.init_args.corpus: {f.path} holds a NUL byte at offset "
                                                 f"{start + chunk.index(0)}: a binary file, not text")
                            out.write(chunk)
                            start += len(chunk)
                        out.write(bytes([SEPARATOR]))
                        splits[split] = {"bytes": out.tell(), "files": 1, "skipped_binary": 0}
        except OSError as e:
            raise ValueError(f"data.init_args.corpus: cannot read {f.path}: {e.strerror or e}") from None
        return splits

    def data(self, split: str) -> np.memmap:
        """The split's bytes, mapped read-only (prepared first if need be)."""
        if split not in self._maps:
            self.prepare()
            self._maps[split] = np.memmap(self.folder / f"{split}.bin", dtype=np.uint8, mode="r")
        return self._maps[split]

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(unigram (256,), bigram (256, 256)) byte counts of the train split; bigram[a, b]: b right after a."""
        self.prepare()
        try:
            return (np.load(self.folder / "unigram.npy", allow_pickle=False),
                    np.load(self.folder / "bigram.npy", allow_pickle=False))
        except (OSError, ValueError) as e:
            raise unreadable(self.folder, str(e)) from None

    def __getstate__(self) -> dict:
        # a pickled task (DDP spawn) maps the files again on the other side, never copies them
        return {**self.__dict__, "_maps": {}}


def _append_text(path: Path, out) -> bool:
    """Appends the file and a separator to out; a file holding a NUL byte (binary) is rolled back and skipped."""
    start = out.tell()
    try:
        with path.open("rb") as f:
            while chunk := f.read(READ_CHUNK):
                if b"\0" in chunk:
                    out.seek(start)
                    out.truncate()
                    return False
                out.write(chunk)
    except OSError as e:
        raise ValueError(f"data.init_args.corpus: cannot read {path}: {e.strerror or e}") from None
    out.write(bytes([SEPARATOR]))
    return True


def unreadable(folder: Path, why: str) -> ValueError:
    return ValueError(f"data.init_args.cache_dir: the cache {folder} is unreadable ({why}); delete that folder to "
                      f"rebuild it")


def read_meta(folder: Path) -> dict:
    """meta.json of a cache folder, checked against the files beside it (ValueError naming the folder)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        for split in SPLITS:
            expected, actual = int(meta["splits"][split]["bytes"]), (folder / f"{split}.bin").stat().st_size
            if expected != actual:
                raise ValueError(f"{split}.bin has {actual} bytes, meta.json says {expected}")
            with (folder / f"{split}.bin").open("rb"):
                pass
        for name in ("unigram.npy", "bigram.npy"):
            (folder / name).stat()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename:
            why = f"{Path(e.filename).name}: {why}"
        raise unreadable(folder, why) from None
    return meta


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on path for the duration (the operating system drops it if the holder dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
