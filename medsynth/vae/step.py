"""One tuning step of the VAE in the training loop (:func:`medsynth.train.train`): the autoencoder and
its patch discriminator as two players of one optimizer step.

:class:`VAEPair` holds the autoencoder and its :class:`~medsynth.vae.losses.VAELoss` (the discriminator,
the frozen perceptual network); its ``forward`` computes every term of one batch, so that the loop's
DDP wrapper sees the whole computation. The loss is ``total + discriminator loss``: the autoencoder's
adversarial term is evaluated with the critic's parameters detached and the critic's loss on the
detached reconstruction, so each term trains only its own player (MedSyn2 Supp. 7.1.1's alternating
GAN updates in one step).

:class:`VAEStep` draws the random patches (MedSyn2: randomly sampled patches) and the posterior noise
from a generator seeded by ``(seed, step)`` only, for the whole global batch, and takes this process's
rows: ``W`` processes with ``batch_size / W`` samples each reproduce the one-process run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medsynth.train.players import PlayerPair
from medsynth.train.seeding import derive_seed
from medsynth.vae.losses import VAELoss
from medsynth.vae.models import decode, encode

__all__ = ["VAEPair", "VAEStep", "random_patches"]


def random_patches(batch: torch.Tensor, patch: Sequence[int] | None, gen: torch.Generator, rows: slice,
                   global_batch: int) -> torch.Tensor:
    """One random crop of size ``patch`` per sample: positions are drawn for all ``global_batch`` samples
    (so the generator advances the same on every process) and used for this process's ``rows``, whose
    samples ``batch`` holds."""
    if patch is None:
        return batch
    spatial = batch.shape[2:]
    starts = [[int(torch.randint(0, size - p + 1, (1,), generator=gen)) for size, p in zip(spatial, patch)]
              for _ in range(global_batch)]
    out = []
    for sample, start in zip(batch, starts[rows]):
        out.append(sample[(slice(None), *(slice(s, s + p) for s, p in zip(start, patch)))])
    return torch.stack(out)


class VAEPair(PlayerPair):
    """The autoencoder (``generator``, what ``final/`` holds) and its losses with the discriminator."""

    def __init__(self, autoencoder: nn.Module, losses: VAELoss):
        super().__init__(autoencoder, losses=losses)

    def forward(self, x: torch.Tensor, noise_gen: torch.Generator, rows: slice, global_batch: int,
                step: int) -> dict[str, torch.Tensor]:
        """Every term of one batch ``x`` (this process's ``rows`` of the global batch) at 0-based ``step``;
        absent terms are NaN, so the loss curve keeps its columns."""
        mean, logvar = encode(self.generator, x)
        noise = torch.randn((global_batch, *mean.shape[1:]), generator=noise_gen, dtype=mean.dtype)
        recon = decode(self.generator, mean + torch.exp(0.5 * logvar) * noise[rows].to(mean.device))
        total, values = self.losses.generator_loss(recon, x, mean, logvar, step)
        loss = total
        if "adv_g" in values:
            critic = self.losses.discriminator_loss(recon, x)
            values["adv_d"] = float(critic.detach())
            loss = loss + critic
        terms = {name: torch.tensor(values.get(name, math.nan)) for name in VAELoss.TERMS}
        terms["loss"] = loss
        return terms


class VAEStep:
    """``loss_step`` of the loop for :class:`VAEPair` on ``{"image": (N, C, *spatial)}`` batches.

    ``patch``: the crop size per spatial axis (``None``: whole images); ``seed``: the stream of the patch
    positions and the posterior noise (independent of the process, see the module docstring).
    """

    def __init__(self, patch: Sequence[int] | None, seed: int):
        self.patch = list(patch) if patch is not None else None
        self.seed = int(seed)

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor], step: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        from accelerate.state import PartialState

        state = PartialState()
        rank, world = state.process_index, state.num_processes
        images = batch["image"]
        local = images.shape[0]
        rows = slice(rank * local, (rank + 1) * local)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "vae", step))
        x = random_patches(images, self.patch, gen, rows, local * world)
        return model(x, gen, rows, local * world, step)
