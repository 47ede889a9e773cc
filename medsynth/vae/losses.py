"""VAE training losses (MedSyn2 Supp. 7.1.1: "reconstruction loss, LPIPS loss, KL-divergence loss, GAN loss").

Terms, each with its weight in the ``losses`` config section:

* ``l1_weight``         reconstruction L1, ``mean |x_hat - x|``;
* ``kl_weight``         KL(q(z|x) || N(0, I)) averaged over every latent element (batch, channel, space);
* ``ssim_weight``       ``1 - SSIM`` via :class:`monai.losses.SSIMLoss` (data range 2 for [-1, 1] images);
* ``perceptual_weight`` :class:`monai.losses.PerceptualLoss` (LPIPS / RadImageNet / MedicalNet). Its weights
  are downloaded by MONAI, which is impossible offline: the term is **off by default** (weight 0) and
  switching it on without reachable weights raises :class:`PerceptualUnavailableError` naming the key;
* ``adv_weight``        patch-GAN generator term (:class:`monai.networks.nets.PatchDiscriminator`,
  :class:`monai.losses.PatchAdversarialLoss`, ``adv_criterion`` ``least_squares`` | ``hinge`` | ``bce``),
  active only from step ``adv_warmup_steps`` on (the usual warm-up before the GAN switches on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from medsynth.train.players import frozen_call

__all__ = [
    "LossConfig",
    "PerceptualUnavailableError",
    "l1_loss",
    "kl_loss",
    "ssim_loss",
    "ssim_window",
    "build_perceptual_loss",
    "build_discriminator",
    "adversarial_active",
    "VAELoss",
]


class PerceptualUnavailableError(RuntimeError):
    """Raised when ``losses.perceptual_weight > 0`` but the perceptual network cannot be built (offline)."""


@dataclass(frozen=True)
class LossConfig:
    """Weights and options of the VAE loss (config ``vae.losses``, the ``losses`` of the tune config); build it
    with :meth:`from_config`, which takes the schema's defaults (config/schema.yaml is their one home)."""

    l1_weight: float
    kl_weight: float
    ssim_weight: float
    perceptual_weight: float
    perceptual_network: str
    perceptual_cache_dir: str | None
    perceptual_pretrained_path: str | None
    adv_weight: float
    adv_criterion: str
    adv_warmup_steps: int
    disc_channels: int
    disc_layers: int
    disc_norm: str
    disc_lr: float | None

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> "LossConfig":
        """Build from a ``vae.losses`` section; keys left out take the schema's defaults (validated). Unknown
        keys are an error (a typo would silently disable a term)."""
        from medsynth.settings import section

        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown losses config keys {unknown}; known: {sorted(known)}")
        full = section("vae", {"losses": cfg})["losses"]
        return cls(**{name: full[name] for name in sorted(known)})

    def as_dict(self) -> dict:
        """Plain dict (for logs / provenance)."""
        return asdict(self)


