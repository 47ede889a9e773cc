"""Image autoencoders (VAEs) for latent synthesis: a 2D diffusers ``AutoencoderKL`` and MONAI's 3D MAISI VAE.

MedSyn2 (Sec. 3, Supp. 7.1.1) encodes CT volumes *and* their [-0.5, 0.5] condition masks with one
KL-regularised autoencoder into 4-channel latents; MAISI-v2 (Sec. "Method") reuses MAISI's VAE,
single-channel 3D input -> 4 latent channels at 4x4x4 compression. Here:

* ``spatial_dims: 2`` -> :class:`diffusers.AutoencoderKL` (``backend: diffusers``);
* ``spatial_dims: 3`` -> :class:`monai.apps.generation.maisi.networks.autoencoderkl_maisi.AutoencoderKlMaisi`
  (``backend: maisi``, the MAISI architecture), or plain :class:`monai.networks.nets.AutoencoderKL`
  (``backend: monai``).

The downsampling factor is ``2 ** (len(block_out_channels) - 1)`` in both cases (three levels = the
4x compression of MAISI / MAISI-v2). :func:`encode` / :func:`decode` give one calling convention for
every backend: ``encode(model, x) -> (mean, logvar)`` and ``decode(model, z) -> x``.

Model config keys (the ``vae.model`` section, or ``volumes.vae.model`` for a 3D VAE; their defaults are
the schema's, see :func:`vae_section`): ``spatial_dims``, ``backend``, ``in_channels``,
``out_channels``, ``block_out_channels``, ``layers_per_block`` (int or one per level),
``latent_channels``, ``norm_num_groups``, ``attention`` (mid-block / non-local attention),
``pretrained`` (diffusers: hub id or local folder; MONAI: local ``.safetensors``/``.pt`` state
dict), ``pretrained_subfolder`` and ``local_files_only`` (diffusers only: never contact the hub, fail
at once when the id is not in the local cache), ``sample_size`` (diffusers only, informational) and
``num_splits`` (maisi only). A pretrained RGB VAE (3 channels, e.g. Stable
Diffusion's ``vae/``) keeps taking grey images: the build config records ``image_channels`` (the
config's ``in_channels``, 1) beside the loaded ``in_channels`` (3), and :func:`encode` / :func:`decode`
map R = G = B in and the channel mean out.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from medsynth.io.state_dict import load_weights

__all__ = [
    "TINY_VAE_CONFIGS",
    "PretrainedUnavailableError",
    "build_autoencoder",
    "vae_section",
    "encode",
    "image_channels",
    "model_device",
    "decode",
    "reconstruct",
    "downsample_factor",
    "model_config",
    "save_autoencoder",
    "load_autoencoder",
]

#: Tiny configurations for CPU tests (same architecture families as the papers, a few thousand weights).
#: 2D: 32x32 slices -> 4 x 8 x 8 latents; 3D: 16^3 volumes -> 4 x 4^3 latents (MAISI's 4x compression).
#: Not defaults: :func:`build_autoencoder` completes a config with the schema's (:func:`vae_section`).
TINY_VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "2d": {
        "spatial_dims": 2,
        "backend": "diffusers",
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [16, 32, 32],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "attention": False,
        "sample_size": 32,
        "pretrained": None,
        "local_files_only": True,
    },
    "3d": {
        "spatial_dims": 3,
        "backend": "maisi",
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [8, 16, 16],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "attention": False,
        "pretrained": None,
    },
}

_CONFIG_ATTR = "medsynth_vae_config"
_BUILD_FILE = "medsynth_vae.json"


class PretrainedUnavailableError(RuntimeError):
    """Raised when the configured ``pretrained`` weights cannot be loaded (e.g. offline, missing file)."""


def _levels(cfg: dict) -> int:
    return len(cfg["block_out_channels"])


def _per_level(value: int | list[int], levels: int) -> list[int]:
    return [int(value)] * levels if isinstance(value, int) else [int(v) for v in value]


def downsample_factor(cfg: dict) -> int:
    """Spatial compression factor per axis of the VAE itself: ``2 ** (len(block_out_channels) - 1)``."""
    return 2 ** (_levels(cfg) - 1)


def latent_pack(cfg: Mapping | None) -> int:
    """Space-to-depth factor of the latents (``model.latent_pack``; 1 for a 3D config or a build config saved
    before the key existed)."""
    return int((cfg or {}).get("latent_pack") or 1)  # a saved build record, not a config default


def vae_section(cfg: Mapping | None) -> dict:
    """A VAE config section completed with the schema's defaults (validated): those of ``volumes.vae`` for a
    3D model (``model.spatial_dims: 3``), else those of ``vae`` (the 2D slices). The two sections have
    different defaults (``volumes.vae``'s are the values the 3D path used before the schema listed them).
    ``steps: 0`` (frozen) without ``model.pretrained`` is a ValueError (:func:`medsynth.settings.check_frozen_vae`)."""
    from medsynth.settings import check_frozen_vae, section

    cfg = dict(cfg or {})
    if dict(cfg.get("model") or {}).get("spatial_dims") == 3:  # which section, not a default
        full, name = section("volumes", {"vae": cfg})["vae"], "volumes.vae"
    else:
        full, name = section("vae", cfg), "vae"
    check_frozen_vae(full, name)
    return full


def _check(cfg: dict) -> dict:
    dims, backend = int(cfg["spatial_dims"]), cfg["backend"]
    if dims not in (2, 3):
        raise ValueError(f"vae.model.spatial_dims must be 2 or 3, got {dims}")
    if backend == "diffusers" and dims != 2:
        raise ValueError("vae.model.backend 'diffusers' (AutoencoderKL) is 2D only; use 'maisi' or 'monai' for 3D")
    if backend == "maisi" and dims != 3:
        raise ValueError("vae.model.backend 'maisi' is 3D only (MaisiGroupNorm3D); use 'diffusers' or 'monai' for 2D")
    if backend not in ("diffusers", "maisi", "monai"):
        raise ValueError(f"vae.model.backend must be diffusers, maisi or monai, got {backend!r}")
    if latent_pack(cfg) > 1 and dims != 2:
        raise ValueError("vae.model.latent_pack folds 2D latents only; leave it at 1 for 3D")
    groups = int(cfg["norm_num_groups"])
    bad = [c for c in cfg["block_out_channels"] if int(c) % groups]
    if bad:
        raise ValueError(f"vae.model.block_out_channels {bad} not divisible by norm_num_groups={groups}")
    return cfg


def _build_diffusers(cfg: dict) -> nn.Module:
    from diffusers import AutoencoderKL

    levels = _levels(cfg)
    layers = _per_level(cfg["layers_per_block"], levels)
    if len(set(layers)) != 1:
        raise ValueError("vae.model.layers_per_block: diffusers AutoencoderKL takes one value for all levels")
    return AutoencoderKL(
        in_channels=int(cfg["in_channels"]),
        out_channels=int(cfg["out_channels"]),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(int(c) for c in cfg["block_out_channels"]),
        layers_per_block=layers[0],
        latent_channels=int(cfg["latent_channels"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
        sample_size=int(cfg["sample_size"]),
        mid_block_add_attention=bool(cfg["attention"]),
    )


def _build_monai(cfg: dict) -> nn.Module:
    levels = _levels(cfg)
    common = dict(
        spatial_dims=int(cfg["spatial_dims"]),
        in_channels=int(cfg["in_channels"]),
        out_channels=int(cfg["out_channels"]),
        num_res_blocks=_per_level(cfg["layers_per_block"], levels),
        attention_levels=[False] * levels,
        latent_channels=int(cfg["latent_channels"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
        with_encoder_nonlocal_attn=bool(cfg["attention"]),
        with_decoder_nonlocal_attn=bool(cfg["attention"]),
    )
    channels = [int(c) for c in cfg["block_out_channels"]]
    if cfg["backend"] == "maisi":
        from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

        # num_splits > 1 splits the convolutions' tensors (a GPU-memory device of MAISI for large volumes)
        return AutoencoderKlMaisi(**common, num_channels=channels, num_splits=int(cfg["num_splits"]),
                                  dim_split=1, norm_float16=False, save_mem=False)
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(**common, channels=channels)


def _load_pretrained(model: nn.Module, cfg: dict) -> nn.Module:
    source = cfg["pretrained"]
    hint = "set vae.model.pretrained to a local copy of the weights, or to null to start from random weights"
    if cfg["backend"] == "diffusers":
        from diffusers import AutoencoderKL

        try:
            kwargs = {"subfolder": cfg["pretrained_subfolder"]} if cfg["pretrained_subfolder"] else {}
            loaded = AutoencoderKL.from_pretrained(str(source), local_files_only=bool(cfg["local_files_only"]),
                                                   **kwargs)
        except Exception as err:  # offline hub lookups raise OSError / HF errors / ValueError
            raise PretrainedUnavailableError(
                f"config key 'pretrained' (vae.model.pretrained={source!r}): cannot load the diffusers "
                f"AutoencoderKL ({type(err).__name__}: {err}); {hint}; a hub id needs network access and "
                "vae.model.local_files_only: false") from err
        # the images keep their channels (grey CT / MR: 1); an RGB VAE sees them as R = G = B (see encode)
        cfg["image_channels"] = int(cfg.get("image_channels") or cfg["in_channels"])
        if cfg["image_channels"] not in (1, loaded.config["in_channels"]):
            raise PretrainedUnavailableError(
                f"vae.model.pretrained={source!r} takes {loaded.config['in_channels']}-channel images; "
                f"{cfg['image_channels']}-channel images cannot be mapped into it (only grey, 1 channel, can)")
        # the loaded architecture wins over the config's (kept consistent for save/load and input checks)
        for key in ("in_channels", "out_channels", "latent_channels", "norm_num_groups", "layers_per_block"):
            cfg[key] = loaded.config[key]
        cfg["block_out_channels"] = list(loaded.config["block_out_channels"])
        return loaded
    path = Path(str(source))
    if not path.is_file():
        raise PretrainedUnavailableError(
            f"config key 'pretrained' (vae.model.pretrained={source!r}): no such file; MONAI/MAISI weights "
            f"must be a local .safetensors or .pt state dict; {hint}")
    state = load_weights(path)
    for key in ("state_dict", "autoencoder"):  # wrappers some training scripts add
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    model.load_state_dict(state, strict=True)
    return model


def build_autoencoder(cfg: dict) -> nn.Module:
    """Build the configured autoencoder (see module docstring for the keys).

    Missing keys take the schema's defaults (:func:`vae_section`: ``volumes.vae.model``'s for
    ``spatial_dims: 3``, else ``vae.model``'s). The resolved build config is attached to the module
    (``model.medsynth_vae_config``) so that :func:`save_autoencoder` can write it beside the weights.
    Raises :class:`PretrainedUnavailableError` naming the config key when ``pretrained`` is set but
    cannot be loaded (e.g. a hub id while offline).
    """
    cfg = _check(copy.deepcopy(vae_section({"model": dict(cfg)})["model"]))
    model = _build_diffusers(cfg) if cfg["backend"] == "diffusers" else _build_monai(cfg)
    if cfg["pretrained"]:
        model = _load_pretrained(model, cfg)
    setattr(model, _CONFIG_ATTR, cfg)
    return model


def model_config(model: nn.Module) -> dict | None:
    """The build config attached by :func:`build_autoencoder` (``None`` for other modules)."""
    return getattr(model, _CONFIG_ATTR, None)


def _is_diffusers(model: nn.Module) -> bool:
    from diffusers import AutoencoderKL

    return isinstance(model, AutoencoderKL)


def _is_monai(model: nn.Module) -> bool:
    from monai.networks.nets import AutoencoderKL

    return isinstance(model, AutoencoderKL)  # AutoencoderKlMaisi subclasses it


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are (CPU for a parameterless stand-in)."""
    return next(model.parameters(), torch.empty(0)).device


def image_channels(model: nn.Module) -> int | None:
    """Channels of the images the VAE encodes and decodes (1 for CT / MR, also into a pretrained RGB VAE)."""
    cfg = model_config(model)
    if cfg is None:
        return None
    return int(cfg.get("image_channels") or cfg["in_channels"])


def _grey_into_rgb(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    cfg = model_config(model)
    if cfg is not None and x.shape[1] == 1 and int(cfg["in_channels"]) == 3:
        return x.expand(-1, 3, *x.shape[2:])
    return x


def _rgb_to_grey(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if image_channels(model) == 1 and x.shape[1] == 3:
        return x.mean(dim=1, keepdim=True)
    return x


def encode(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior of ``x``: ``(mean, logvar)``, each ``(B, latent_channels, *latent_spatial)``.

    Grey images (1 channel) into a pretrained RGB VAE (Stable Diffusion's, 3 channels) enter as R = G = B,
    the way a grey photograph looks to it; :func:`decode` returns the mean of the three channels, the
    least-squares grey image of the RGB output (exact inverse when the VAE keeps R = G = B).

    diffusers returns a ``DiagonalGaussianDistribution`` (mean, logvar clamped to [-30, 20]); MONAI
    returns ``(mu, sigma)`` with ``sigma = exp(logvar / 2)``, converted here to ``logvar = 2 log sigma``.
    Any other module whose ``encode`` returns ``(mean, logvar)`` (e.g. a test stand-in) passes through.
    """
    x = _grey_into_rgb(model, x)
    if _is_diffusers(model):
        dist = model.encode(x).latent_dist
        mean, logvar = dist.mean, dist.logvar
    elif _is_monai(model):
        mu, sigma = model.encode(x)
        mean, logvar = mu, 2.0 * torch.log(sigma)
    else:
        mean, logvar = model.encode(x)
    pack = latent_pack(model_config(model))
    if pack > 1:  # each p x p patch of the latent grid into channels (vae.model.latent_pack)
        mean, logvar = F.pixel_unshuffle(mean, pack), F.pixel_unshuffle(logvar, pack)
    return mean, logvar


def decode(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Decode latents ``z`` back to image space (``(B, image channels, *spatial)``; RGB -> grey, see encode)."""
    pack = latent_pack(model_config(model))
    if pack > 1:
        z = F.pixel_shuffle(z, pack)
    if _is_diffusers(model):
        return _rgb_to_grey(model, model.decode(z).sample)
    return _rgb_to_grey(model, model.decode(z))


def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction ``decode(encode(x).mean)`` (MedSyn2 Supp. 7.3 tokenizer analysis)."""
    mean, _ = encode(model, x)
    return decode(model, mean)


def save_autoencoder(model: nn.Module, folder: str | Path) -> Path:
    """Save final weights: diffusers -> ``save_pretrained`` folder; MONAI -> ``model.safetensors`` + ``config.json``.

    Both also get ``medsynth_vae.json`` (the build config) so :func:`load_autoencoder` can rebuild.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model)
    if _is_diffusers(model):
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    if cfg is not None:
        (folder / _BUILD_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return folder


def load_autoencoder(folder: str | Path) -> nn.Module:
    """Inverse of :func:`save_autoencoder` (local folder only, no network)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / _BUILD_FILE).read_text())
    if cfg["backend"] == "diffusers":
        from diffusers import AutoencoderKL

        model = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        setattr(model, _CONFIG_ATTR, cfg)
        return model
    model = build_autoencoder({**cfg, "pretrained": None})
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model
