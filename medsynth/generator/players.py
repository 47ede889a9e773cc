"""Two players trained by one optimizer step: the generator and a second network (a critic or a copy).

:class:`~medsynth.train.players.PlayerPair` is what the training loop prepares, checkpoints (both players) and, through
:meth:`PlayerPair.saved_module`, saves as ``final/`` (the generator alone). Its two kinds:
:class:`AdversarialPair` (stage 2's adversarial term, here) and
:class:`medsynth.generator.distill.DistillationPair` (DMD's online fake score).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medsynth.train.players import PlayerPair, frozen_call

__all__ = ["PlayerPair", "AdversarialPair", "build_discriminator"]


class AdversarialPair(PlayerPair):
    """Stage 2's optional adversarial term (ViCTr calls its fine-tuning adversarial): the generator and
    a conditional latent patch discriminator (MONAI ``PatchDiscriminator`` on ``[latent; mask]``).

    The discriminator learns real training latents from the generator's one-step clean estimates
    ``x0_hat = x_t - t u`` (non-saturating logistic loss, generator input detached); the generator's
    term ``softplus(-D(x0_hat))`` is evaluated with the discriminator's parameters detached, so each
    term reaches only its own player and one optimizer step updates both. Checkpoints hold both; the
    final folder holds the generator (:meth:`saved_module`).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__(generator, discriminator=discriminator)

    def _logits(self, x: torch.Tensor, detached: bool = False) -> torch.Tensor:
        return (frozen_call(self.discriminator, x) if detached else self.discriminator(x))[-1]

    def adversarial_terms(self, real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"adversarial": generator term, "discriminator": discriminator loss}`` for one batch."""
        import torch.nn.functional as F

        d_real = self._logits(torch.cat([real, mask], dim=1))
        d_fake = self._logits(torch.cat([fake.detach(), mask], dim=1))
        disc = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        gen = F.softplus(-self._logits(torch.cat([fake, mask], dim=1), detached=True)).mean()
        return {"adversarial": gen, "discriminator": disc}


def build_discriminator(cfg: Mapping, in_channels: int, spatial_dims: int) -> nn.Module:
    """MONAI ``PatchDiscriminator`` from a complete ``stage2.adversarial`` section (``channels``, ``layers``, ``norm``)."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=spatial_dims, channels=int(cfg["channels"]), in_channels=in_channels,
                              out_channels=1, num_layers_d=int(cfg["layers"]), norm=str(cfg["norm"]))
