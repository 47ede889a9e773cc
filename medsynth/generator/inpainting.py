"""Stable Diffusion inpainting's own inputs (MedDiff-FT): ``[inpainting mask; masked-image latent]``.

With ``generator.inpainting_inputs.enabled`` every condition also carries a ``context`` tensor, the input
channels an inpainting UNet (Stable Diffusion 1.5 inpainting, MedDiff-FT's base model) takes between the
noisy latent and anything else: the backbone input is ``[z_t; inpainting mask; masked-image latent;
condition masks]`` (:func:`medsynth.models.backbones.predict` ``context=``), so a released 9-channel
inpainting UNet keeps the meaning of its nine input channels and the condition masks come on new, zero-
initialised channels (4 + 1 + 4 + C).

What is built, as MedDiff-FT's training script builds it (JianhaoXie1/MedDiff-FT ``main/train.py``, the
diffusers DreamBooth-inpainting recipe):

* the inpainting region: pixels inside any of the ``channels`` condition masks (all of them when
  ``null``) - MedDiff-FT binarises its lesion mask at 0.5; the pipeline's masks are binary already;
* the masked image: the image with the region set to 0 (``image * (mask < 0.5)``, images in [-1, 1]);
* its latent: the VAE's posterior mean, z-normalised with the study's latent statistics, as the noisy
  latent is (MedDiff-FT: a posterior sample times SD's 0.18215 - the pipeline's latents are posterior means
  under its own normalisation everywhere, so the two latents the UNet sees stay on one scale);
* the inpainting mask on the latent grid: 1 inside the region, 0 outside, resized by nearest neighbour
  (``F.interpolate`` default, as the training script and the diffusers pipeline resize it).

The context is never dropped: classifier-free guidance and the training-time condition dropout replace the
prompt and the condition masks only (the diffusers inpainting pipeline feeds the same mask and masked image
to its conditional and unconditional halves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.vae.latents import LatentEncoder

__all__ = ["inpainting_region", "masked_images", "ContextBuilder", "inpainting_context", "context_channels",
           "lesion_free_hosts"]


def inpainting_region(masks: np.ndarray, names: Sequence[str], channels: Sequence[str] | None) -> np.ndarray:
    """``(N, 1, *spatial)`` bool: inside any of the ``channels`` (``None``: every channel) of ``masks``
    (binary ``{-0.5, 0.5}`` condition masks, or bool)."""
    names = list(names)
    if channels is None:
        idx = list(range(len(names)))
    else:
        unknown = [c for c in channels if c not in names]
        if unknown:
            raise KeyError(f"generator.inpainting_inputs.channels {unknown} are not condition channels ({names})")
        idx = [names.index(c) for c in channels]
    if not idx:
        raise ValueError("the inpainting region needs at least one condition channel")
    return (np.asarray(masks)[:, idx] > 0).any(axis=1, keepdims=True)


def masked_images(images: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``images`` (in [-1, 1]) with the region set to 0 (MedDiff-FT: ``image * (mask < 0.5)``)."""
    return np.where(region, np.float32(0.0), np.asarray(images, dtype=np.float32))


def context_channels(latent_channels: int) -> int:
    """How many input channels the context adds: the inpainting mask + the masked image's latent."""
    return 1 + int(latent_channels)


class ContextBuilder:
    """The context of images added part by part (the masked images encoded in batches across the parts, as
    :class:`medsynth.vae.latents.LatentEncoder` encodes them)."""

    def __init__(self, vae: torch.nn.Module, stats: Mapping, batch_size: int, channels: Sequence[str] | None):
        self.encoder = LatentEncoder(vae, dict(stats), batch_size)
        self.channels = None if channels is None else list(channels)
        self.regions: list[torch.Tensor] = []

    def add(self, images: np.ndarray, masks: np.ndarray, names: Sequence[str]) -> None:
        region = inpainting_region(masks, names, self.channels)
        self.encoder.add(masked_images(images, region))
        self.regions.append(torch.from_numpy(region.astype(np.float32)))

    def context(self) -> torch.Tensor:
        """``(N, 1 + latent channels, *latent grid)``: ``[inpainting mask; masked-image latent]``."""
        latent = self.encoder.latents()
        region = torch.cat(self.regions)
        mask = F.interpolate(region, size=tuple(latent.shape[2:]), mode="nearest")
        return torch.cat([mask, latent], dim=1).contiguous()


def inpainting_context(vae: torch.nn.Module, stats: Mapping, images: np.ndarray, masks: np.ndarray,
                       names: Sequence[str], channels: Sequence[str] | None = None,
                       batch_size: int = 32) -> torch.Tensor:
    """The context of ``images`` ``(N, 1, *spatial)`` under ``masks`` ``(N, C, *spatial)`` (module docstring)."""
    builder = ContextBuilder(vae, stats, batch_size, channels)
    builder.add(images, masks, names)
    return builder.context()


def lesion_free_hosts(masks: np.ndarray, names: Sequence[str], channels: Sequence[str] | None, n: int,
                      seed: int) -> np.ndarray:
    """Row indices of ``n`` host slices: the rows of ``masks`` with nothing in the inpainting ``channels``, in a
    random order drawn from ``seed``, repeated in that order as often as ``n`` needs (``stochastic_masks.hosts:
    lesion_free``, MedDiff-FT's lesion-free images)."""
    region = inpainting_region(masks, names, channels)
    free = np.flatnonzero(~region.reshape(len(region), -1).any(axis=1))
    if not len(free):
        raise ValueError(f"stochastic_masks.hosts = lesion_free, but every slice of the condition set has "
                         f"something in {list(channels) if channels else list(names)}: no lesion-free host")
    order = free[np.random.default_rng(int(seed)).permutation(len(free))]
    return order[np.arange(int(n)) % len(order)]
