"""Downstream segmentation data: the four training settings and the standard augmentation.

The downstream protocols this reproduces train one segmentation network per setting and test it on
the same real test slices:

* ViCTr (Table 3) and MedSyn2 (Table 5): real only, real + standard augmentation, real + synthetic
  slices of a generator variant (the synthetic set sized as a fraction of the real one, labelled by the
  masks the slices were generated from), and synthetic only.
* MAISI-v2 (downstream segmentation): real + synthetic, the synthetic labels being the generation
  conditions.

One sample is a 2D slice: ``image`` float ``(1, H, W)`` in [-1, 1] and ``label`` float ``(C, H, W)``
in {0, 1}, one binary channel per condition (multi-label: channels may overlap). Masks are accepted
in any binary encoding whose foreground is ``> 0`` (the shards' [-0.5, 0.5], {0, 1}, bool).

Augmentation (``real_aug``)
---------------------------
:func:`augmentation` returns a MONAI ``Compose`` of dictionary transforms on ``image`` and ``label``
together, each applied with probability ``prob``, in this order (the keys are config
``downstream.augmentation``'s; their defaults, e.g. ``prob`` 0.4, are the schema's):

1. random crop: ``OneOf([Compose([RandScaleCropd(roi_scale=crop_scale), Resized(spatial_size)]),
   Identityd], weights=[prob, 1 - prob])`` - a crop of ``crop_scale`` (0.8) of each side at a
   random position, resized back to the input size (the ``RandSpatialCropd`` + resize variant, chosen
   over ``RandZoomd`` because the crop position is random, not the centre);
2. ``RandRotated`` (``rotate_range`` radians, 15 degrees);
3. ``RandGaussianSmoothd`` on the image only (``sigma_range``, pixels);
4. ``RandAffined`` (``translate_range`` pixels, ``scale_range``, ``shear_range``);
5. ``Rand2DElasticd`` (``elastic_spacing`` pixels between control points, ``elastic_magnitude``).

Image resampling is bilinear, label resampling nearest (``nearest-exact`` for the crop's resize:
torch's plain ``nearest`` resize is shifted by half a pixel), both with ``border`` padding: the same
padding for image and label keeps structures touching the edge aligned (zero-padded labels under
border-padded images drift apart by several pixels per transform). Labels stay binary
(:func:`apply_augmentation` re-binarises them at 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsynth.names import DOWNSTREAM_COMPOSITIONS
from medsynth.train.data import TensorDictDataset

__all__ = [
    "SETTINGS",
    "SegmentationData",
    "as_images",
    "as_labels",
    "compose_setting",
    "setting_augments",
    "augmentation",
    "apply_augmentation",
]

SETTINGS = DOWNSTREAM_COMPOSITIONS



def as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images as float32 ``(N, 1, H, W)`` clipped to [-1, 1] (synthetic decodes may overshoot slightly)."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.detach().cpu().float()
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("images contain non-finite values")
    return x.clamp(-1.0, 1.0).contiguous()


def as_labels(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Binary masks (foreground ``> 0``) as float32 ``(N, C, H, W)`` in {0, 1}."""
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).detach().cpu()
    if m.ndim != 4:
        raise ValueError(f"masks must be (N, C, H, W), got {tuple(m.shape)}")
    return (m > 0).float().contiguous()


