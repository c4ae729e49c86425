"""How every report lays out a table: one cell for a metric over runs, mean ± sample standard deviation (n); the
rows, one per variant, baseline first."""

from __future__ import annotations

import statistics


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f} (n={len(values)})"


def baseline_first(variants) -> list[str]:
    """The variants sorted by name, baseline first (the row every difference is taken against)."""
    return sorted(set(variants), key=lambda v: (v != "baseline", v))
