"""A network in eval mode for a measurement, and back in the mode it was in afterwards: a probe or a rollout run in
the middle of training must not leave dropout or LayerNorm statistics switched for the steps that follow."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def eval_mode(net):
    """`net` in eval mode inside the block; its own mode restored on leaving it, also when the block raises."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)