@dataclass
class SegmentationData:
    """Slices and multi-label targets of one split: ``image`` (N, 1, H, W) in [-1, 1], ``label`` (N, C, H, W)."""

    image: torch.Tensor
    label: torch.Tensor
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.image = as_images(self.image)
        self.label = as_labels(self.label)
        if len(self.image) != len(self.label):
            raise ValueError(f"{len(self.image)} images but {len(self.label)} labels")
        if self.image.shape[2:] != self.label.shape[2:]:
            raise ValueError(f"image size {tuple(self.image.shape[2:])} != label size {tuple(self.label.shape[2:])}")
        if not self.names:
            self.names = [f"mask_{i}" for i in range(self.label.shape[1])]
        if len(self.names) != self.label.shape[1]:
            raise ValueError(f"{len(self.names)} names for {self.label.shape[1]} label channels")

    @classmethod
    def from_arrays(cls, images: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray,
                    names: Sequence[str] | None = None) -> "SegmentationData":
        """From images in [-1, 1] and binary masks (foreground ``> 0``)."""
        return cls(as_images(images), as_labels(masks), list(names or []))

    @classmethod
    def from_shards(cls, shards: Sequence[str | Path], select: Mapping[str, Sequence] | None = None
                    ) -> "SegmentationData":
        """The slices of 2D training-set shards, filtered by index columns (``{"split": ["test"]}``)."""
        from medsynth.io.trainsets import load_slices

        try:  # the selected slices only, shard by shard
            index, images, masks, names = load_slices(shards, select)
        except ValueError as err:
            raise ValueError(f"select {dict(select or {})} keeps no slice of the shards") from err
        return cls.from_arrays(images, masks, names)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def dataset(self) -> TensorDictDataset:
        """``{"image", "label"}`` for :func:`medsynth.train.train`."""
        return TensorDictDataset({"image": self.image, "label": self.label})

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The dataset dict ``{"image": ..., "label": ...}``."""
        return {"image": self.image, "label": self.label}


def setting_augments(setting: str) -> bool:
    """Whether ``setting`` trains with the standard augmentation (only ``real_aug``)."""
    _check_setting(setting)
    return setting == "real_aug"


def _check_setting(setting: str) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"unknown downstream setting {setting!r}; expected one of {SETTINGS}")


def _pair(pair: tuple[Any, Any] | None, what: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if pair is None:
        return None
    images, labels = as_images(pair[0]), as_labels(pair[1])
    if len(images) != len(labels):
        raise ValueError(f"{what}: {len(images)} images but {len(labels)} labels")
    return images, labels


def compose_setting(setting: str, real: tuple[Any, Any] | None,
                    synthetic: tuple[Any, Any] | None = None, synthetic_fraction: float = 0.3,
                    seed: int = 0, synthetic_count: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Training slices of one downstream setting.

    * ``real`` / ``real_aug``: the real slices (augmentation happens during training, see
      :func:`setting_augments`);
    * ``real_synth``: the real slices + the first ``k = round(synthetic_fraction * n_real)`` synthetic
      slices (the caller passes the synthetic set already shuffled); fewer than ``k`` available is an
      error, so every variant is compared at the same synthetic count;
    * ``synth_only``: all synthetic slices.

    ``synthetic_count`` (config ``downstream.synthetic_count``) fixes the synthetic count of both
    ``real_synth`` and ``synth_only`` instead (the first ``synthetic_count``; fewer is an error).

    The concatenation is permuted with ``seed`` (the training loop shuffles again; this only avoids
    block order in the returned arrays). Returns ``(images, labels, summary)`` with summary keys
    ``setting, n_real, n_synthetic, n, synthetic_fraction, augment, seed``.
    """
    _check_setting(setting)
    real_p = _pair(real, "real")
    synth_p = _pair(synthetic, "synthetic")
    needs_real = setting != "synth_only"
    needs_synth = setting in ("real_synth", "synth_only")
    if needs_real and (real_p is None or len(real_p[0]) == 0):
        raise ValueError(f"setting {setting!r} needs real training slices, got none")
    if needs_synth and (synth_p is None or len(synth_p[0]) == 0):
        raise ValueError(f"setting {setting!r} needs synthetic slices (images + the masks they were generated "
                         "from), got none")
    if not 0.0 <= float(synthetic_fraction):
        raise ValueError(f"synthetic_fraction must be >= 0, got {synthetic_fraction}")
    parts_i: list[torch.Tensor] = []
    parts_l: list[torch.Tensor] = []
    n_real = n_synth = 0
    if needs_real:
        assert real_p is not None
        parts_i.append(real_p[0])
        parts_l.append(real_p[1])
        n_real = len(real_p[0])
    if setting == "real_synth":
        assert synth_p is not None
        k = (int(synthetic_count) if synthetic_count is not None
             else int(math.floor(float(synthetic_fraction) * n_real + 0.5)))
        if k > len(synth_p[0]):
            asked = f"synthetic_count {k}" if synthetic_count is not None else f"{synthetic_fraction} x {n_real} real"
            raise ValueError(f"real_synth needs {k} synthetic slices ({asked}), only {len(synth_p[0])} given")
        parts_i.append(synth_p[0][:k])
        parts_l.append(synth_p[1][:k])
        n_synth = k
    elif setting == "synth_only":
        assert synth_p is not None
        k = len(synth_p[0]) if synthetic_count is None else int(synthetic_count)
        if k > len(synth_p[0]):
            raise ValueError(f"synth_only needs synthetic_count {k} synthetic slices, only {len(synth_p[0])} given")
        parts_i.append(synth_p[0][:k])
        parts_l.append(synth_p[1][:k])
        n_synth = k
    shapes = {tuple(t.shape[1:]) for t in parts_l}
    if len(shapes) != 1 or len({tuple(t.shape[2:]) for t in parts_i}) != 1:
        raise ValueError(f"real and synthetic slices differ in shape: labels {sorted(shapes)}")
    images, labels = torch.cat(parts_i), torch.cat(parts_l)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(int(seed)))
    summary = {"setting": setting, "n_real": n_real, "n_synthetic": n_synth, "n": int(len(images)),
               "synthetic_fraction": float(synthetic_fraction) if setting == "real_synth" else None,
               "augment": setting == "real_aug", "seed": int(seed)}
    return images[perm].contiguous(), labels[perm].contiguous(), summary


