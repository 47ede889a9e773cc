"""Map-style datasets for the training loop: in-memory tensors, e.g. a training-set shard.

The loop (:mod:`medsynth.train.loop`) only needs ``len(dataset)`` and either ``dataset.get_batch(indices)``
(fast path, used here) or ``dataset[i]`` returning a dict of tensors (collated with
``torch.utils.data.default_collate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medsynth.io.trainsets import load_shard

__all__ = ["TensorDictDataset", "load_slice_dataset"]


class TensorDictDataset(torch.utils.data.Dataset):
    """Samples ``{key: tensor[i]}`` from tensors (or numpy arrays) that share their first dimension."""

    def __init__(self, tensors: Mapping[str, torch.Tensor | np.ndarray]):
        self.tensors = {k: torch.as_tensor(v) for k, v in tensors.items()}
        sizes = {len(v) for v in self.tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"tensors differ in length: { {k: len(v) for k, v in self.tensors.items()} }")
        self._n = sizes.pop()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def get_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Stacked samples at ``indices`` (order kept)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}


def load_slice_dataset(tensors_path: str | Path, split: str | None = "train") -> TensorDictDataset:
    """A 2D/3D training shard (``image`` in [-1, 1], ``masks`` in [-0.5, 0.5]) as a dataset.

    ``split`` keeps the rows of the shard's index CSV (same stem, ``.csv``) with that split; ``None``
    keeps all samples.
    """
    data = load_shard(tensors_path)
    if split is not None:
        index = pd.read_csv(Path(tensors_path).with_suffix(".csv"))
        keep = index.loc[index["split"] == split, "sample"].to_numpy() if len(index) else np.zeros(0, int)
        data = {k: v[keep] for k, v in data.items()}
    return TensorDictDataset(data)
