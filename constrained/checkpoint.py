"""Reading a Lightning checkpoint safely (weights_only) with an error that names the file and the problem,
for `constrained test/validate/fit --ckpt_path` and `constrained verify` alike; and writing one so that a failed
save never destroys the checkpoint already there."""

from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def read(path: str | Path) -> dict:
    """The checkpoint's dict, loaded with weights_only=True onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds here (pickle, zip, EOF, runtime)
        # The safe unpickler refuses with an UnpicklingError, but corrupt bytes raise that type too: a refusal is
        # told apart by the archive's pickle being well formed and importing a global the safe load does not allow.
        # Torch's wording of the refusal changes between versions and is never read.
        refused = unsafe_globals(path) if isinstance(e, pickle.UnpicklingError) else []
        if refused:
            raise CheckpointError(f"cannot read checkpoint {path}: it holds a Python object ({', '.join(refused)}) "
                                  f"that a safe load refuses; only tensors and plain data are read") from e
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint, or truncated "
                              f"({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict: not a Lightning checkpoint")
    return ckpt


def unsafe_globals(path: Path) -> list[str]:
    """The classes and functions (module.name) that the pickle of a torch zip archive imports and torch's safe
    load does not allow; [] when the file is no well-formed archive (its bytes are damaged, not refused)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl")
            ops = list(pickletools.genops(archive.read(name)))
    except (OSError, zipfile.BadZipFile, StopIteration, ValueError, EOFError):
        return []
    found, strings, memo = [], [], []
    for op, arg, _ in ops:
        if isinstance(arg, str) and "UNICODE" in op.name:
            strings.append(arg)
        elif op.name == "MEMOIZE" and strings:
            memo.append(strings[-1])
        elif op.name in ("BINGET", "LONG_BINGET") and isinstance(arg, int) and arg < len(memo):
            strings.append(memo[arg])
        elif op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
    return list(dict.fromkeys(g for g in found if not _allowed(g)))


def _allowed(name: str) -> bool:
    """Whether torch's safe load accepts the global module.name (its defaults and any the user added)."""
    extra = {f"{g.__module__}.{g.__qualname__}" for g in (g[0] if isinstance(g, tuple) else g
                                                          for g in torch.serialization.get_safe_globals())
             if hasattr(g, "__qualname__")}
    try:
        from torch import _weights_only_unpickler

        return name in extra or name in _weights_only_unpickler._get_allowed_globals()
    except (ImportError, AttributeError):  # a torch without that table: its own globals are taken as allowed
        return name in extra or name.startswith(("torch.", "collections."))


def write(state: dict, path: str | Path) -> None:
    """Saves state at path through a temporary file in the same folder, synced to disk, then renamed over the
    target: a save that fails (a full disk, a quota, a killed process) leaves the previous file whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut only once the folder's entry is on disk
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