def l1_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reconstruction term ``mean |recon - target|``."""
    return (recon - target).abs().mean()


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, 1))`` per latent element, averaged over all elements.

    ``0.5 * mean(mean^2 + exp(logvar) - 1 - logvar)``; e.g. ``mean=1, logvar=0`` gives 0.5.
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def ssim_window(shape: tuple[int, ...] | torch.Size, win_size: int = 11) -> int:
    """SSIM window: the standard 11, shrunk (kept odd) when a spatial side is smaller."""
    w = min(int(win_size), *[int(s) for s in shape])
    return w if w % 2 else w - 1


def ssim_loss(recon: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """``1 - SSIM`` via :class:`monai.losses.SSIMLoss` (Gaussian window); 0 for identical images."""
    from monai.losses import SSIMLoss

    spatial = tuple(target.shape[2:])
    return SSIMLoss(spatial_dims=len(spatial), data_range=data_range, win_size=ssim_window(spatial))(recon, target)


def build_perceptual_loss(cfg: LossConfig, spatial_dims: int) -> nn.Module | None:
    """MONAI ``PerceptualLoss`` when ``perceptual_weight > 0`` (frozen, eval mode), else ``None``.

    Raises :class:`PerceptualUnavailableError` naming ``losses.perceptual_weight`` when the network
    or its weights cannot be obtained (``lpips`` not installed, torch.hub download impossible offline).
    Pre-placed weights are used through ``perceptual_cache_dir`` (torch.hub dir) or, for
    ``perceptual_network: resnet50``, ``perceptual_pretrained_path``.
    """
    if cfg.perceptual_weight <= 0:
        return None
    from monai.losses import PerceptualLoss

    network = cfg.perceptual_network.lower()
    try:
        loss = PerceptualLoss(
            spatial_dims=spatial_dims,
            network_type=network,
            is_fake_3d=spatial_dims == 3 and not network.startswith("medicalnet"),
            cache_dir=cfg.perceptual_cache_dir,
            pretrained_path=cfg.perceptual_pretrained_path,
        )
    except Exception as err:  # OptionalImportError (lpips), URLError / HTTPError (torch.hub), ...
        raise PerceptualUnavailableError(
            f"config key 'losses.perceptual_weight' is {cfg.perceptual_weight} but the perceptual network "
            f"{cfg.perceptual_network!r} is unavailable ({type(err).__name__}: {err}). Its pretrained weights "
            "must be downloaded, which is impossible offline: set losses.perceptual_weight: 0, or provide the "
            "weights via losses.perceptual_cache_dir (torch.hub cache) / losses.perceptual_pretrained_path."
        ) from err
    loss.eval()
    for p in loss.parameters():
        p.requires_grad_(False)
    return loss


def build_discriminator(cfg: LossConfig, spatial_dims: int, in_channels: int = 1) -> nn.Module | None:
    """MONAI ``PatchDiscriminator`` when ``adv_weight > 0``, else ``None``."""
    if cfg.adv_weight <= 0:
        return None
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=spatial_dims, channels=cfg.disc_channels, in_channels=in_channels,
                              out_channels=1, num_layers_d=cfg.disc_layers, norm=cfg.disc_norm)


def adversarial_active(cfg: LossConfig, step: int) -> bool:
    """GAN terms on iff ``adv_weight > 0`` and the 0-based ``step`` has reached ``adv_warmup_steps``."""
    return cfg.adv_weight > 0 and step >= cfg.adv_warmup_steps


class VAELoss(nn.Module):
    """All VAE loss terms; the discriminator (if any) is a submodule with its own optimiser.

    ``generator_loss`` returns the weighted total and every term (unweighted, floats) for the loss
    curve; ``discriminator_loss`` the patch-GAN discriminator objective.
    """

    TERMS = ("total", "l1", "kl", "ssim", "perceptual", "adv_g", "adv_d")

    def __init__(self, cfg: LossConfig, spatial_dims: int, in_channels: int = 1) -> None:
        super().__init__()
        from monai.losses import PatchAdversarialLoss

        self.cfg = cfg
        self.spatial_dims = spatial_dims
        self.perceptual = build_perceptual_loss(cfg, spatial_dims)
        self.discriminator = build_discriminator(cfg, spatial_dims, in_channels)
        self.adversarial = PatchAdversarialLoss(criterion=cfg.adv_criterion, reduction="mean")

    def generator_loss(self, recon: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                       step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the autoencoder terms at 0-based ``step``."""
        c = self.cfg
        terms: dict[str, torch.Tensor] = {"l1": l1_loss(recon, target), "kl": kl_loss(mean, logvar)}
        total = c.l1_weight * terms["l1"] + c.kl_weight * terms["kl"]
        if c.ssim_weight > 0:
            terms["ssim"] = ssim_loss(recon, target)
            total = total + c.ssim_weight * terms["ssim"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(recon.float(), target.float())
            total = total + c.perceptual_weight * terms["perceptual"]
        if self.discriminator is not None and adversarial_active(c, step):
            # the critic's parameters detached: this term trains the autoencoder only (one step trains both)
            logits_fake = frozen_call(self.discriminator, recon.contiguous().float())[-1]
            terms["adv_g"] = self.adversarial(logits_fake, target_is_real=True, for_discriminator=False)
            total = total + c.adv_weight * terms["adv_g"]
        return total, {"total": float(total.detach()), **{k: float(v.detach()) for k, v in terms.items()}}

    def discriminator_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Patch-GAN discriminator objective: mean of the real and fake terms (recon is detached)."""
        if self.discriminator is None:
            raise RuntimeError("discriminator_loss needs losses.adv_weight > 0")
        logits_fake = self.discriminator(recon.detach().contiguous().float())[-1]
        logits_real = self.discriminator(target.contiguous().float())[-1]
        fake = self.adversarial(logits_fake, target_is_real=False, for_discriminator=True)
        real = self.adversarial(logits_real, target_is_real=True, for_discriminator=True)
        return 0.5 * (fake + real)
