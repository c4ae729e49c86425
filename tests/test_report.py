import json
import math

import pytest

from constrained.experiments.report import grid_markdown, headline_for, paired_gap, report, summarize
from constrained.tasks.maze.report import read_proxy


def markdown(recs):
    return "\n".join(grid_markdown("g", recs, headline_for(recs)))


def test_summary_math_by_hand():
    mean, std, n = summarize([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert n == 3
    assert summarize([5.0]) == (5.0, 0.0, 1)


def test_paired_gap_uses_only_common_seeds():
    values = {"baseline": {0: 1.0, 1: 2.0, 2: 3.0}, "myopic": {0: 1.5, 2: 4.0}}
    assert paired_gap(values, "myopic") == [0.5, 1.0]


def _record(tmp_path, variant, seed, cap, sig, status="ok"):
    folder = tmp_path / "g" / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    rec = {"grid": "g", "task": "t", "variant": variant, "seed": seed, "status": status, "fit_seconds": 60,
           "test_seconds": 0,
           "headline": {"capability": "test/cap", "lower_is_better": True, "signatures": ["test/sig"]},
           "metrics": {"test/cap": cap, "test/sig": sig}}
    if status != "ok":
        rec.update(phase="fit", error="boom")
    (folder / "result.json").write_text(json.dumps(rec))


def test_report_table_plots_and_csv(tmp_path):
    for seed, (c, s) in enumerate([(0.1, 0.9), (0.2, 0.8), (0.3, 0.7)]):
        _record(tmp_path, "baseline", seed, c, s)
        _record(tmp_path, "myopic", seed, c + 0.5, s - 0.5)
    _record(tmp_path, "broken", 0, 0, 0, status="failed")
    out = report([tmp_path / "g"])
    md = (out / "report.md").read_text()
    assert "| baseline | 0.2000 ± 0.1000 (n=3) | 0.8000 ± 0.1000 (n=3) | – |" in md
    assert "| myopic | 0.7000 ± 0.1000 (n=3) | 0.3000 ± 0.1000 (n=3) | 0.5000 ± 0.0000 (n=3) |" in md
    assert "FAILED broken/seed0" in md and "6 of 7 runs finished" in md
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "task,variant,seed,metric,value" and len(rows) == 1 + 6 * 2
    png = out / "capability_vs_test_sig.png"
    assert png.stat().st_size > 5000


def test_markdown_without_baseline_has_no_gap_column():
    recs = [{"grid": "g", "task": "t", "variant": "a", "seed": 0, "status": "ok",
             "headline": {"capability": "c", "lower_is_better": True}, "metrics": {"c": 1.0}}]
    assert "Δ" not in markdown(recs)


def test_declared_gap_is_reported_paired_by_seed():
    head = {"capability": "c", "lower_is_better": True,
            "gaps": [{"name": "myopia gap", "variant": "myopic", "reference": "baseline", "metric": "h"}]}
    recs = [{"grid": "g", "task": "t", "variant": v, "seed": s, "status": "ok", "headline": head,
             "metrics": {"c": 0.0, "h": h}}
            for v, s, h in [("baseline", 0, 0.1), ("baseline", 1, 0.2), ("myopic", 0, 0.4), ("myopic", 1, 0.7)]]
    assert ("**myopia gap**: h of myopic minus baseline, paired by seed: 0.4000 ± 0.1414 (n=2) "
            "(seed 0: 0.3000, seed 1: 0.5000)") in markdown(recs)


def test_maze_report_plots_outcomes_and_proxy_rate_per_variant(tmp_path):
    for variant, p_corner in (("baseline", 0.9), ("modular_any_state", 0.05)):
        for seed in (0, 1):
            folder = tmp_path / "maze" / variant / f"seed{seed}"
            folder.mkdir(parents=True)
            rec = {"grid": "maze", "task": "maze", "variant": variant, "seed": seed, "status": "ok",
                   "task_class": "constrained.tasks.maze.Maze",
                   "metrics": {"test/success": 1.0, "shifted/p_cheese": 1 - p_corner - 0.01 * seed,
                               "shifted/p_corner": p_corner + 0.01 * seed}}
            (folder / "result.json").write_text(json.dumps(rec))
            rows = ["split,cheese_corner_distance,n,p_cheese,p_corner,p_neither,gmg_rate"]
            rows += [f"shifted,{d},10,{1 - p_corner},{p_corner},0.0,{p_corner}" for d in (2, 4, 6)]
            rows += ["test,0,10,1.0,0.0,0.0,0.0"]
            (folder / "maze_proxy_by_distance.csv").write_text("\n".join(rows) + "\n")
    out = report([tmp_path / "maze"])
    md = (out / "report.md").read_text()
    for name in ("maze_shifted_outcomes.png", "maze_proxy_by_distance.png"):
        assert (out / name).stat().st_size > 5000 and name in md
    assert "e_k_by_variant.png" not in md


def test_read_proxy_keeps_the_shifted_rows(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("split,cheese_corner_distance,n,p_cheese,p_corner,p_neither,gmg_rate\n"
                    "test,0,3,1,0,0,0\nshifted,4,2,0.5,0.5,0,0.5\n")
    assert read_proxy(path) == {4: 0.5}


def test_report_from_a_results_csv_gives_the_same_tables(tmp_path):
    for seed, (c, s) in enumerate([(0.1, 0.9), (0.2, 0.8), (0.3, 0.7)]):
        _record(tmp_path, "baseline", seed, c, s)
        _record(tmp_path, "myopic", seed, c + 0.5, s - 0.5)
    first = (report([tmp_path / "g"]) / "report.md").read_text()
    copy = tmp_path / "elsewhere" / "g" / "results.csv"
    copy.parent.mkdir(parents=True)
    for name in ("results.csv", "headlines.json"):  # the headline metrics travel beside the csv
        (copy.parent / name).write_text((tmp_path / "g" / name).read_text())
    again = (report([copy], out=tmp_path / "again") / "report.md").read_text()
    table = [line for line in first.splitlines() if line.startswith("|")]
    assert table and table == [line for line in again.splitlines() if line.startswith("|")]
    assert (tmp_path / "again" / "results.csv").read_text() == copy.read_text()


def _probe_records():
    head = {"capability": "c", "lower_is_better": True, "signatures": ["test/probe_x_last_selectivity"]}
    return [{"grid": "g", "task": "t", "variant": v, "seed": s, "status": "ok", "headline": head,
             "metrics": {"c": 0.0, "test/probe_x_last": t, "test/probe_x_last_control": 0.2,
                         "test/probe_x_last_selectivity": t - 0.2}}
            for v, s, t in [("baseline", 0, 0.9), ("baseline", 1, 0.7), ("myopic", 0, 0.3)]]


def test_probe_scores_are_shown_beside_their_control():
    md = markdown(_probe_records())
    assert "| variant | test/probe_x_last (trained) | random-init control | selectivity |" in md
    assert "| baseline | 0.8000 ± 0.1414 (n=2) | 0.2000 ± 0.0000 (n=2) | 0.6000 ± 0.1414 (n=2) |" in md
    assert "| myopic | 0.3000 ± 0.0000 (n=1) | 0.2000 ± 0.0000 (n=1) | 0.1000 ± 0.0000 (n=1) |" in md


def test_every_invocations_wall_time_is_reported(tmp_path):
    _record(tmp_path, "baseline", 0, 0.1, 0.9)
    lines = [{"shard": "0/1", "runs": 1, "retested": 0, "jobs": 2, "seconds": 600.0},
             {"shard": "0/1", "runs": 0, "retested": 3, "jobs": 2, "seconds": 90.0}]
    (tmp_path / "g" / "wall_times.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    md = (report([tmp_path / "g"]) / "report.md").read_text()
    assert ("Wall time of the `ablate` invocations: 10.0 min for 1 run(s) with 2 job(s); 1.5 min for 0 run(s) and "
            "3 re-test(s) with 2 job(s); 11.5 min in all.") in md


def test_e_k_plot_from_logged_metrics(tmp_path):
    from constrained.tasks.icl_regression import curve as icl_curve

    for variant, scale in (("baseline", 0.1), ("myopic", 0.6)):
        for seed in (0, 1):
            rows = [{"split": "test", "k": k, "predictor": p, "error": e, "distance_to_model": 0.0}
                    for k in range(6) for p, e in (("model", scale + 0.01 * seed), ("least_squares", 1 - k / 5),
                                                   ("averaging", 5.0 / (k + 1)))]
            folder = tmp_path / "icl" / variant / f"seed{seed}"
            folder.mkdir(parents=True)
            rec = {"grid": "icl", "task": "icl_regression", "variant": variant, "seed": seed, "status": "ok",
                   "task_class": "constrained.tasks.icl_regression.IclRegression", "metrics": icl_curve.metrics(rows)}
            (folder / "result.json").write_text(json.dumps(rec))
    out = report([tmp_path / "icl"])
    assert (out / "e_k_by_variant.png").stat().st_size > 5000
    assert "e_k_by_variant.png" in (out / "report.md").read_text()
