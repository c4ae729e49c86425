"""What a specification answers, and the one place a z3 query is asked.

A spec is a list of named claims. Each claim is proved (z3 finds no counterexample), refuted (z3
finds one, reported as named values) or unknown (timeout, the solver gave up, or assumptions
that no assignment meets). Unknown is a failure, never a pass: a spec is proved only when every
one of its claims is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import z3

PROVED, REFUTED, UNKNOWN = "proved", "refuted", "unknown"
DEFAULT_TIMEOUT_MS = 10_000


@dataclass
class Result:
    """One spec's answer. claims: claim name -> status, in the order asked; claim, counterexample
    and reason describe the first refuted claim (else the first unknown one)."""

    spec: str
    status: str
    claims: dict[str, str] = field(default_factory=dict)
    claim: str = ""
    counterexample: dict[str, object] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0

    @property
    def proved(self) -> bool:
        return self.status == PROVED

    def to_dict(self) -> dict:
        cex = {k: (str(v) if isinstance(v, Fraction) else v) for k, v in self.counterexample.items()}
        return {"spec": self.spec, "status": self.status, "seconds": round(self.seconds, 3),
                "claims": dict(self.claims), "claim": self.claim, "counterexample": cex, "reason": self.reason}


@dataclass
class Claim:
    """One answered claim: status, the counterexample when refuted, the solver's reason when unknown."""

    name: str
    status: str
    counterexample: dict[str, object] = field(default_factory=dict)
    reason: str = ""


def check(name: str, claim, given=(), named: dict | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Claim:
    """Ask z3 whether `claim` holds for every assignment satisfying `given`.

    named: label -> z3 term, the values a counterexample is reported by. The timeout bounds each
    query alone; running out of it (or z3 giving up) answers unknown. Assumptions with no model
    would prove anything, so they answer unknown too ("vacuous"): a spec bug, never a pass.
    """
    if given:
        solver = _solver(given, timeout_ms)  # a fresh solver each time: incremental ones are slower
        possible = solver.check()
        if possible != z3.sat:
            reason = "vacuous: the assumptions have no model" if possible == z3.unsat else solver.reason_unknown()
            return Claim(name, UNKNOWN, reason=reason)
    solver = _solver([*given, z3.Not(claim)], timeout_ms)
    answer = solver.check()
    if answer == z3.unsat:
        return Claim(name, PROVED)
    if answer == z3.sat:
        model = solver.model()
        cex = {label: _value(model.eval(term, model_completion=True)) for label, term in (named or {}).items()}
        return Claim(name, REFUTED, cex)
    return Claim(name, UNKNOWN, reason=solver.reason_unknown())


def _solver(facts, timeout_ms: int) -> z3.Solver:
    solver = z3.Solver()
    solver.set("timeout", max(1, int(timeout_ms)))
    solver.add(*facts)
    return solver


def _value(v):
    """A z3 model value as a Python value: int, Fraction (exact), bool, or float (irrational)."""
    if z3.is_int_value(v):
        return v.as_long()
    if z3.is_rational_value(v):
        return Fraction(v.numerator_as_long(), v.denominator_as_long())
    if z3.is_true(v) or z3.is_false(v):
        return z3.is_true(v)
    if z3.is_algebraic_value(v):
        approx = v.approx(20)
        return float(Fraction(approx.numerator_as_long(), approx.denominator_as_long()))
    return str(v)


def combine(spec: str, claims: list[Claim], started: float) -> Result:
    """A spec's result from its claims: refuted if any is, else unknown if any is, else proved."""
    statuses = {c.name: c.status for c in claims}
    for bad in (REFUTED, UNKNOWN):
        first = next((c for c in claims if c.status == bad), None)
        if first is not None:
            return Result(spec, bad, statuses, first.name, first.counterexample, first.reason,
                          time.perf_counter() - started)
    return Result(spec, PROVED, statuses, seconds=time.perf_counter() - started)


def table(results: list[Result]) -> str:
    """spec, result, seconds; under each failure, its claim and counterexample (or the solver's reason)."""
    lines = [f"{'spec':<14}{'result':<10}{'seconds':>8}"]
    for r in results:
        lines.append(f"{r.spec:<14}{r.status:<10}{r.seconds:>8.2f}")
        if not r.proved:
            why = ", ".join(f"{k}={v}" for k, v in r.counterexample.items()) or r.reason
            lines.append(f"  {r.claim}: {why}")
    return "\n".join(lines)
