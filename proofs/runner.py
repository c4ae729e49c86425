"""The specs that need no checkpoint, by name, and one call that runs them (`constrained prove`).

Specs are imported when run: isolation pulls in the model (and with it lightning and triton),
which costs seconds that a `--spec mask` run should not pay.
"""

from __future__ import annotations

import importlib

from constrained.proofs.result import DEFAULT_TIMEOUT_MS, Result

SPECS = {  # name -> (module, function)
    "mask": ("constrained.proofs.mask", "spec"),
    "future_info": ("constrained.proofs.penalty_algebra", "future_info_spec"),
    "reach": ("constrained.proofs.penalty_algebra", "reach_spec"),
    "isolation": ("constrained.proofs.isolation", "spec"),
    "horizon_reach": ("constrained.proofs.horizon_reach", "spec"),
}


def run(names: list[str] | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[Result]:
    """Run the named specs (default all, in SPECS order); timeout_ms bounds each solver query."""
    names = list(SPECS) if not names else list(names)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(f"unknown spec(s) {unknown}; known: {list(SPECS)}")
    results = []
    for name in names:
        module, function = SPECS[name]
        results.append(getattr(importlib.import_module(module), function)(timeout_ms=timeout_ms))
    return results
