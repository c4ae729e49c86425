"""Triton regularization kernels, each beside its PyTorch reference (installed as constrained.kernels)."""
