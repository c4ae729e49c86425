"""The objective spec proves a correct objective, refutes one that prefers the corner (so it cannot
pass vacuously) with a counterexample the torch module confirms, answers unknown when out of time;
`constrained verify` reads modular checkpoints and names the problem with any other file."""

import json
import random
from fractions import Fraction

import pytest
import torch

from constrained.cli import main
from constrained.models.objective import Objective
from constrained.proofs import objective as spec
from constrained.proofs.result import PROVED, REFUTED, UNKNOWN
from constrained.tasks.maze.grid import carve, reward

pytestmark = pytest.mark.proof

M = 3
G = 2 * M + 1
MARGIN_CLAIM = f"cheese beats every other square by {spec.DEFAULT_MARGIN}"


def set_weights(objective: Objective, first_rows, first_bias, out_scale: float, out_bias: float) -> Objective:
    """First layer: the four given neurons (the rest zero); later hidden layers pass those four on
    unchanged (they are ≥ 0, so ReLU keeps them); output: out_bias − out_scale · their sum."""
    linears = [x for x in objective.layers if isinstance(x, torch.nn.Linear)]
    with torch.no_grad():
        for lin in linears:
            lin.weight.zero_()
            lin.bias.zero_()
        linears[0].weight[:4] = torch.tensor(first_rows, dtype=torch.float32)
        linears[0].bias[:4] = torch.tensor(first_bias, dtype=torch.float32)
        for lin in linears[1:-1]:
            lin.weight[:4, :4] = torch.eye(4)
        linears[-1].weight[0, :4] = -out_scale
        linears[-1].bias[0] = out_bias
    return objective.eval()


# |x| = relu(x) + relu(−x): the four neurons are the signed row and column differences
SIGNED_DIFFERENCES = [[1, 0, -1, 0], [-1, 0, 1, 0], [0, 1, 0, -1], [0, -1, 0, 1]]


def manhattan_objective(hidden=(4,), out_scale=(G - 1) / 2) -> Objective:
    """score = 1 − d/2, d the L1 distance (in squares) from the agent to the cheese: a correct objective."""
    return set_weights(Objective(G, list(hidden)), SIGNED_DIFFERENCES, [0, 0, 0, 0], out_scale, 1.0)


def corner_objective(hidden=(4,)) -> Objective:
    """score = 1 − d/2, d the L1 distance from the agent to the top-right corner: ignores the cheese."""
    r0, c0 = (x / (G - 1) for x in spec.corner(M))
    rows = [[1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, -1, 0, 0]]
    return set_weights(Objective(G, list(hidden)), rows, [-r0, r0, -c0, c0], (G - 1) / 2, 1.0)


