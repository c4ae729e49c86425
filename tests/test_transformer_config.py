"""TransformerConfig is the one list of the core's hyper-parameters: the Lightning module names each of them
(LightningCLI reads its signature) with the config's defaults and builds the core from them by name, so the
hyper-parameters a checkpoint stores are the config's fields."""

import inspect
from dataclasses import asdict, fields

import pytest

from constrained.models.config import TransformerConfig
from constrained.models.sequence_model import SequenceModel
from constrained.models.transformer import Transformer

LINKED = {"d_in", "d_out", "n_ctx"}  # filled in from the task, so the module's defaults are placeholders


def test_the_module_names_every_field_with_the_configs_default():
    params = inspect.signature(SequenceModel.__init__).parameters
    for f in fields(TransformerConfig):
        assert f.name in params, f"SequenceModel has no argument {f.name}"
        if f.name not in LINKED:
            assert params[f.name].default == f.default, f.name


def test_the_core_is_built_from_the_modules_arguments_by_name():
    model = SequenceModel(d_model=8, n_layers=2, n_heads=4, d_mlp=12, horizon=3, myopic_gradient="input", d_in=3,
                          d_out=2, n_ctx=7, query_positions=[1, 4])
    config = model.net.config
    assert asdict(config) == {f.name: model.hparams[f.name] for f in fields(TransformerConfig)}
    assert model.net.blocks[0].mlp[0].out_features == 12 and len(model.net.blocks) == 2
    assert model.net.blocks[0].attn.is_query.nonzero().flatten().tolist() == [1, 4]


def test_bad_values_are_refused_when_the_config_is_made():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_in=1, d_out=1, n_ctx=4, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="horizon"):
        TransformerConfig(d_in=1, d_out=1, n_ctx=4, horizon=0)
    with pytest.raises(TypeError, match="TransformerConfig"):
        Transformer(dict(d_in=1, d_out=1, n_ctx=4))
