"""Both directions between our core and TransformerLens: an exported checkpoint loads into a HookedTransformer that
computes the same outputs and the same activations at every hook both have (token and vector inputs, with and
without a horizon), and `constrained measure` on a HookedTransformer gives the signatures of the same weights in
our core."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("transformer_lens", reason="the lens extra (transformer-lens) is not installed; "
                                               "`make test-lens` installs it and runs these tests")
pytestmark = pytest.mark.lens

from transformer_lens import HookedTransformer, HookedTransformerConfig

from constrained.cli import main
from constrained.cli.measure import task_from_configs
from constrained.measure import signatures
from constrained.models.config import TransformerConfig
from constrained.models.export import ExportError, check_masks, lens_state_dict, to_hooked_transformer
from constrained.models.lens import VectorInput
from constrained.models.sequence_model import SequenceModel
from constrained.models.transformer import Transformer
from constrained.tasks.task import Evaluation, Headline, Task, masked
from tests.helpers import save_checkpoint

PER_LAYER = ("hook_resid_pre", "attn.hook_pattern", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


def _perturbed(model):
    """Weights off their init: LayerNorms at 1 and 0 or zero biases would hide a swapped or dropped parameter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _load_as_documented(out):
    """The TransformerLens code of docs/lens.md for an export."""
    cfg = HookedTransformerConfig(**json.loads((out / "config.json").read_text()), device="cpu")
    model = HookedTransformer(cfg)
    model.load_state_dict(torch.load(out / "state_dict.pt", weights_only=True))
    return model.eval()


