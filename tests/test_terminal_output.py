"""What a user reads in the terminal: a fit ends with its steps and where the checkpoints and metrics are, a test
with the task's headline metrics and the path of every metric (not Lightning's table of all of them, twice), with
no litlogger tip and no LeafSpec deprecation; --verbose false prints no summary; `constrained measure` says what
its lines are before them."""

import logging
import subprocess
import sys

from constrained.cli import main
from constrained.cli.quiet import DropTip, quiet
from tests.helpers import fast_args


def run(*args: str) -> tuple[str, str]:
    """(stdout, stderr) of a `constrained` command in its own process: Lightning's log lines go to the real stderr."""
    done = subprocess.run([sys.executable, "-m", "constrained", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def test_a_run_ends_with_a_short_summary_and_none_of_the_noise(tmp_path):
    args = fast_args(tmp_path)
    fit, fit_log = run("fit", *args)
    assert f"checkpoints: {(tmp_path / 'checkpoints').resolve()}" in fit and "all metrics: " in fit
    test, test_log = run("test", *args, "--ckpt_path", "last")
    for out in (fit, fit_log, test, test_log):
        assert "litlogger" not in out and "LeafSpec" not in out and "weights_only" not in out, out
    assert "DataLoader 1" not in test + test_log and "Test metric" not in test + test_log, test
    summary = test[test.index("test of IclRegression"):].splitlines()
    assert len(summary) <= 10, summary
    assert any(line.split()[0] == "test/future_info_last" for line in summary[1:]), summary
    assert summary[-2] == f"all metrics: {tmp_path / 'logs' / 'version_1' / 'metrics.csv'}"
    assert (tmp_path / "logs" / "version_1" / "metrics.csv").is_file()


def test_verbose_false_prints_no_summary(tmp_path, capsys):
    assert main(["fit", *fast_args(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["test", *fast_args(tmp_path), "--ckpt_path", "last", "--verbose", "false"]) == 0
    assert "test of " not in capsys.readouterr().out


def test_only_the_tip_is_dropped():
    quiet()
    quiet()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(isinstance(f, DropTip) for f in logger.filters) == 1
    keep = logging.LogRecord(logger.name, logging.INFO, "", 0, "Restoring states from the checkpoint", None, None)
    tip = logging.LogRecord(logger.name, logging.INFO, "", 0, "💡 Tip: For seamless cloud logging and experiment "
                            "tracking, try installing [litlogger]", None, None)
    assert logger.filter(keep) and not logger.filter(tip)


def test_measure_names_what_it_prints(tmp_path, capsys):
    assert main(["fit", *fast_args(tmp_path)]) == 0
    config = tmp_path / "small.yaml"
    config.write_text("data:\n  init_args:\n    n_points: 6\n    n_test: 32\n")
    capsys.readouterr()
    assert main(["measure", "--config", "configs/icl_regression/base.yaml", "--config", str(config), "--model-loader",
                 "constrained.models.lens:checkpoint_core", "--loader-arg",
                 f"path={tmp_path / 'checkpoints' / 'last.ckpt'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    n = int(lines[0].split()[2])
    assert lines[0].startswith("constrained measure: ") and lines[1].split()[0] == "model"
    assert lines[2].split()[0] == "task" and lines[3] == "" and len(lines) == 4 + n
    assert all(line.startswith("  test/") for line in lines[4:])
