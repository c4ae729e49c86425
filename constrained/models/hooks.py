"""TransformerLens-style named hook points, one mechanism for probes, monitors and penalties."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn


class HookPoint(nn.Module):
    """Identity module whose output can be read (or replaced) by name through forward hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        return bool(self._forward_hooks)


def _matcher(names_filter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    wanted = set(names_filter)
    return lambda name: name in wanted


class HookedModule(nn.Module):
    """Mixin: name every HookPoint by its module path and read activations by those names."""

    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def check_hook_names(self, names: Iterable[str]) -> None:
        known = self.hook_points()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(f"unknown hook name(s) {unknown}; known: {sorted(known)}")

    @contextmanager
    def hooks(self, fwd_hooks: list[tuple[str, Callable]]):
        """Attach (name, fn(tensor, name) -> tensor | None) hooks for the duration of a block."""
        self.check_hook_names(name for name, _ in fwd_hooks)
        points = self.hook_points()
        handles = []
        try:
            for name, fn in fwd_hooks:
                handles.append(points[name].register_forward_hook(lambda m, a, out, fn=fn, name=name: fn(out, name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_cache(self, *args, names_filter=None, detach: bool = True, **kwargs):
        """Run forward and return (output, {hook name: activation}) for the names asked for.

        `detach=False` keeps activations in the graph, for penalties and gradient checks.
        """
        if isinstance(names_filter, (list, tuple, set)):
            self.check_hook_names(names_filter)
        match = _matcher(names_filter)
        cache: dict[str, torch.Tensor] = {}

        def store(t: torch.Tensor, name: str):
            cache[name] = t.detach() if detach else t

        names = [n for n in self.hook_points() if match(n)]
        with self.hooks([(n, store) for n in names]):
            out = self(*args, **kwargs)
        return out, cache
