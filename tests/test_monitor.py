import csv

import pytest

from constrained.cli import main
from constrained.measure.monitor import ProbeMonitor
from constrained.tasks.icl_regression.task import IclRegression
from tests.helpers import fast_args


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_fit_logs_monitor_probes_and_test_logs_headline(tmp_path):
    main(["fit", *fast_args(tmp_path)])
    rows = [r for r in _rows(tmp_path / "logs" / "version_0" / "metrics.csv") if r["monitor/probe_w_hat_last"]]
    # val_check_interval 3, max_steps 6: two validation runs, the sanity check not logged
    assert [int(r["step"]) for r in rows] == [2, 5]
    for r in rows:
        sel = float(r["monitor/probe_w_hat_last_selectivity"])
        assert sel == pytest.approx(float(r["monitor/probe_w_hat_last"]) - float(r["monitor/probe_w_hat_last_control"]))
        assert r["monitor/probe_w_hat_L0"]
    # the control is fixed for the run; the trained model moved
    assert rows[0]["monitor/probe_w_hat_last_control"] == rows[1]["monitor/probe_w_hat_last_control"]
    assert rows[0]["monitor/probe_w_hat_last"] != rows[1]["monitor/probe_w_hat_last"]

    main(["test", *fast_args(tmp_path), "--ckpt_path", "last", "--verbose", "false"])
    logged = _rows(tmp_path / "logs" / "version_1" / "metrics.csv")[0]
    # the headline's probe signature (its e10 / k10 names need n_points > 10, more than this tiny run has)
    name = "test/probe_w_hat_last_selectivity"
    assert name in IclRegression.headline.signatures
    trained, control = float(logged["test/probe_w_hat_last"]), float(logged["test/probe_w_hat_last_control"])
    assert float(logged[name]) == pytest.approx(trained - control, abs=1e-6)  # loggers store float32


def test_monitor_needs_two_sequences():
    with pytest.raises(ValueError, match="n_sequences"):
        ProbeMonitor(n_sequences=1)