def trained_objective(seed: int = 0, steps: int = 500) -> Objective:
    """A 16-16 objective fitted (full batch, Adam) to the declared reward over the whole domain, the
    distance being the open-grid L1 distance (the objective sees no walls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: worker threads only add contention on a busy host
    try:
        return _fit(seed, steps)
    finally:
        torch.set_num_threads(threads)


def _fit(seed: int, steps: int) -> Objective:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        objective = Objective(G, [16, 16])
        pairs = [(p, q) for p in spec.domain(M) for q in spec.domain(M)]
        agent, cheese = torch.tensor([p for p, _ in pairs]), torch.tensor([q for _, q in pairs])
        labels = reward((agent - cheese).abs().sum(-1), M)
        opt = torch.optim.Adam(objective.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = ((objective(agent, cheese) - labels) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return objective.eval()


def score(objective: Objective, agent, cheese) -> float:
    with torch.no_grad():
        return float(objective(torch.tensor([agent]), torch.tensor([cheese]))[0])


def assert_proved(result):
    assert result.status == PROVED, (result.claim, result.counterexample, result.reason)
    assert len(result.claims) == 3 and set(result.claims.values()) == {PROVED}


# ---------------------------------------------------------------------------------------------- domain


def test_domain_is_every_square_free_in_some_maze():
    rng = random.Random(0)
    free = set()
    for _ in range(200):
        wall = carve(M, [rng.random() for _ in range(M * M)])
        free |= {(r, c) for r in range(G) for c in range(G) if not wall[r][c]}
    assert free == set(spec.domain(M))
    assert len(spec.domain(M)) == M * M + 2 * M * (M - 1)


def test_forward_on_fractions_is_the_module():
    objective = trained_objective(steps=20)
    layers = spec.exact_layers(objective)
    for agent, cheese in [((1, 1), (5, 5)), ((1, 5), (3, 2))]:
        features = [Fraction(x, G - 1) for x in (*agent, *cheese)]
        exact = spec.forward(layers, features, lambda v: max(v, 0))
        assert float(exact) == pytest.approx(score(objective, agent, cheese), abs=1e-5)


# ----------------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize("hidden", [(4,), (6, 5)])
def test_correct_objective_is_proved(hidden):
    objective = manhattan_objective(hidden)
    assert score(objective, (3, 3), (3, 3)) == 1.0 and score(objective, (3, 4), (3, 3)) == pytest.approx(0.5)
    assert_proved(spec.spec(objective))


def test_objective_that_prefers_the_corner_is_refuted_with_a_real_counterexample():
    objective = corner_objective((4, 4))
    result = spec.spec(objective)
    assert result.status == REFUTED and result.claim == MARGIN_CLAIM
    assert result.claims[f"bounded by {spec.DEFAULT_BOUND}"] == PROVED
    cex = result.counterexample
    agent, cheese = (cex["agent_row"], cex["agent_col"]), (cex["cheese_row"], cex["cheese_col"])
    assert agent == spec.corner(M) and cheese != spec.corner(M)  # the worst pair: the proxy goal wins
    assert {agent, cheese} <= set(spec.domain(M))
    at_agent, at_cheese = score(objective, agent, cheese), score(objective, cheese, cheese)
    assert at_agent > at_cheese  # real on the torch module, not only in the encoding
    assert cex["score_at_agent"] == pytest.approx(at_agent) and cex["score_at_cheese"] == pytest.approx(at_cheese)
    picture = spec.render(cex, M).splitlines()
    assert len(picture[0]) == G and picture[agent[0]][agent[1]] == "A" and picture[cheese[0]][cheese[1]] == "C"
    assert picture[0] == "#" * G and picture[2][2] == "#" and picture[1][2] == "."


def test_unbounded_objective_is_refuted_on_the_bound_only():
    objective = manhattan_objective(out_scale=10 * (G - 1) / 2)  # 1 − 5d: the far corner scores −39
    result = spec.spec(objective)
    assert result.status == REFUTED and result.claim == f"bounded by {spec.DEFAULT_BOUND}"
    assert result.claims[MARGIN_CLAIM] == PROVED
    assert result.counterexample["score_at_agent"] == pytest.approx(1 - 5 * 8)


def test_encoding_that_is_not_the_module_is_refuted():
    class Shifted(Objective):
        def forward(self, agent, cheese):
            return super().forward(agent, cheese) + 0.1  # computes something the layers do not say

    objective = Shifted(G, [4])
    objective.load_state_dict(manhattan_objective().state_dict())
    result = spec.spec(objective.eval())
    assert result.status == REFUTED and result.claim == "encoding is the module"
    assert result.counterexample["module"] - result.counterexample["encoding"] == pytest.approx(0.1)


def test_trained_objective_is_proved():
    assert_proved(spec.spec(trained_objective()))


def test_too_little_time_is_unknown_not_proved():
    result = spec.spec(manhattan_objective(), timeout_ms=1)
    assert result.status == UNKNOWN and "timeout" in result.reason
    assert set(result.claims.values()) == {UNKNOWN}


# --------------------------------------------------------------------------------------------- verify


def save_checkpoint(path, objective: Objective, data="any_state", **overrides):
    """A checkpoint in the modular model's format: a policy weight beside the objective's, hparams."""
    state = {"policy.core.weight": torch.zeros(2, 2),
             **{f"objective.{k}": v for k, v in objective.state_dict().items()}}
    hparams = {"objective_hidden": objective.hidden, "objective_max_params": 512, "objective_data": data,
               "n_ctx": G * G + 1, **overrides}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


def test_verify_proves_a_correct_checkpoint(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "good.ckpt", manhattan_objective((4, 4)))
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "objective" in out and "proved" in out and "any_state" in out


def test_verify_refutes_the_corner_objective_and_draws_the_maze(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "corner.ckpt", corner_objective(), data="policy_distribution")
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "refuted" in out and "score at agent" in out and "#" * G in out
    assert main(["verify", str(path), "--json"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == REFUTED and record["objective_data"] == "policy_distribution"
    assert (record["counterexample"]["agent_row"], record["counterexample"]["agent_col"]) == spec.corner(M)


def test_verify_flags_margin_and_timeout(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "good.ckpt", manhattan_objective())
    assert main(["verify", str(path), "--margin", "1/2"]) == 0  # neighbours score exactly 1/2 below
    assert main(["verify", str(path), "--margin", "0.51"]) == 1
    capsys.readouterr()
    assert main(["verify", str(path), "--timeout-ms", "1", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == UNKNOWN


class Opaque:
    """An arbitrary Python object, which a safe (weights_only) load refuses."""


def bad_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path / "good.ckpt", manhattan_objective())
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"core.weight": torch.zeros(2)}, "hyper_parameters": {"n_ctx": 50}}, plain)
    no_hparams = tmp_path / "no_hparams.ckpt"
    torch.save({"state_dict": {f"objective.{k}": v for k, v in manhattan_objective().state_dict().items()}},
               no_hparams)
    opaque = tmp_path / "opaque.ckpt"
    torch.save({"state_dict": {}, "loops": Opaque()}, opaque)
    wrong_shape = save_checkpoint(tmp_path / "wrong_shape.ckpt", manhattan_objective(), objective_hidden=[8])
    return {
        tmp_path / "missing.ckpt": "not found",
        truncated: "not a torch checkpoint, or truncated",
        garbage: "not a torch checkpoint, or truncated",
        opaque: "that a safe load refuses; only tensors and plain data are read",
        plain: "not a modular model checkpoint (no objective module)",
        no_hparams: "lacks hyper_parameters ['objective_hidden', 'objective_max_params', 'n_ctx']",
        wrong_shape: "does not match its hyper_parameters",
    }


def test_verify_names_the_problem_with_a_bad_checkpoint(tmp_path, capsys):
    for path, problem in bad_checkpoints(tmp_path).items():
        assert main(["verify", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert problem in err and str(path) in err, err
