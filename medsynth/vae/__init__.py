"""Image autoencoders for latent synthesis: build, tune, z-norm statistics and reconstruction analysis.

MedSyn2 (Supp. 7.1.1, 7.3; Sec. 3) and MAISI-v2 (reused MAISI VAE, 4 latent channels, 4x compression).
"""

from .latents import (
    denormalise_latents,
    latent_statistics,
    load_latent_statistics,
    normalise_latents,
    save_latent_statistics,
)
from .losses import (
    LossConfig,
    PerceptualUnavailableError,
    VAELoss,
    adversarial_active,
    build_discriminator,
    build_perceptual_loss,
    kl_loss,
    l1_loss,
    ssim_loss,
)
from .metrics import reconstruct_batched, reconstruction_metrics
from .models import (
    TINY_VAE_CONFIGS,
    PretrainedUnavailableError,
    build_autoencoder,
    decode,
    downsample_factor,
    encode,
    load_autoencoder,
    reconstruct,
    save_autoencoder,
)
from .tune import TuneConfig, latest_checkpoint, tune_vae

__all__ = [
    "TINY_VAE_CONFIGS",
    "LossConfig",
    "PerceptualUnavailableError",
    "PretrainedUnavailableError",
    "TuneConfig",
    "VAELoss",
    "adversarial_active",
    "build_autoencoder",
    "build_discriminator",
    "build_perceptual_loss",
    "decode",
    "denormalise_latents",
    "downsample_factor",
    "encode",
    "kl_loss",
    "l1_loss",
    "latent_statistics",
    "latest_checkpoint",
    "load_autoencoder",
    "load_latent_statistics",
    "normalise_latents",
    "reconstruct",
    "reconstruct_batched",
    "reconstruction_metrics",
    "save_autoencoder",
    "save_latent_statistics",
    "ssim_loss",
    "tune_vae",
]
