"""Seeds and the data order of the training loop: nothing depends on how many steps this process has run.

* Data order: the sample stream is the concatenation of per-epoch permutations, epoch ``e`` using
  ``randperm(len(dataset))`` from a generator seeded with ``derive_seed(seed, "data", e)``.
* :class:`LoopState`: the loop's only checkpointed state, the step counter (with the seed and the
  data scheme it was written under).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from medsynth.seeds import derive_seed

__all__ = ["DATA_SCHEME", "LoopState", "derive_seed", "stream_indices"]

DATA_SCHEME = "concat-epoch-permutations/v1"


class LoopState:
    """The loop's checkpointed state (registered with ``accelerator.register_for_checkpointing``)."""

    def __init__(self, seed: int):
        self.step = 0
        self.seed = int(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "data_scheme": DATA_SCHEME}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"checkpoint was written with seed {state['seed']}, this run uses {self.seed}")
        if state.get("data_scheme", DATA_SCHEME) != DATA_SCHEME:
            raise ValueError(f"checkpoint data scheme {state.get('data_scheme')!r} != {DATA_SCHEME!r}")
        self.step = int(state["step"])


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, "data", epoch))
    return torch.randperm(n, generator=g)


def stream_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Dataset indices at positions ``[start, start + count)`` of the epoch-permutation stream."""
    if n < 1:
        raise ValueError("empty dataset")
    out: list[int] = []
    perms: dict[int, torch.Tensor] = {}
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = _epoch_permutation(n, seed, epoch)
        out.append(int(perms[epoch][i]))
    return out
