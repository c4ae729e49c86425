"""`constrained compare`: new runs beside a recorded grid, judged against the recorded seed spread; and
`ablate --seeds`, which runs a subset of a grid's seeds."""

import json
from pathlib import Path

import pytest

from constrained.cli import main
from constrained.experiments.compare import compare, within
from constrained.files import write_csv
from tests.helpers import one_line_error

HEADLINE = {"capability": "test/loss", "lower_is_better": True, "signatures": ["test/reach"], "gaps": []}


def write_grid(folder, values: dict[tuple[str, int], tuple[float, float]]):
    """A results.csv (and headlines.json) as a report writes them: {(variant, seed): (loss, reach)}."""
    folder.mkdir(parents=True)
    rows = []
    for (variant, seed), (loss, reach) in values.items():
        rows += [{"task": "toy", "variant": variant, "seed": seed, "metric": "test/loss", "value": loss},
                 {"task": "toy", "variant": variant, "seed": seed, "metric": "test/reach", "value": reach}]
    write_csv(rows, folder / "results.csv")
    (folder / "headlines.json").write_text(json.dumps({folder.name: {"task_class": None, "headline": HEADLINE}}))
    return folder / "results.csv"


def test_within_is_two_spreads_of_the_recorded_seeds():
    assert within(1.2, [1.0, 1.1, 1.2])  # mean 1.1, std 0.1: 1.1 ± 0.2
    assert within(1.29, [1.0, 1.1, 1.2])
    assert not within(1.31, [1.0, 1.1, 1.2])
    assert within(0.5, [0.5, 0.5, 0.5]) and not within(0.5001, [0.5, 0.5, 0.5])


def test_compare_flags_only_the_value_outside_the_spread(tmp_path):
    recorded = write_grid(tmp_path / "old" / "grid", {("baseline", s): (1.0 + 0.1 * s, 0.2) for s in range(3)}
                          | {("myopic", s): (2.0 + 0.1 * s, 0.3 + 0.01 * s) for s in range(3)})
    new = write_grid(tmp_path / "new" / "grid", {("baseline", 0): (1.05, 0.2), ("myopic", 0): (2.9, 0.31),
                                                ("other", 0): (0.0, 0.0)})
    lines, outside = compare([recorded], [new])
    text = "\n".join(lines)
    assert outside == 1
    assert "| myopic | 0 | test/loss | 2.1000 ± 0.1000 (n=3) | 2.0000 | 2.9000 | **no** |" in text
    assert "| baseline | 0 | test/loss | 1.1000 ± 0.1000 (n=3) | 1.0000 | 1.0500 | yes |" in text
    assert "not compared): other" in text
    # every metric: baseline's loss moved within the spread, its reach repeats; myopic's loss is outside
    assert "| baseline | 2 | 1 | 0 |" in text and "| myopic | 2 | 0 | 1 |" in text


def test_compare_command_names_an_empty_source(tmp_path, capsys):
    recorded = write_grid(tmp_path / "old" / "grid", {("baseline", 0): (1.0, 0.2)})
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(recorded), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("constrained compare: error: no finished runs in") and "empty" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("option, problem", [(["--seeds", "7"], "--seeds [7] not in the grid's seeds [0, 1, 2]"),
                                             (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
                                             (["--variants", "baseline,x"], "--variants ['x'] not in the grid's")])
def test_ablate_refuses_seeds_and_variants_the_grid_does_not_have(tmp_path, capsys, option, problem):
    out = tmp_path / "out"
    assert main(["ablate", "configs/ablations/precache.yaml", *option, "--out", str(out)]) == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_compare_refuses_a_results_csv_cut_short(tmp_path, capsys):
    cut = tmp_path / "check" / "icl_regression" / "results.csv"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(Path("docs/results/icl_regression/results.csv").read_bytes()[:3000])  # `head -c 3000`
    assert main(["compare", "docs/results/icl_regression/results.csv", str(cut)]) == 2
    line = one_line_error(capsys, f"constrained compare: error: {cut}: line ")
    assert "the file ends inside a row (it was cut short)" in line


def test_compare_names_a_damaged_record(tmp_path, capsys):
    recorded = write_grid(tmp_path / "old" / "grid", {("baseline", 0): (1.0, 0.2)})
    bad = tmp_path / "new" / "grid" / "baseline" / "seed0" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"grid": "grid", "variant": "baseline", "seed": 0, "status": "ok", "metrics": {"test/loss": 1.')
    assert main(["compare", str(recorded), str(tmp_path / "new")]) == 2
    assert "not valid JSON" in one_line_error(capsys, f"constrained compare: error: {bad}: line 1")


def test_compare_with_nothing_in_common_is_no_all_clear(tmp_path, capsys):
    recorded = write_grid(tmp_path / "old" / "grid", {("baseline", s): (1.0, 0.2) for s in range(3)})
    new = write_grid(tmp_path / "new" / "grid", {("other", 0): (1.0, 0.2)})
    assert main(["compare", str(recorded), str(new)]) == 2
    assert "nothing to compare" in one_line_error(capsys)
