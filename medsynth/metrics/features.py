"""Feature extractors for Fréchet / kernel distances, run through torch-fidelity.

* **Inception** (``inception-v3-compat``, the FID network of torch-fidelity): the pretrained weights
  are never downloaded here. :func:`inception_weights` resolves a local copy (configured path, or
  :data:`INCEPTION_WEIGHTS_FILE` in the torch hub checkpoint cache) and otherwise returns a status
  ``"unavailable: ..."``; callers then report no FID rather than another number under that name.
* **Module extractors**: any encoder the pipeline trains itself (e.g. the VAE encoder or a
  segmentation encoder) is exposed as a torch-fidelity feature extractor with
  :func:`register_module_extractor`. torch-fidelity builds extractors from a registered *class* plus
  the name (``cls(name, features_list, **kwargs)``), so the class looks the module up by name in
  :data:`MODULE_REGISTRY`. The extractor converts torch-fidelity's ``uint8`` RGB batches to the
  encoder's input (one channel, mean of RGB, scaled to [-1, 1]) and returns the encoder output,
  globally average-pooled when spatial, as one float64 feature ``"pooled"`` per sample. Distances
  computed with such an extractor are *FD / KD in that encoder's feature space*, not FID/KID.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

__all__ = [
    "INCEPTION_EXTRACTOR",
    "INCEPTION_FEATURE",
    "INCEPTION_WEIGHTS_FILE",
    "MODULE_FEATURE",
    "MODULE_REGISTRY",
    "ModuleFeatureExtractor",
    "inception_weights",
    "register_module_extractor",
    "unregister_module_extractor",
]

INCEPTION_EXTRACTOR = "inception-v3-compat"
"""torch-fidelity's name of its TF-compatible InceptionV3 (the FID/KID network)."""
INCEPTION_FEATURE = "2048"
"""Inception pool3 features, used for FID and KID."""
INCEPTION_WEIGHTS_FILE = os.path.basename(urlparse(URL_INCEPTION_V3).path)
"""File name torch-fidelity downloads its InceptionV3 weights to (``weights-inception-2015-12-05-6726825d.pth``)."""
MODULE_FEATURE = "pooled"
"""The one feature a :class:`ModuleFeatureExtractor` provides."""
MODULE_REGISTRY: dict[str, nn.Module] = {}
"""Encoders registered with :func:`register_module_extractor`, by extractor name."""


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def inception_weights(path: str | os.PathLike | None) -> tuple[str | None, str]:
    """Local InceptionV3 weights: ``(path, "ok")`` or ``(None, "unavailable: ...")``; never downloads.

    Looks at ``path`` (config ``metrics.inception_pretrained_path``) first, then at
    ``torch.hub.get_dir()/checkpoints/`` + :data:`INCEPTION_WEIGHTS_FILE`.
    """
    if path is not None and Path(path).is_file():
        return str(path), "ok"
    cached = _hub_checkpoints() / INCEPTION_WEIGHTS_FILE
    if cached.is_file():
        return str(cached), "ok"
    where = f"configured path {str(path)!r} does not exist; " if path is not None else ""
    return None, (f"unavailable: no Inception weights ({where}set metrics.inception_pretrained_path or place "
                  f"{INCEPTION_WEIGHTS_FILE} in {_hub_checkpoints()})")


def _tensor_output(out: object) -> torch.Tensor:
    """The feature tensor of an encoder output: a tensor, the first item of a tuple/list, or ``.mean``
    of a distribution (``.latent_dist.mean`` for diffusers ``AutoencoderKLOutput``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _tensor_output(out[0])
    for attr in ("latent_dist", "mean"):
        if hasattr(out, attr):
            return _tensor_output(getattr(out, attr))
    raise TypeError(f"cannot take features from encoder output of type {type(out).__name__}")


class ModuleFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor around an encoder from :data:`MODULE_REGISTRY` (looked up by ``name``).

    The encoder is deep-copied at construction so torch-fidelity's ``eval()``, ``requires_grad_(False)``
    and ``cuda()`` never touch the caller's module. Input: ``uint8 [B, 3, H, W]``; output: one
    ``float64 [B, D]`` tensor (feature :data:`MODULE_FEATURE`), spatial outputs averaged over space.
    """

    def __init__(self, name: str, features_list: list[str], **kwargs):
        super().__init__(name, features_list)
        if name not in MODULE_REGISTRY:
            raise ValueError(f"no encoder registered as feature extractor {name!r}")
        self.encoder = copy.deepcopy(MODULE_REGISTRY[name])
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (MODULE_FEATURE,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return MODULE_FEATURE

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def _input_spec(self) -> tuple[torch.device, torch.dtype]:
        for p in self.encoder.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
        return torch.device("cpu"), torch.float32

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected a uint8 [B, 3, H, W] batch, got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        device, dtype = self._input_spec()
        out_device = x.device
        img = x.to(device=device, dtype=dtype).mean(dim=1, keepdim=True) * (2.0 / 255.0) - 1.0
        feat = _tensor_output(self.encoder(img))
        if feat.dim() > 2:
            feat = feat.mean(dim=tuple(range(2, feat.dim())))
        elif feat.dim() == 1:
            feat = feat[:, None]
        return (feat.to(device=out_device, dtype=torch.float64),)


def register_module_extractor(name: str, encoder: nn.Module) -> str:
    """Register ``encoder`` as torch-fidelity feature extractor ``name`` (returned, for ``feature_extractor=``).

    Registering a name again replaces its encoder; a name taken by another torch-fidelity extractor
    (e.g. ``inception-v3-compat``) is refused.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    registered = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if registered is None:
        register_feature_extractor(name, ModuleFeatureExtractor)
    elif registered is not ModuleFeatureExtractor:
        raise ValueError(f"feature extractor name {name!r} is already used by {registered.__name__}")
    MODULE_REGISTRY[name] = encoder
    return name


def unregister_module_extractor(name: str) -> None:
    """Forget an extractor registered with :func:`register_module_extractor` (no-op if unknown)."""
    MODULE_REGISTRY.pop(name, None)
    if FEATURE_EXTRACTORS_REGISTRY.get(name) is ModuleFeatureExtractor:
        del FEATURE_EXTRACTORS_REGISTRY[name]
