"""The curve of a variant across seeds, as every task's report draws it: the mean over seeds as a line, one
standard deviation either side as a shaded band of the line's colour, the number of seeds in the legend."""

from __future__ import annotations

import statistics


def plot_band(ax, variant: str, runs: list[dict[float, float]], alpha: float = 0.2, **style):
    """runs: one {x: value} per seed; at each x the mean and the sample standard deviation of the runs that have
    it (0 from a single run). `style` goes to ax.plot (marker, ls, ...). Returns the line."""
    xs = sorted(set().union(*runs))
    values = [[r[x] for r in runs if x in r] for x in xs]
    mean = [statistics.fmean(v) for v in values]
    std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
    line, = ax.plot(xs, mean, label=f"{variant} (n={len(runs)})", **style)
    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    color=line.get_color(), alpha=alpha)
    return line
