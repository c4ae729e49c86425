"""The ground floor: what several parts compute alike (the attention rule, the closed forms that the kernels and
the proofs share). It imports nothing of the project, so models, kernels and proofs all build on it."""
