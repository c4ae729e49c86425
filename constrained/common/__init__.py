"""The ground floor: what several parts compute alike (the attention rule, the closed forms that the kernels and
the proofs share, a network held in eval mode while it is measured) and the contracts two parts meet at (the
planning interface a task implements for the modular model). It imports nothing of the project, so every other part
can build on it."""
