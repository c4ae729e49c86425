"""`constrained export` refuses what a HookedTransformer cannot compute with one line naming why, before writing
anything; these checks read only the checkpoint, so they run without the lens extra."""

from constrained.cli import main
from constrained.models.modular import ModularModel
from constrained.models.sequence_model import SequenceModel
from constrained.tasks.maze.grid import N_FEATURES
from constrained.tasks.maze.task import Maze
from tests.helpers import save_checkpoint


def _refused(tmp_path, capsys, model):
    out = tmp_path / "lens"
    code = main(["export", str(save_checkpoint(model, tmp_path / "m.ckpt")), str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and err.startswith("constrained export: error:"), err
    return err


def test_query_token_mask_is_refused_naming_it(tmp_path, capsys):
    model = SequenceModel(d_model=16, n_layers=1, d_in=7, n_ctx=8, query_positions=[0, 2, 4, 6])
    err = _refused(tmp_path, capsys, model)
    assert "query tokens (query_positions)" in err and "neither causal nor a local window" in err


def test_modular_model_is_refused_naming_its_planner(tmp_path, capsys):
    model = ModularModel(d_model=16, n_layers=1, d_in=N_FEATURES, d_out=4, n_ctx=26,
                         state_features=Maze(m=2).state_features)
    err = _refused(tmp_path, capsys, model)
    assert "modular model" in err and "planner" in err


def test_missing_checkpoint_is_named(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.ckpt"), str(tmp_path / "out")]) == 2
    assert "none.ckpt not found" in capsys.readouterr().err
