"""The unigram and bigram references: what byte frequencies alone, and the previous byte alone, predict.

Both are counted on the train split and smoothed by adding one to every count (no byte gets probability 0):
    unigram  P(b)     = (c(b) + 1) / (N + 256)
    bigram   P(b | a) = (c(a, b) + 1) / (Σ_b' c(a, b') + 256)
where c(a, b) counts b right after a. They are scored on the same bytes as the model (each test window's
targets, the bigram given the byte before each), so a model's bits per byte reads directly against them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

VOCAB = 256
CHUNK = 1 << 22  # bytes counted at a time: constant memory for any split size


def count_bytes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unigram (256,), bigram (256, 256)) int64 counts of a uint8 array; bigram[a, b] counts b right after a."""
    unigram = np.zeros(VOCAB, dtype=np.int64)
    bigram = np.zeros(VOCAB * VOCAB, dtype=np.int64)
    for start in range(0, len(data), CHUNK):
        chunk = np.asarray(data[start:start + CHUNK + 1], dtype=np.int64)  # one byte of overlap: the pair across
        unigram += np.bincount(chunk[:CHUNK], minlength=VOCAB)
        bigram += np.bincount(chunk[:-1] * VOCAB + chunk[1:], minlength=VOCAB * VOCAB)
    return unigram, bigram.reshape(VOCAB, VOCAB)


def unigram_log2p(unigram: np.ndarray) -> torch.Tensor:
    """log2 P(b), add-one smoothed: (256,)."""
    c = torch.as_tensor(unigram, dtype=torch.float64)
    return torch.log2((c + 1) / (c.sum() + VOCAB))


def bigram_log2p(bigram: np.ndarray) -> torch.Tensor:
    """log2 P(b | a), add-one smoothed: (256, 256), row a."""
    c = torch.as_tensor(bigram, dtype=torch.float64)
    return torch.log2((c + 1) / (c.sum(1, keepdim=True) + VOCAB))


def reference_bpb(unigram: np.ndarray, bigram: np.ndarray, inputs: torch.Tensor, targets: torch.Tensor,
                  mask: torch.Tensor | None = None) -> dict[str, float]:
    """Bits per byte of the unigram and the bigram on the targets (at mask), the bigram given each position's
    input byte (the byte before its target)."""
    if mask is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    prev, nxt = inputs[mask].long(), targets[mask].long()
    return {"unigram_bpb": -unigram_log2p(unigram)[nxt].mean().item(),
            "bigram_bpb": -bigram_log2p(bigram)[prev, nxt].mean().item()}


def bits(nats: float) -> float:
    return nats / math.log(2)
