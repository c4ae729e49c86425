import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml

from constrained.cli import main
from constrained.experiments.publish import lost_lines, plot_names
from constrained.experiments.report import (
    grid_markdown,
    headline_for,
    import_task,
    load_records,
    paired_gap,
    report,
    summarize,
)
from constrained.tasks.maze.report import read_proxy
from constrained.tasks.task import Headline
from tests.helpers import one_line_error


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


COMMITTED = sorted(p.parent for p in Path("docs/results").glob("*/results.csv"))


def _only_in_run_folders(committed: str, line: str) -> bool:
    """A line of a committed report that its results.csv and headlines.json, written before a report kept run
    times, wall times and the task sections' run-folder content beside the csv, cannot give back."""
    lines = committed.splitlines()
    samples = lines[next((i for i, x in enumerate(lines) if x.startswith("Continuations of")), len(lines)):]
    return (re.fullmatch(r"\d+ of \d+ runs finished; run time summed over runs: [\d.]+ min\.", line) is not None
            or line.startswith("Wall time of the `ablate` invocations:") or line in samples)


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_every_committed_report_is_rebuilt_from_its_results_csv(folder, tmp_path, capsys):
    committed = (folder / "report.md").read_text()
    out = report([folder / "results.csv"], out=tmp_path / "rebuilt")
    rebuilt = (out / "report.md").read_text()
    assert [x for x in committed.splitlines() if x.startswith("|")] == \
        [x for x in rebuilt.splitlines() if x.startswith("|")]
    lost = lost_lines(committed, rebuilt)
    assert all(_only_in_run_folders(committed, line) for line in lost), lost
    assert set(plot_names(rebuilt)) == set(plot_names(committed))
    assert all((out / name).stat().st_size > 5000 for name in plot_names(rebuilt))
    kept = json.loads((out / "headlines.json").read_text())[folder.name]
    assert kept["task_class"].startswith("constrained.tasks.") and import_task(kept["task_class"]) is not None
    assert Headline.from_dict(kept["headline"]) == headline_for(load_records([folder / "results.csv"]))
    assert (out / "results.csv").read_text() == (folder / "results.csv").read_text()
    # rebuilt in place (on a copy): written only if nothing is lost, else refused with every file untouched
    copy = tmp_path / "copy" / folder.name
    shutil.copytree(folder, copy)
    capsys.readouterr()
    assert main(["report", str(copy / "results.csv")]) == (2 if lost else 0)
    if lost:
        line = one_line_error(capsys, f"constrained report: error: {copy / 'report.md'}: rebuilding it from results")
        assert "give --out with a new folder" in line
        assert all((copy / p.name).read_bytes() == p.read_bytes() for p in folder.iterdir())
    else:
        assert lost_lines(committed, (copy / "report.md").read_text()) == []


def _text_runs(tmp_path, grid_file):
    """Run folders of a text grid as a runner leaves them: records, samples, per-position tables, wall times,
    a failed run; the grid file lists one run more that never started."""
    grid = tmp_path / "text"
    for variant, seed, status in [("baseline", 0, "ok"), ("baseline", 1, "ok"), ("reach", 0, "ok"),
                                  ("reach", 1, "failed")]:
        folder = grid / variant / f"seed{seed}"
        folder.mkdir(parents=True)
        bpb = 1.5 + 0.1 * seed + (variant == "reach") * 0.2
        rec = {"grid": "text", "task": "text", "variant": variant, "seed": seed, "status": status,
               "task_class": "constrained.tasks.text.Text", "grid_file": str(grid_file), "fit_seconds": 90.0,
               "test_seconds": 30.0, "metrics": {"test/bpb": bpb, "test/unigram_bpb": 4.5, "test/bigram_bpb": 3.4}}
        if status != "ok":
            rec.update(phase="fit", error="Traceback\nValueError: boom", log=str(folder / "fit.log"))
        (folder / "result.json").write_text(json.dumps(rec))
        (folder / "sample.txt").write_text(f"def main():\n    return {variant}_{seed}\n")
        rows = "split,position,bpb\n" + "".join(f"test,{t},{bpb + 1 / (t + 1)}\n" for t in range(8))
        (folder / "bpb_by_position.csv").write_text(rows)
    (grid / "wall_times.jsonl").write_text(json.dumps({"shard": "0/1", "runs": 4, "jobs": 2, "seconds": 300.0}) + "\n")
    grid_file.write_text(yaml.safe_dump({"name": "text", "task": "text", "base": "configs/text/base.yaml",
                                         "seeds": [0, 1], "variants": [
                                             {"name": "baseline", "config": "configs/text/baseline.yaml"},
                                             {"name": "reach", "config": "configs/text/reach.yaml"},
                                             {"name": "horizon32", "config": "configs/text/horizon32.yaml"}]}))
    return grid


def test_a_report_rebuilt_from_its_results_csv_is_the_same_report(tmp_path):
    first = report([_text_runs(tmp_path, tmp_path / "grid.yaml")], out=tmp_path / "first")
    md = (first / "report.md").read_text()
    assert "return baseline_0" in md and "Wall time of the `ablate` invocations: 5.0 min" in md
    assert "text_bpb_by_position.png" in plot_names(md)
    again = report([first / "results.csv"], out=tmp_path / "again")
    for name in ("report.md", "headlines.json", "results.csv"):
        assert (again / name).read_text() == (first / name).read_text(), name
    assert sorted(p.name for p in again.glob("*.png")) == sorted(p.name for p in first.glob("*.png"))
    report([again / "results.csv"])  # in place: nothing lost, the same files
    assert (again / "report.md").read_text() == md


