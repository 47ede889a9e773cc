"""Seed derivation, torch-free: the workflow derives the seeds of a model's replicates at DAG time."""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 63-bit seed for an independent stream named by ``keys`` (numpy ``SeedSequence`` hashing)."""
    words = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        if isinstance(k, str):
            words.extend(k.encode())
        else:
            words.append(int(k) & 0xFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
