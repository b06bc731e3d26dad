"""Data generators shared by the storage engine tests."""

from __future__ import annotations

import numpy as np


def embedding_like(count: int, dim: int, rng: np.random.Generator, topics: int = 60) -> np.ndarray:
    """Unit vectors clustered like text embeddings: topics of very unequal size around a shared
    direction, each spread along a few directions, not isotropic noise."""
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    centres = rng.standard_normal((topics, dim))
    centres = centres / np.linalg.norm(centres, axis=1, keepdims=True) + 0.5 * shared
    weights = 1.0 / np.arange(1, topics + 1) ** 0.8
    topic = rng.choice(topics, size=count, p=weights / weights.sum())
    rank = min(16, dim)
    spread = 0.5 / np.sqrt(np.arange(1, rank + 1))
    out = np.empty((count, dim), dtype=np.float32)
    for t in range(topics):
        members = np.flatnonzero(topic == t)
        if not len(members):
            continue
        basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0]
        along = (rng.standard_normal((len(members), rank)) * spread) @ basis.T
        noise = rng.standard_normal((len(members), dim)) * (0.3 / np.sqrt(dim))
        out[members] = centres[t] + along + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
