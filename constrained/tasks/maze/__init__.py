"""Cheese in the corner: maze geometry, the task, rollouts, its report section and the verify command."""

from constrained.tasks.maze.task import Maze

__all__ = ["Maze"]
