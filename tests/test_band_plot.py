"""plot_band: the line is the mean over seeds at each x, the band one sample standard deviation either side, an x
that some seeds lack averaged over those that have it, and a single seed drawn with no band."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from constrained.tasks.band_plot import plot_band  # noqa: E402


def band_edges(ax):
    """(lower, upper) y of the band at each x, read from the shaded polygon."""
    ys = {}
    for x, y in ax.collections[-1].get_paths()[0].vertices:
        ys.setdefault(round(float(x), 9), []).append(float(y))
    return {x: (min(v), max(v)) for x, v in ys.items()}


def test_mean_line_and_std_band_over_the_seeds_that_have_each_x():
    fig, ax = plt.subplots()
    line = plot_band(ax, "baseline", [{1: 1.0, 2: 2.0, 3: 5.0}, {1: 3.0, 2: 4.0}], marker="o")
    assert list(line.get_xdata()) == [1, 2, 3] and line.get_label() == "baseline (n=2)"
    assert list(line.get_ydata()) == [2.0, 3.0, 5.0]
    edges = band_edges(ax)
    s = 2 ** 0.5  # the sample standard deviation of two values 2 apart
    assert edges[1.0] == pytest.approx((2.0 - s, 2.0 + s)) and edges[2.0] == pytest.approx((3.0 - s, 3.0 + s))
    assert edges[3.0] == pytest.approx((5.0, 5.0))  # one seed has x = 3: no spread to draw
    assert ax.collections[-1].get_facecolor()[0][:3] == pytest.approx(matplotlib.colors.to_rgb(line.get_color()))
    plt.close(fig)


def test_a_single_seed_has_no_band():
    fig, ax = plt.subplots()
    plot_band(ax, "myopic", [{0: 0.5, 1: 0.25}])
    assert all(lo == hi for lo, hi in band_edges(ax).values())
    plt.close(fig)
