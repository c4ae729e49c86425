"""Myopic descent (Wu, Morris & Levine 2024, "Do language models plan for future tokens?"): the loss at position t
trains the model only through the computation at t, never through what was computed at s < t for later use. Both
forms read the same forward as plain attention; they differ in where the gradient from later positions is cut.

- "kv", the strict form: the keys and values a position reads from s < t are constants. The loss at t sends no
  gradient into them, so neither into the residual stream at s nor into ln1 nor into the key and value
  projections through s. It is the gradient of the untied-copies objective (each position its own parameter copy
  θ_t, gradients summed), the definition in the paper's text.
- "input", the form of the paper's public training code (its Pythia runs: `from_kv=False`): the attention block's
  input (after ln1) at s < t is a constant, and the keys and values read from it are recomputed with the live
  projections. Nothing below the attention input learns from later losses, but the key and value projections
  (weights and biases) do learn, through every position s < t, from the loss at t.

`myopic_gradient` takes "kv", "input", or a bool: true is the strict form (the meaning it always had), false off.
"""

from __future__ import annotations

FORMS = ("kv", "input")


def myopic_form(value) -> str | None:
    """None (off), "kv" or "input" from a config value; ValueError naming the allowed values."""
    if value is None or value is False:
        return None
    if value is True:
        return "kv"
    if isinstance(value, str) and value in FORMS:
        return value
    raise ValueError(f"myopic_gradient must be false, true (= 'kv'), 'kv' or 'input', got {value!r}")
