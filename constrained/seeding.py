"""Every random draw is a pure function of named integers (seed, stream, step, rank)."""

from __future__ import annotations

import numpy as np
import torch


def generator(*keys: int) -> torch.Generator:
    """A torch CPU generator seeded from the tuple of keys (no collisions between tuples)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
