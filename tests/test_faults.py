"""Bad input and faults that must not pass for success or destroy what was recorded: testing without trained
weights, a checkpoint save that fails partway, non-finite or out-of-range options, a checkpoint holding a Python
object, an output folder that cannot be written."""

import errno
import io
import os
import pickle

import pytest
import torch

from constrained import checkpoint
from constrained.cli import main
from tests.helpers import fast_args, one_line_error


@pytest.mark.parametrize("sub", ["test", "validate"])
@pytest.mark.parametrize("ckpt", [["--ckpt_path", "last"], []])
def test_scoring_a_run_without_a_checkpoint_is_refused_and_writes_nothing(tmp_path, capsys, sub, ckpt):
    run = tmp_path / "empty"
    assert main([sub, *fast_args(run), *ckpt]) == 2
    line = one_line_error(capsys, f"constrained {sub}: error: no ")
    assert "--ckpt_path none" in line
    assert not run.exists()


def test_ckpt_path_none_scores_the_random_init_model_on_purpose(tmp_path):
    assert main(["test", *fast_args(tmp_path), "--ckpt_path", "none", "--verbose", "false"]) == 0
    assert (tmp_path / "test_metrics.csv").is_file()


def test_ckpt_path_best_finds_the_best_checkpoint_of_the_run_or_says_there_is_none(tmp_path, capsys):
    assert main(["test", *fast_args(tmp_path / "new"), "--ckpt_path", "best"]) == 2
    assert "no best checkpoint (best-*.ckpt) in" in one_line_error(capsys)
    main(["fit", *fast_args(tmp_path / "run")])
    assert main(["test", *fast_args(tmp_path / "run"), "--ckpt_path", "best", "--verbose", "false"]) == 0
    assert (tmp_path / "run" / "test_metrics.csv").is_file()


def _disk_full_partway(monkeypatch):
    """torch.save that writes half of the checkpoint, then finds the disk full (as a real writer would)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        if isinstance(f, (str, os.PathLike)):
            f = open(f, "wb")
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def test_a_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    main(["fit", *fast_args(tmp_path), "--trainer.max_steps", "4", "--last_checkpoint.every_n_train_steps", "2"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    _disk_full_partway(monkeypatch)
    assert main(["fit", *fast_args(tmp_path), "--trainer.max_steps", "8", "--last_checkpoint.every_n_train_steps", "2",
                 "--ckpt_path", "last"]) == 2
    line = one_line_error(capsys, "constrained fit: error: cannot save checkpoint ")
    assert "No space left on device" in line and "saved before is kept unchanged" in line
    monkeypatch.undo()
    assert last.read_bytes() == before and torch.load(last, weights_only=True)["global_step"] == 4
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("text,problem", [
    ("model:\n  init_args:\n    lr: .nan\n", "model.init_args.lr must be a finite number, got nan"),
    ("data:\n  init_args:\n    x_scale: 1.0e39\n",
     "data.init_args.x_scale must be a finite number within float32's range"),
    ("data:\n  init_args:\n    shifted: {x_scale: 1.0e39}\n", "data.init_args.shifted.x_scale must be a finite"),
])
def test_numbers_that_are_not_finite_in_float32_are_named_before_anything_is_built(tmp_path, capsys, text, problem):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(text)
    assert main(["fit", *fast_args(tmp_path / "run"), "--config", str(overlay)]) == 2
    assert problem in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_an_error_after_the_trainer_is_built_leaves_no_empty_log_folder(tmp_path, capsys):
    run = tmp_path / "run"
    fail = ["--trainer.callbacks+=tests.helpers.FailInSetup"]
    assert main(["fit", *fast_args(run), *fail]) == 2
    assert "simulated bad option" in one_line_error(capsys)
    assert not (run / "logs").exists() and not run.exists()
    main(["fit", *fast_args(run)])  # a run that logged keeps its logs when a later invocation fails
    assert main(["test", *fast_args(run), "--ckpt_path", "last", *fail]) == 2
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["version_0"]


class Payload:
    """What a malicious checkpoint carries: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_python_object_is_refused_by_the_error_type_not_its_wording(tmp_path, monkeypatch):
    path, marker = tmp_path / "evil.ckpt", tmp_path / "ran"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": Payload(marker)}, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"holds a Python object \((posix|nt)\.system\)"):
        checkpoint.read(path)
    real_load = torch.load

    def reworded(*args, **kwargs):  # a torch that words its refusal some other way
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError("weights-only load refused the file") from None

    monkeypatch.setattr(torch, "load", reworded)
    with pytest.raises(checkpoint.CheckpointError, match=r"holds a Python object \((posix|nt)\.system\) that a safe"):
        checkpoint.read(path)
    assert not marker.exists()
    path.write_bytes(b"garbage" * 10)  # an UnpicklingError too, but of damaged bytes
    with pytest.raises(checkpoint.CheckpointError, match="not a torch checkpoint, or truncated"):
        checkpoint.read(path)


def test_an_output_folder_with_a_file_in_the_way_is_named_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert main(["ablate", "configs/ablations/precache.yaml", "--out", str(out)]) == 2
    line = one_line_error(capsys, f"constrained ablate: error: --out {out}: cannot write the grid's results there")
    assert "a file is there, where a folder should be" in line
    assert out.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_output_folder_is_named_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["ablate", "configs/ablations/precache.yaml", "--out", str(out)]) == 2
        assert "Permission denied" in one_line_error(capsys, f"constrained ablate: error: --out {out}: cannot write")
        assert not list(out.iterdir())
    finally:
        out.chmod(0o700)