def test_report_names_the_runs_that_did_not_finish_and_counts_them_against_the_grid_file(tmp_path):
    grid = _text_runs(tmp_path, tmp_path / "grid.yaml")
    (grid / "reach" / "seed1" / "result.json").unlink()  # started, never finished
    md = (report([grid]) / "report.md").read_text()
    assert f"3 of 6 runs of {tmp_path / 'grid.yaml'} finished" in md
    assert "- MISSING reach/seed1: its folder has no result.json (still running, or stopped before it finished)" in md
    assert f"- MISSING horizon32/seed0: listed in {tmp_path / 'grid.yaml'}, no record of it" in md
    assert "- MISSING horizon32/seed1" in md


def test_report_counts_against_a_grid_file_given_on_the_command_line(tmp_path, capsys):
    _record(tmp_path, "baseline", 0, 0.1, 0.9)
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"name": "g", "task": "t", "base": "configs/icl_regression/base.yaml",
                                         "seeds": [0], "variants": [
                                             {"name": "baseline", "config": "configs/icl_regression/baseline.yaml"},
                                             {"name": "myopic", "config": "configs/icl_regression/myopic_kv.yaml"}]}))
    assert main(["report", str(tmp_path / "g"), "--grid", str(grid_file)]) == 0
    md = (tmp_path / "g" / "report.md").read_text()
    assert f"1 of 2 runs of {grid_file} finished" in md and "- MISSING myopic/seed0" in md


def _cut(path, size):
    data = path.read_bytes()
    path.write_bytes(data[:size])


def test_report_refuses_a_results_csv_cut_short(tmp_path, capsys):
    folder = tmp_path / "icl_regression"
    shutil.copytree("docs/results/icl_regression", folder)
    before = (folder / "report.md").read_bytes()
    _cut(folder / "results.csv", 3000)
    assert main(["report", str(folder / "results.csv")]) == 2
    line = one_line_error(capsys, f"constrained report: error: {folder / 'results.csv'}: line ")
    assert "cut short" in line
    assert (folder / "report.md").read_bytes() == before


@pytest.mark.parametrize("content,problem", [(b'{"grid": "g", "variant": "a", "se', "line 1: not valid JSON"),
                                             (b"[1, 2]", "not a run record"),
                                             (b'{"grid": "\xff"}', "line 1: not UTF-8 text (byte 0xff")])
def test_report_names_a_damaged_result_json(tmp_path, capsys, content, problem):
    _record(tmp_path, "baseline", 0, 0.1, 0.9)
    _record(tmp_path, "myopic", 0, 0.1, 0.9)
    bad = tmp_path / "g" / "myopic" / "seed0" / "result.json"
    bad.write_bytes(content)
    assert main(["report", str(tmp_path / "g")]) == 2
    assert problem in one_line_error(capsys, f"constrained report: error: {bad}: ")
    assert not (tmp_path / "g" / "report.md").exists()


def test_report_names_a_results_csv_that_is_not_utf8(tmp_path, capsys):
    csv_path = tmp_path / "g" / "results.csv"
    csv_path.parent.mkdir()
    csv_path.write_bytes(b"task,variant,seed,metric,value\r\nt,a,0,test/x,1.0\r\nt,\xe9,0,test/x,2.0\r\n")
    assert main(["report", str(csv_path)]) == 2
    assert "line 3: not UTF-8 text" in one_line_error(capsys, f"constrained report: error: {csv_path}: ")


def test_a_report_from_run_folders_keeps_the_runs_of_an_earlier_merged_report(tmp_path, capsys):
    for variant in ("baseline", "myopic"):
        _record(tmp_path, variant, 0, 0.1, 0.9)
    report([tmp_path / "g"])
    shutil.rmtree(tmp_path / "g" / "myopic")  # as if reporting one shard into the merged report's folder
    assert main(["report", str(tmp_path / "g")]) == 2
    assert "holds 1 run(s) these sources do not (myopic/seed0)" in one_line_error(capsys)


def test_a_grid_files_notes_are_printed_under_its_table_and_must_be_lines(tmp_path, capsys):
    _record(tmp_path, "baseline", 0, 0.1, 0.9)
    grid = {"name": "g", "task": "t", "base": "configs/icl_regression/base.yaml", "seeds": [0],
            "variants": [{"name": "baseline", "config": "configs/icl_regression/baseline.yaml"}],
            "notes": ["baseline: the plain core", "second line"]}
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    assert main(["report", str(tmp_path / "g"), "--grid", str(grid_file)]) == 0
    md = (tmp_path / "g" / "report.md").read_text()
    assert "\nbaseline: the plain core\nsecond line\n" in md
    grid_file.write_text(yaml.safe_dump({**grid, "notes": "one string"}))
    from constrained.experiments.grid import GridError, load_grid

    with pytest.raises(GridError, match="notes must be a list of lines"):
        load_grid(grid_file)
