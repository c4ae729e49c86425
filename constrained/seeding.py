"""Every random draw is a pure function of named integers (seed, stream, step, rank).

STREAMS is the one table of random streams: each purpose draws from its own number, so no two
purposes can share a stream by accident. A task's split is drawn from the stream of the split's name,
so a task with a split not listed here is refused when it is built.
"""

from __future__ import annotations

import numpy as np
import torch

STREAMS = {
    "train": 0,  # training batches: (seed, 0, step, rank)
    "val": 1,  # the fixed validation set: (eval_seed, 1)
    "test": 2,  # the fixed test set: (eval_seed, 2)
    "shifted": 3,  # an out-of-distribution test split: (eval_seed, 3)
    "objective": 4,  # the modular model's any-state reward labels: (seed, 4, step, rank)
    "gd_tune": 5,  # icl_regression: the held set that tunes the one-step GD baseline: (eval_seed, 5)
    "triggered": 6,  # a backdoor's triggered test split: (eval_seed, 6)
    "triggered_b": 7,  # the second trigger's test split: (eval_seed, 7)
    "red_team": 8,  # adversarial training's trigger look-alikes: (seed, 8, step, rank); their test split (eval_seed, 8)
    "sample": 9,  # generation with a temperature: (seed, 9)
    "heldout_trigger": 10,  # a backdoor's windows with a trigger never trained on (probe checks): (eval_seed, 10)
}


def stream(name: str) -> int:
    """The number of a named stream (KeyError naming the known ones)."""
    if name not in STREAMS:
        raise KeyError(f"no random stream named {name!r}; the table in constrained/seeding.py has {sorted(STREAMS)}")
    return STREAMS[name]


def generator(*keys: int) -> torch.Generator:
    """A torch CPU generator seeded from the tuple of keys (no collisions between tuples)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
