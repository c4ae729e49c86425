"""eval_mode: eval inside the block, the network's own mode back after it, also when the block raises."""

import pytest
from torch import nn

from constrained.common.eval_mode import eval_mode


@pytest.mark.parametrize("training", [True, False])
def test_eval_inside_and_the_mode_it_was_in_after(training):
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train(training)
    with eval_mode(net) as inside:
        assert inside is net and not net.training and not net[1].training
    assert net.training == training and net[1].training == training


def test_the_mode_comes_back_when_the_block_raises():
    net = nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("a measurement failed")
    assert net.training
