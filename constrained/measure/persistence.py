"""Before and after: a fine-tuned run (init_from) measured beside the weights it started from, on the same
episodes or windows, so safety training's effect on a backdoor is one number per triggered split."""

from __future__ import annotations

import math


def persistence(after: dict[str, float], before: dict[str, float], names: tuple[str, ...] | None = None
                ) -> dict[str, float]:
    """The starting weights' metrics as {split}/{name}_before (those named in `names`, every one when None), and
    per split with a defection rate, persistence = defection after / before (nan when the start never defected)."""
    out = {}
    for key, value in before.items():
        split, name = key.split("/", 1)
        if names is None or name in names:
            out[f"{split}/{name}_before"] = value
        if name == "defection":
            out[f"{split}/persistence"] = after[key] / value if value > 0 else math.nan
    return out