@pytest.mark.parametrize("vocab_size", [None, 11], ids=["vectors", "tokens"])
@pytest.mark.parametrize("horizon", [None, 3], ids=["full", "horizon3"])
def test_export_computes_the_same_function_at_every_shared_hook(tmp_path, capsys, vocab_size, horizon):
    myopic = horizon is not None  # myopic descent exports its forward as is
    model = _perturbed(SequenceModel(d_model=16, n_layers=2, n_heads=2, horizon=horizon, myopic_gradient=myopic,
                                     d_in=5, d_out=7, n_ctx=12, vocab_size=vocab_size))
    out = tmp_path / "lens"
    assert main(["export", str(save_checkpoint(model, tmp_path / "m.ckpt")), str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: a {'token' if vocab_size else 'vector-input'} HookedTransformer")
    assert ("myopic descent changes only gradients" in printed) == myopic
    tl = _load_as_documented(out)
    assert tl.cfg.act_fn == "gelu" and tl.cfg.use_local_attn == (horizon is not None)
    theirs = tl if vocab_size else VectorInput(tl)
    x = torch.randint(0, 11, (4, 12)) if vocab_size else torch.randn(4, 12, 5)
    with torch.no_grad():
        a, ours_cache = model.net.eval().run_with_cache(x)
        b, their_cache = theirs.run_with_cache(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    shared = set(ours_cache) & set(their_cache.keys())
    expected = {f"blocks.{l}.{h}" for l in range(2) for h in PER_LAYER}
    if vocab_size:  # the vector read-in runs outside TransformerLens's embedding, so its embed hooks do not fire
        expected |= {"hook_embed", "hook_pos_embed"}
    assert shared == expected
    for name in sorted(shared):
        torch.testing.assert_close(their_cache[name], ours_cache[name], atol=1e-5, rtol=0, msg=name)


def test_a_horizon_whose_local_window_differs_is_caught():
    net = Transformer(TransformerConfig(d_in=3, d_out=1, n_ctx=10, d_model=8, n_layers=1, n_heads=2, horizon=3))
    tl = to_hooked_transformer(net)
    tl.cfg.window_size = 4  # one wider than the horizon
    with pytest.raises(ExportError, match=r"layer 0: .*horizon 3 does not map"):
        check_masks(net, tl)


# -- the reverse: measuring a HookedTransformer -------------------------------------------------------------------


class CopyTokens(Task):
    """Integer tokens, y_t = x_{t-2}; a bool probe target (is x_{t-2} even) for the classifier probe."""

    headline = Headline("test/accuracy", lower_is_better=False)

    def __init__(self, T: int = 10, batch_size: int = 8, n_val: int = 16, n_test: int = 64, seed: int = 0,
                 eval_seed: int = 3):
        super().__init__(batch_size, n_val, n_test, seed, eval_seed)
        self.T = T

    @property
    def seq_len(self) -> int:
        return self.T

    @property
    def vocab_size(self) -> int:
        return 8

    @property
    def output_dim(self) -> int:
        return 8

    def make_batch(self, gen, n, split):
        x = torch.randint(0, self.vocab_size, (n, self.T), generator=gen)
        y = torch.zeros_like(x)
        y[:, 2:] = x[:, :-2]
        mask = torch.zeros(n, self.T, dtype=torch.bool)
        mask[:, 2:] = True
        return {"inputs": x, "targets": y, "loss_mask": mask}

    def loss(self, pred, batch):
        return F.cross_entropy(*masked(pred, batch))

    def evaluate(self, preds, model=None, start=None):
        pred, y = masked(preds["test"], self.eval_set("test"))
        return Evaluation({"test/accuracy": (pred.argmax(-1) == y).float().mean().item()})

    def probe_targets(self, batch):
        mask = batch["loss_mask"]
        return {"even_lag2": (mask, (batch["targets"] % 2 == 0).unsqueeze(-1))}


def random_lens_model(d_vocab: int, d_vocab_out: int, n_ctx: int, vectors: bool = False, horizon: int | None = None,
                      seed: int = 0):
    """A loader: a HookedTransformer built here by TransformerLens's own init (no weights to download), biases and
    LayerNorms moved off 0 and 1; vector inputs through the export's read-in."""
    local = {} if horizon is None else dict(use_local_attn=True, attn_types=["local", "local"], window_size=horizon)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=64, n_ctx=n_ctx, d_vocab=d_vocab,
                                  d_vocab_out=d_vocab_out, act_fn="gelu", normalization_type="LN",
                                  default_prepend_bos=False, device="cpu", **local)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _perturbed(HookedTransformer(cfg)).eval()
    return VectorInput(model) if vectors else model


def core_of(model) -> Transformer:
    """Our core with the weights of a HookedTransformer (or VectorInput) of our family: the export's map inverted."""
    vectors = isinstance(model, VectorInput)
    tl = model.model if vectors else model
    c = tl.cfg
    net = Transformer(TransformerConfig(
        d_in=c.d_vocab, d_out=c.d_vocab_out, n_ctx=c.n_ctx, d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads,
        d_mlp=c.d_mlp, horizon=c.window_size if c.use_local_attn else None, vocab_size=None if vectors else c.d_vocab))
    s, D = tl.state_dict(), c.d_model
    sd = {"pos_embed": s["pos_embed.W_pos"], "embed.weight": s["embed.W_E"].T if vectors else s["embed.W_E"],
          "ln_final.weight": s["ln_final.w"], "ln_final.bias": s["ln_final.b"],
          "unembed.weight": s["unembed.W_U"].T, "unembed.bias": s["unembed.b_U"]}
    if vectors:
        sd["embed.bias"] = torch.zeros(D)
    for l in range(c.n_layers):
        p, q = f"blocks.{l}.", f"blocks.{l}.attn."
        sd[q + "W_qkv.weight"] = torch.cat([s[q + f"W_{n}"].transpose(1, 2).reshape(D, D) for n in "QKV"])
        sd[q + "W_qkv.bias"] = torch.cat([s[q + f"b_{n}"].reshape(D) for n in "QKV"])
        sd[q + "W_o.weight"], sd[q + "W_o.bias"] = s[q + "W_O"].reshape(D, D).T, s[q + "b_O"]
        for ln in ("ln1", "ln2"):
            sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"] = s[p + f"{ln}.w"], s[p + f"{ln}.b"]
        sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = s[p + "mlp.W_in"].T, s[p + "mlp.b_in"]
        sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"] = s[p + "mlp.W_out"].T, s[p + "mlp.b_out"]
    net.load_state_dict(sd)
    mapped = lens_state_dict(net)  # the inverse really inverts the export's map
    for k, v in tl.named_parameters():
        torch.testing.assert_close(mapped[k], v, atol=0, rtol=0, msg=k)
    return net.eval()


def random_core(**kwargs) -> Transformer:
    """A loader: our core with random_lens_model's weights."""
    return core_of(random_lens_model(**kwargs))


def _config(tmp_path, data: dict):
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "ignored.by.measure"}, "data": data}))
    return str(path)


def _measure(tmp_path, config, loader, args, name):
    out = tmp_path / f"{name}.json"
    argv = ["measure", "--config", config, "--model-loader", loader, "--out", str(out)]
    assert main(argv + [a for kv in args for a in ("--loader-arg", kv)]) == 0
    return json.loads(out.read_text())["metrics"]


def _assert_same_signatures(theirs: dict, ours: dict):
    """Equal everywhere but the random controls, which each model draws by its own init scheme."""
    assert set(theirs) == set(ours)
    own = [k for k in ours if not k.endswith(("_control", "_selectivity"))]
    assert {"test/future_info_last", "test/reach", "test/iteration"} <= set(own)
    for k in own:
        assert theirs[k] == pytest.approx(ours[k], rel=1e-4, abs=1e-5), k