def _two(value: Any) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value), float(value)]
    return [float(v) for v in value]


def augmentation(cfg: Mapping[str, Any] | None = None, spatial_size: Sequence[int] = (64, 64),
                 seed: int = 0):
    """The ``real_aug`` MONAI ``Compose`` (see module docstring), seeded with ``set_random_state(seed)``.

    ``cfg``: config ``downstream.augmentation`` (``prob``, ``crop_scale``, ``rotate_range``,
    ``sigma_range``, ``translate_range``, ``scale_range``, ``shear_range``, ``elastic_spacing``,
    ``elastic_magnitude``); keys left out take the schema's defaults. ``spatial_size`` is the slice size
    the crop is resized back to.
    """
    from monai.transforms import (
        Compose,
        Identityd,
        OneOf,
        Rand2DElasticd,
        RandAffined,
        RandGaussianSmoothd,
        RandRotated,
        RandScaleCropd,
        Resized,
    )

    from medsynth.settings import section

    defaults = section("downstream")["augmentation"]
    unknown = set(dict(cfg or {})) - set(defaults)
    if unknown:
        raise ValueError(f"unknown augmentation keys {sorted(unknown)}; known: {sorted(defaults)}")
    c = section("downstream", {"augmentation": dict(cfg or {})})["augmentation"]
    p = float(c["prob"])
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation prob must be in [0, 1], got {p}")
    size = tuple(int(s) for s in spatial_size)
    keys = ("image", "label")
    modes = ("bilinear", "nearest")
    pads = ("border", "border")
    crop = Compose([
        RandScaleCropd(keys, roi_scale=float(c["crop_scale"]), random_center=True, random_size=False),
        Resized(keys, spatial_size=size, mode=("bilinear", "nearest-exact"), anti_aliasing=False),
    ])
    sigma = _two(c["sigma_range"])
    if 0.0 < p < 1.0:
        maybe_crop = OneOf([crop, Identityd(keys)], weights=[p, 1.0 - p])
    else:  # OneOf wants positive weights
        maybe_crop = crop if p == 1.0 else Identityd(keys)
    transforms = [
        maybe_crop,
        RandRotated(keys, range_x=float(c["rotate_range"]), prob=p, mode=modes, padding_mode=pads,
                    keep_size=True),
        RandGaussianSmoothd("image", sigma_x=tuple(sigma), sigma_y=tuple(sigma), prob=p),
        RandAffined(keys, prob=p, translate_range=_two(c["translate_range"]), scale_range=_two(c["scale_range"]),
                    shear_range=_two(c["shear_range"]), mode=modes, padding_mode=pads),
        Rand2DElasticd(keys, spacing=tuple(int(s) for s in _two(c["elastic_spacing"])),
                       magnitude_range=tuple(_two(c["elastic_magnitude"])), prob=p, mode=modes, padding_mode=pads),
    ]
    return Compose(transforms).set_random_state(seed=int(seed) % (2**32))


def _plain(x: Any) -> torch.Tensor:
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return x.float()


def apply_augmentation(transform, images: torch.Tensor, labels: torch.Tensor, seed: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``transform`` sample by sample on the CPU; labels are re-binarised (``> 0.5``).

    ``seed`` (optional) re-seeds the transform first (``set_random_state``), so the result is a
    function of ``(seed, images, labels)`` alone.
    """
    if seed is not None:
        transform.set_random_state(seed=int(seed) % (2**32))
    out_i, out_l = [], []
    for x, y in zip(images.detach().cpu().float(), labels.detach().cpu().float()):
        d = transform({"image": x, "label": y})
        out_i.append(_plain(d["image"]).clamp(-1.0, 1.0))
        out_l.append((_plain(d["label"]) > 0.5).float())
    return torch.stack(out_i), torch.stack(out_l)
