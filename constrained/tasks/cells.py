"""One table cell for a metric over runs: mean ± sample standard deviation (n), as every report prints it."""

from __future__ import annotations

import statistics


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f} (n={len(values)})"
