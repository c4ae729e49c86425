"""Spec: the attention mask the model uses is causal, stays within the horizon, never empties a row.

The predicate checked is `constrained.common.mask.attends` itself, called on z3 terms (it is written with
comparisons and &, |, ~ only, so the same function builds the torch mask). For all integers
i, j ≥ 0 and horizons h ≥ 1 (unbounded: the facts are linear, so no size loop is needed):

- causal: attends(i, j, h) ⇒ j ≤ i
- within the horizon: attends(i, j, h) ⇒ i − j < h
- never an empty row: attends(i, i, h)
- no horizon is plain causal: attends(i, j) ⇔ j ≤ i
- exact: attends(i, j, h) ⇔ (j ≤ i ∧ i − j < h)

and with the query clause on (j_is_query a free Boolean, with or without a horizon):

- a query key is read only by itself: attends(i, j, h, q) ∧ q ⇒ i = j
- the clause only removes query keys: ¬q ⇒ (attends(i, j, h, q) ⇔ attends(i, j, h))
- never an empty row: attends(i, i, h, q)
"""

from __future__ import annotations

import time

import z3

from constrained.common.mask import attends as model_attends
from constrained.proofs.result import DEFAULT_TIMEOUT_MS, Result, check, combine

NAME = "mask"


def spec(timeout_ms: int = DEFAULT_TIMEOUT_MS, attends=model_attends) -> Result:
    """Prove the mask claims for `attends` (default: the model's); a broken copy can be passed."""
    started = time.perf_counter()
    i, j, h = z3.Ints("i j h")
    q = z3.Bool("j_is_query")
    given = [i >= 0, j >= 0, h >= 1]
    named = {"i": i, "j": j, "h": h}
    with_q = {**named, "j_is_query": q}
    claims = [
        ("causal", z3.Implies(attends(i, j, h), j <= i), named),
        ("within horizon", z3.Implies(attends(i, j, h), i - j < h), named),
        ("row never empty", attends(i, i, h), named),
        ("no horizon is causal", attends(i, j) == (j <= i), named),
        ("exact rule", attends(i, j, h) == z3.And(j <= i, i - j < h), named),
    ]
    for label, horizon in (("", None), (" with horizon", h)):
        claims += [
            ("query key read only by itself" + label, z3.Implies(attends(i, j, horizon, q) & q, i == j), with_q),
            ("query clause removes only query keys" + label,
             z3.Implies(~q, attends(i, j, horizon, q) == attends(i, j, horizon)), with_q),
            ("row never empty, query clause on" + label, attends(i, i, horizon, q), with_q),
        ]
    answers = [check(name, claim, given, vars_, timeout_ms) for name, claim, vars_ in claims]
    return combine(NAME, answers, started)
