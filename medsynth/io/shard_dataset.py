"""A training set read on demand from its shards: the index in memory, the tensors on disk.

:class:`ShardDataset` is a map-style dataset for :func:`medsynth.train.train` (``len()`` and
``get_batch(indices) -> {"image": float32 tensor}``) over the samples of training-set shards
(:mod:`medsynth.io.trainsets`) that a ``select`` keeps, in :func:`~medsynth.io.trainsets.load_slices`'s order
(shards in path order, rows in index order). It holds the index and, per item, its shard, sample and channel;
a batch reads only its items (``safe_open(...).get_slice(...)``: consecutive images of a shard in one read, a
mask item's one channel; the files kept open) and converts them as :func:`~medsynth.io.trainsets.load_shard`
does: images float32 in [-1, 1], masks ``binary - 0.5``. Item ``i`` is, bit for bit, row ``i`` of the
in-memory array ``load_slices(shards, select)[1]`` (with ``include_masks``: that array followed by every
non-empty mask channel of the samples as a single-channel image, sample-major and channel-minor, the fit set
of :func:`medsynth.vae.stage.run_vae`; the non-empty channels are found by one streamed pass over the masks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsynth.io.trainsets import read_stored_rows, select_rows, shard_indexes, to_condition_values

__all__ = ["ShardDataset"]

#: bytes one streamed read (the mask pass, :meth:`ShardDataset.blocks`) holds at most, unless one sample is larger
READ_BYTES = 64 * 2**20
OPEN_FILES = 32  # safetensors handles kept open (least recently used closed first)


class ShardDataset(torch.utils.data.Dataset):
    """The samples of ``shards`` that ``select`` keeps (:func:`~medsynth.io.trainsets.select_rows`), read on
    demand (module docstring); ``include_masks`` appends their non-empty mask channels as images."""

    def __init__(self, shards: Sequence[str | Path], select: Mapping[str, Sequence] | None = None,
                 include_masks: bool = False, read_bytes: int = READ_BYTES):
        self.read_bytes = int(read_bytes)
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self.paths: list[str] = []
        parts, names = [], None
        for path, index, names in shard_indexes(shards):  # every shard's index, channels checked alike
            index = index.iloc[select_rows(index, select)]
            if len(index):
                parts.append(index.reset_index(drop=True).assign(shard=Path(path).stem, _file=len(self.paths)))
                self.paths.append(path)
        if not parts:
            kept = f" kept by select {dict(select)}" if select else ""
            raise ValueError(f"no slices in the training-set shards{kept}")
        frame = pd.concat(parts, ignore_index=True)
        self.condition_names: list[str] = list(names or [])
        self._file = frame.pop("_file").to_numpy(np.int64)
        self._sample = frame["sample"].to_numpy(np.int64)
        self._channel = np.full(len(frame), -1, np.int64)  # -1: the image; c >= 0: mask channel c
        self.index = frame  #: the samples' index rows (load_slices' frame)
        self.n_images = len(frame)  #: the first items are the samples' images
        shapes = {tuple(self._file_handle(p).get_slice("image").get_shape()[1:]) for p in self.paths}
        if len(shapes) != 1:
            raise ValueError(f"training-set shards of different image shapes {sorted(shapes)}")
        self.item_shape: tuple[int, ...] = shapes.pop()
        if include_masks:
            if self.item_shape[0] != 1:
                raise ValueError(f"include_masks needs single-channel images, got {self.item_shape}")
            self._add_mask_items()

    # ------------------------------------------------------------------------------------------ reading

    def _file_handle(self, path: str) -> Any:
        from safetensors import safe_open

        handle = self._handles.pop(path, None)
        if handle is None:
            handle = safe_open(path, framework="np")
            while len(self._handles) >= OPEN_FILES:
                self._handles.popitem(last=False)
        self._handles[path] = handle
        return handle

    def _read(self, file: int, key: str, samples: np.ndarray) -> np.ndarray:
        """Stored ``key`` rows ``samples`` (any order, repeats allowed) of shard ``file``, as stored (one read
        per run of consecutive samples, :func:`~medsynth.io.trainsets.read_stored_rows`)."""
        return read_stored_rows(self._file_handle(self.paths[file]).get_slice(key), samples)

    def _rows_per_read(self, key: str) -> int:
        """Samples of ``key`` one streamed read takes (:attr:`read_bytes`; at least one)."""
        view = self._file_handle(self.paths[0]).get_slice(key)
        bits = "".join(c for c in view.get_dtype() if c.isdigit())  # "U8", "F16", "BOOL"
        per_sample = int(np.prod(view.get_shape()[1:], dtype=np.int64)) * max(int(bits or 8) // 8, 1)
        return max(1, self.read_bytes // max(per_sample, 1))

    def _add_mask_items(self) -> None:
        """One streamed pass over the samples' masks: the non-empty (sample, channel) pairs become items."""
        files, samples, channels = [self._file], [self._sample], [self._channel]
        rows = self._rows_per_read("masks")
        for start in range(0, self.n_images, rows):
            stop = min(start + rows, self.n_images)
            for file in np.unique(self._file[start:stop]):
                where = start + np.flatnonzero(self._file[start:stop] == file)
                masks = self._read(int(file), "masks", self._sample[where])
                flat = masks.reshape(len(where) * masks.shape[1], -1)
                if np.issubdtype(flat.dtype, np.integer) or flat.dtype == np.bool_:
                    full = (flat > 0).any(axis=1)  # binary - 0.5 > 0, exactly, without the float copy
                else:
                    full = (to_condition_values(flat) > 0).any(axis=1)
                sample_pos, channel = np.divmod(np.flatnonzero(full), masks.shape[1])
                files.append(self._file[where[sample_pos]])
                samples.append(self._sample[where[sample_pos]])
                channels.append(channel.astype(np.int64))
        self._file, self._sample = np.concatenate(files), np.concatenate(samples)
        self._channel = np.concatenate(channels)

    # ------------------------------------------------------------------------------------------ dataset

    def __len__(self) -> int:
        return len(self._file)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.get_batch([i])["image"][0]}

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """``{"image": (len(indices), *item_shape) float32}``: the items at ``indices`` (order kept, repeats
        allowed), each shard read once."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} items")
        idx = idx % max(len(self), 1)
        out = np.empty((len(idx), *self.item_shape), np.float32)
        for file in np.unique(self._file[idx]):
            here = self._file[idx] == file
            images = here & (self._channel[idx] < 0)
            if images.any():
                out[images] = self._read(int(file), "image", self._sample[idx[images]]).astype(np.float32)
            masks = here & (self._channel[idx] >= 0)
            if masks.any():
                view = self._file_handle(self.paths[int(file)]).get_slice("masks")
                pairs = np.stack([self._sample[idx[masks]], self._channel[idx[masks]]], axis=1)
                unique, where = np.unique(pairs, axis=0, return_inverse=True)
                stored = np.concatenate([view[s:s + 1, c:c + 1] for s, c in unique.tolist()])  # one channel per read
                out[masks] = to_condition_values(stored[where.reshape(-1)])
        return {"image": torch.from_numpy(out)}

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
        """Items ``start:stop`` in order, as consecutive float32 blocks of at most :attr:`read_bytes` (one item
        when it is larger): e.g. the fit set's bytes for a digest, or the images' parts for latent statistics."""
        stop = len(self) if stop is None else min(int(stop), len(self))
        per_item = int(np.prod(self.item_shape, dtype=np.int64)) * 4
        rows = max(1, self.read_bytes // per_item)
        for a in range(int(start), stop, rows):
            yield self.get_batch(np.arange(a, min(a + rows, stop)))["image"]

    def close(self) -> None:
        """Close the open shard files (reopened on the next read)."""
        self._handles.clear()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": OrderedDict()}  # file handles are not pickled (worker processes)