@pytest.mark.parametrize("horizon", [None, 4], ids=["full", "horizon4"])
def test_measure_on_a_vector_input_hooked_transformer_equals_our_core(tmp_path, horizon):
    config = _config(tmp_path, {"class_path": "constrained.tasks.icl_regression.IclRegression",
                                "init_args": {"d": 3, "n_points": 6, "n_test": 64}})
    args = ["d_vocab=3", "d_vocab_out=1", "n_ctx=12", "vectors=true", f"horizon={'null' if horizon is None else 4}"]
    theirs = _measure(tmp_path, config, "tests.test_lens:random_lens_model", args, "theirs")
    ours = _measure(tmp_path, config, "tests.test_lens:random_core", args, "ours")
    assert "test/probe_w_hat_last_selectivity" in theirs
    _assert_same_signatures(theirs, ours)


def test_measure_on_a_token_hooked_transformer_equals_our_core(tmp_path, capsys):
    config = _config(tmp_path, {"class_path": "tests.test_lens.CopyTokens", "init_args": {"T": 10}})
    args = ["d_vocab=8", "d_vocab_out=8", "n_ctx=10"]
    theirs = _measure(tmp_path, config, "tests.test_lens:random_lens_model", args, "theirs")
    assert "test/reach" in capsys.readouterr().out  # printed, one metric a line
    ours = _measure(tmp_path, config, "tests.test_lens:random_core", args, "ours")
    assert "test/probe_even_lag2_last" in theirs  # the classifier probe (AUROC)
    _assert_same_signatures(theirs, ours)


def test_measure_of_an_export_equals_test_time_signatures_of_the_checkpoint(tmp_path):
    model = _perturbed(SequenceModel(d_model=16, n_layers=2, d_in=3, d_out=1, n_ctx=12, horizon=5))
    ckpt, out = save_checkpoint(model, tmp_path / "m.ckpt"), tmp_path / "lens"
    assert main(["export", str(ckpt), str(out)]) == 0
    config = _config(tmp_path, {"class_path": "constrained.tasks.icl_regression.IclRegression",
                                "init_args": {"d": 3, "n_points": 6, "n_test": 64}})
    expected = signatures.test_time(model.net, task_from_configs([config]))  # what `constrained test` logs
    exported = _measure(tmp_path, config, "constrained.models.lens:load", [f"path={out}"], "export")
    assert set(exported) == set(expected)
    for k in expected:  # the export's random control is our core's init, mapped: the controls agree too
        assert exported[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-5), k
    # the checkpoint itself through the same command: the same numbers, the random control included
    assert _measure(tmp_path, config, "constrained.models.lens:checkpoint_core", [f"path={ckpt}"], "core") == expected


def test_from_pretrained_loader_asks_transformer_lens_for_the_named_model(tmp_path, monkeypatch):
    asked = {}

    def fake(cls, name, **kwargs):  # no weights can be downloaded here: a local model stands in for the hub's
        asked.update(name=name, **kwargs)
        return random_lens_model(d_vocab=16, d_vocab_out=16, n_ctx=10)

    monkeypatch.setattr(HookedTransformer, "from_pretrained", classmethod(fake))
    config = _config(tmp_path, {"class_path": "tests.test_lens.CopyTokens", "init_args": {"T": 10}})
    metrics = _measure(tmp_path, config, "constrained.models.lens:from_pretrained", ["name=gpt2", "fold_ln=false"],
                       "pretrained")
    assert asked == {"name": "gpt2", "device": "cpu", "fold_ln": False}
    assert "test/future_info_last" in metrics


def test_measure_refuses_a_model_that_does_not_take_the_task_inputs(tmp_path, capsys):
    config = _config(tmp_path, {"class_path": "constrained.tasks.icl_regression.IclRegression",
                                "init_args": {"d": 3, "n_points": 6, "n_test": 64}})
    argv = ["measure", "--config", config, "--model-loader", "tests.test_lens:random_lens_model",
            "--loader-arg", "d_vocab=3", "--loader-arg", "d_vocab_out=1", "--loader-arg", "n_ctx=12"]
    assert main(argv) == 2  # a token model given the regression task's float vectors
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not take IclRegression's inputs" in err, err
    assert main(argv[:3] + ["--model-loader", "tests.test_lens"]) == 2
    assert "expected MODULE:FUNCTION" in capsys.readouterr().err


def test_random_control_of_a_hooked_transformer_is_fresh_deterministic_and_leaves_global_rng():
    from constrained.measure.probes import random_control

    model = random_lens_model(d_vocab=8, d_vocab_out=8, n_ctx=10)
    state = torch.random.get_rng_state()
    a, b, c = random_control(model, 7), random_control(model, 7), random_control(model, 8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert isinstance(a, HookedTransformer) and a.cfg.d_vocab == 8 and not a.W_E.requires_grad
    assert torch.equal(a.W_Q, b.W_Q) and not torch.equal(a.W_Q, c.W_Q) and not torch.equal(a.W_Q, model.W_Q)
