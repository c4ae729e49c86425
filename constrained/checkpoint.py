"""Reading a Lightning checkpoint safely (weights_only) with an error that names the file and the problem,
for `constrained test/validate/fit --ckpt_path` and `constrained verify` alike."""

from __future__ import annotations

import re
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
        detail = load_error(e)
        if detail.startswith("Unsupported global"):  # a real checkpoint holding arbitrary Python objects
            raise CheckpointError(f"cannot read checkpoint {path}: it holds a Python object ({detail}) that a safe "
                                  f"load refuses; only tensors and plain data are read") from e
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch checkpoint, or truncated ({detail})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict: not a Lightning checkpoint")
    return ckpt


def load_error(e: Exception) -> str:
    """The informative part of a torch.load error: for a refused safe load, the class the unpickler met. Torch's
    advice (allowlisting the class, or loading unsafely) is dropped: loading code from a checkpoint is exactly
    what the safe load is there to prevent."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = text.splitlines()[0] if text else type(e).__name__
    found = re.match(r"Unsupported global: GLOBAL (\S+)", line)
    if found:
        return f"Unsupported global: {found[1]}"
    return line if "weights_only" not in line else type(e).__name__
