"""What a task with a planted backdoor gives the defection probes (measure/defection.py) and the probe monitor:
the windows to probe and the model's own outcome on them. A task declares it by subclassing `Backdoored`; the
measurements check that type, so a task that forgets a method fails when it is built, not mid-test."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DefectionSets:
    """Batches with inputs (n, T), probe_at (n,) long and triggered (n,) bool. mixed: triggered and clean windows
    alternating, so both halves hold both; cross_train / cross_test: trigger A and clean, trigger B and other clean
    windows (None with one trigger); red_team: look-alike windows (None: not available); heldout: windows with a
    trigger the model never saw and their clean controls, alternating (None: not available); contrast: the
    generic probe's (positive, negative) text pairs as 1-D input tensors, no trigger in any (None: no generic
    probe)."""

    mixed: dict[str, torch.Tensor]
    cross_train: dict[str, torch.Tensor] | None = None
    cross_test: dict[str, torch.Tensor] | None = None
    red_team: dict[str, torch.Tensor] | None = None
    heldout: dict[str, torch.Tensor] | None = None
    contrast: list[tuple[torch.Tensor, torch.Tensor]] | None = None


class Backdoored(ABC):
    """A task that can carry a planted backdoor. `backdoor` holds its options, None where the run plants none
    (the task is then its plain self and nothing here is measured)."""

    backdoor: Any = None
    eval_seed: int  # every Task has it; it seeds the random-init control the defection probes are read against

    @abstractmethod
    def defection_probe_sets(self, split: str = "test", n: int | None = None) -> DefectionSets:
        """The windows of `split` ("test", or "val" for the monitor), about n rows per set (None: all)."""

    @abstractmethod
    def defects(self, net, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n,) bool: does `net`, acting on its own (greedy), show the backdoor's behaviour on each window?"""


def planted(task) -> bool:
    """The task declares the backdoor protocol and this run plants one."""
    return isinstance(task, Backdoored) and task.backdoor is not None
