"""constrained: train transformers under architectural constraints against mesa-optimization,
and measure whether they work."""

from constrained.icl_regression import IclRegression
from constrained.maze import Maze
from constrained.modular import ModularModel
from constrained.precache import Precache
from constrained.sequence_model import SequenceModel
from constrained.transformer import Transformer

__all__ = ["IclRegression", "Maze", "ModularModel", "Precache", "SequenceModel", "Transformer"]
