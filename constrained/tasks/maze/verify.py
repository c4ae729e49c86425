"""`constrained verify CHECKPOINT`: the maze modular model's objective module checked exactly (proofs/objective.py)
over every (agent, cheese) pair of squares, and with a backdoor at every flag value (clean and each trigger): the
cheese scores above every other square by a margin, and every score is bounded."""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction


def verify_command(rest: list[str]) -> int:
    """`constrained verify CHECKPOINT`: the modular model's objective checked exactly against the declared property."""
    from constrained.proofs import objective as spec
    from constrained.proofs.result import table

    p = argparse.ArgumentParser(prog="constrained verify",
                                description="Check a modular model's objective module against the maze's declared "
                                            "property, exactly, over every (agent, cheese) pair of squares.")
    p.add_argument("checkpoint", help="a modular model's Lightning checkpoint (.ckpt)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--margin", type=Fraction, default=spec.DEFAULT_MARGIN,
                   help=f"how far the cheese must score above every other square (default {spec.DEFAULT_MARGIN})")
    p.add_argument("--bound", type=Fraction, default=spec.DEFAULT_BOUND,
                   help=f"largest |score| allowed anywhere (default {spec.DEFAULT_BOUND})")
    p.add_argument("--timeout-ms", type=int, default=spec.DEFAULT_TIMEOUT_MS,
                   help="time limit of the whole check; running out of it is a failure "
                        f"(default {spec.DEFAULT_TIMEOUT_MS})")
    a = p.parse_args(rest)
    try:
        objective, hparams = spec.load(a.checkpoint)
    except spec.CheckpointError as e:
        print(f"constrained verify: error: {e}", file=sys.stderr)
        return 2
    flags = hparams.get("objective_flags") if objective.flag else None
    result = spec.spec(objective, a.margin, a.bound, a.timeout_ms, flags)
    data = hparams.get("objective_data")
    if a.json:
        print(json.dumps({**result.to_dict(), "objective_data": data, "margin": str(a.margin), "bound": str(a.bound),
                          "flags": flags}, indent=2, ensure_ascii=False))
    else:
        print(f"{a.checkpoint}: objective trained on {data or 'unknown'} data, "
              f"grid {objective.grid_size}x{objective.grid_size}, hidden {objective.hidden}"
              + (f", flag values {', '.join(f'{f:g}' for f in flags)} (0 clean, the others triggers)" if flags else ""))
        print(table([result]))
        if result.status == "refuted":
            print(spec.render(result.counterexample, (objective.grid_size - 1) // 2))
    return 0 if result.proved else 1
