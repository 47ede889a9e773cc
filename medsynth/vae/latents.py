"""Per-channel latent statistics and z-normalisation (MedSyn2 Sec. 3 "Mask Conditions and Tokens", Supp. 7.1).

MedSyn2: "all latents exhibit large bias and variance, due to the KL-divergence loss during training.
Thus ... we z-norm all latents with respect to each channel, and perform the reversed z-norm during
decoding." The statistics are taken over the posterior means ``encode(x).mean`` of a training set,
over every sample and latent position, one (mean, std) per latent channel. The training set may come in
parts (one array per shard, :func:`medsynth.io.trainsets.iter_slices`): :func:`image_batches` batches them
across the parts' boundaries exactly as one concatenated array would be batched, so the statistics of the
parts are bit for bit those of their concatenation, with one part (+ one batch) in memory at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsynth.vae.models import encode, model_device

__all__ = ["ImageParts", "LatentEncoder", "latent_size", "image_batches", "image_parts", "latent_statistics", "normalise_latents", "denormalise_latents",
           "save_latent_statistics", "load_latent_statistics"]


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)


#: images ``(N, C, *spatial)``: one array, or an iterable of arrays (parts, e.g. one per shard) read in turn
ImageParts = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


def image_parts(images: ImageParts) -> Iterable[torch.Tensor | np.ndarray]:
    """``images`` as parts: one array is the only part; anything else is iterated (lazily) as the parts."""
    return (images,) if isinstance(images, (torch.Tensor, np.ndarray)) else images


def image_batches(images: ImageParts, batch_size: int) -> Iterator[torch.Tensor]:
    """Float32 batches of ``batch_size`` images (the last one shorter) of the parts in turn, batched across the
    parts' boundaries: the batches of slicing the parts' concatenation, without concatenating them (a batch
    inside a part is a view of it; one that straddles a boundary is a copy of its pieces)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pending: list[torch.Tensor] = []  # the pieces of a batch begun in an earlier part
    n_pending = 0
    for part in image_parts(images):
        x, start = _as_tensor(part), 0
        if pending:
            start = min(batch_size - n_pending, len(x))
            pending.append(x[:start])
            n_pending += start
            if n_pending < batch_size:
                continue
            yield torch.cat(pending)
            pending, n_pending = [], 0
        full = start + (len(x) - start) // batch_size * batch_size
        for i in range(start, full, batch_size):
            yield x[i:i + batch_size]
        if full < len(x):
            pending, n_pending = [x[full:]], len(x) - full
    if pending:
        yield torch.cat(pending)


@torch.no_grad()
def latent_statistics(model: nn.Module, images: ImageParts, batch_size: int = 8) -> dict:
    """``{"mean": [C], "std": [C], "count": n}`` of posterior-mean latents per channel (population std).

    ``images``: one array or its parts in turn (:data:`ImageParts`; a generator is read once, a part at a
    time), batched by :func:`image_batches` (the same statistics, bit for bit, as of the parts'
    concatenation). Accumulates sums in float64 batch by batch; the model is put in eval mode and restored after.
    """
    was_training = model.training
    model.eval()
    total = sq = None
    count = 0
    try:
        for batch in image_batches(images, batch_size):
            mean, _ = encode(model, batch.to(model_device(model)))
            z = mean.double().transpose(0, 1).reshape(mean.shape[1], -1)  # (C, B * spatial)
            total = z.sum(1) if total is None else total + z.sum(1)
            sq = (z * z).sum(1) if sq is None else sq + (z * z).sum(1)
            count += z.shape[1]
    finally:
        model.train(was_training)
    if total is None:
        raise ValueError("latent_statistics needs at least one image")
    mu = total / count
    std = (sq / count - mu * mu).clamp_min(0.0).sqrt()
    return {"mean": [float(v) for v in mu], "std": [float(v) for v in std], "count": int(count)}


def _stat(stats: dict, key: str, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(stats[key], dtype=like.dtype, device=like.device)
    return value.reshape(1, -1, *([1] * (like.ndim - 2)))


def normalise_latents(z: torch.Tensor, stats: dict, eps: float = 1e-8) -> torch.Tensor:
    """MedSyn2 z-norm: ``(z - mean_c) / std_c`` per channel ``c`` (``z`` is ``(B, C, *spatial)``)."""
    return (z - _stat(stats, "mean", z)) / (_stat(stats, "std", z) + eps)


def denormalise_latents(z: torch.Tensor, stats: dict, eps: float = 1e-8) -> torch.Tensor:
    """Inverse of :func:`normalise_latents`, applied before decoding."""
    return z * (_stat(stats, "std", z) + eps) + _stat(stats, "mean", z)


def save_latent_statistics(stats: dict, path: str | Path) -> Path:
    """Write the statistics as JSON (atomically)."""
    from medsynth.fsutil import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(stats, indent=2))
    return path


def load_latent_statistics(path: str | Path) -> dict:
    """Read statistics written by :func:`save_latent_statistics`."""
    return json.loads(Path(path).read_text())


class LatentEncoder:
    """Posterior means of images added part by part, encoded in batches of ``batch_size`` across the parts'
    boundaries (the batches, hence the latents, are those of encoding all the images at once)."""

    def __init__(self, vae: torch.nn.Module, stats: dict, batch_size: int):
        self.vae, self.stats, self.batch_size = vae.eval(), stats, int(batch_size)
        self.pending: list[torch.Tensor] = []
        self.out: list[torch.Tensor] = []

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> None:
        self.out.append(normalise_latents(encode(self.vae, x.to(model_device(self.vae)))[0].cpu(), self.stats))

    def add(self, images: np.ndarray) -> None:
        self.pending.append(torch.as_tensor(images, dtype=torch.float32))
        x = torch.cat(self.pending)
        full = len(x) - len(x) % self.batch_size
        for i in range(0, full, self.batch_size):
            self._encode(x[i:i + self.batch_size])
        self.pending = [x[full:]] if full < len(x) else []

    def latents(self) -> torch.Tensor:
        if self.pending:
            self._encode(torch.cat(self.pending))
            self.pending = []
        return torch.cat(self.out).contiguous()


@torch.no_grad()
def latent_size(vae: torch.nn.Module, image: np.ndarray) -> tuple[int, ...]:
    """The latent grid of one ``(1, C, *spatial)`` image under ``vae`` (an encode of that image)."""
    return tuple(encode(vae.eval(), torch.as_tensor(image, dtype=torch.float32).to(model_device(vae)))[0].shape[2:])
