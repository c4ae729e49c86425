"""z3 specifications of small components (installed as constrained.proofs)."""
