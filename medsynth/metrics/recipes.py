"""The Frechet-distance recipe of a pretrained feature extractor, as data (config ``metrics.fd_recipes``).

Published CT FIDs differ by orders of magnitude between groups because the recipe is implicit. Here
every step is a config value, recorded beside each value it made:

``hu_window`` ``[lo, hi]``
    CT images (model units, [-1, 1] over ``intensity.ct_hu_range``) are mapped back to HU and clipped
    to this window; ``null``: the model's own range (for MR, always: no HU).
``scaling``
    how the clipped intensities reach [0, 1]: ``window`` (``(HU - lo) / (hi - lo)``, the same for every
    image) or ``minmax`` (MAISI's script: one min-max over the slices of one plane of one volume; a 2D
    run has no volume, so one min-max per slice).
``mean``, ``std``
    subtracted from / divided into the 3-channel [0, 1] image (grey repeated to R = G = B); ``null``:
    none. MAISI: ImageNet's mean in BGR order ``(0.406, 0.456, 0.485)``, no std.
``size``
    ``[H, W]`` the slices are resized to (bilinear, antialiased) before the network; ``null``: as they
    are (MAISI: no resizing).
``central_fraction``
    volumes only: the central fraction of the slices along each axis that enter each plane's FD
    (MAISI's published evaluation: 0.4); the value is the mean of the XY, YZ and ZX planes' FDs.

Features are the spatial mean of the network's output map. The images reach the network through
torch-fidelity's feature-extraction loop (8-bit images: a 2000 HU window is quantised in ~8 HU
steps), and the Frechet distance is torch-fidelity's (which agrees with MONAI's ``FIDMetric``,
``tests/test_metrics.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["FDRecipe", "RecipeEncoder", "fd_recipe", "recipe_unit_images"]

SCALINGS = ("window", "minmax")


@dataclass(frozen=True)
class FDRecipe:
    """One extractor's recipe (module docstring)."""

    hu_window: tuple[float, float] | None = None
    scaling: str = "window"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    size: tuple[int, int] | None = None
    central_fraction: float = 0.4

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise ValueError(f"fd recipe scaling = {self.scaling!r}: choose one of {', '.join(SCALINGS)}")
        if self.hu_window is not None and not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"fd recipe hu_window {list(self.hu_window)} must be [lo, hi] with lo < hi")
        if not 0.0 < self.central_fraction <= 1.0:
            raise ValueError(f"fd recipe central_fraction {self.central_fraction} must be in (0, 1]")

    def record(self) -> dict:
        """The recipe as JSON-ready data, for the metrics record."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _pair(v: Sequence | None, cast=float) -> tuple | None:
    return None if v is None else tuple(cast(x) for x in v)


def fd_recipe(cfg: Mapping) -> FDRecipe:
    """The :class:`FDRecipe` of a complete ``metrics.fd_recipes.<extractor>`` section (validated, or
    ``section("metrics")["fd_recipes"][name]``: the defaults are the schema's, which differ per extractor);
    ``mean``, ``std`` and ``size`` left out (inception has none) are none."""
    return FDRecipe(hu_window=_pair(cfg["hu_window"]), scaling=str(cfg["scaling"]),
                    mean=_pair(cfg.get("mean")), std=_pair(cfg.get("std")), size=_pair(cfg.get("size"), int),
                    central_fraction=float(cfg["central_fraction"]))


def recipe_unit_images(images: torch.Tensor, recipe: FDRecipe, hu_range: Sequence[float] | None,
                       groups: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, 1, H, W]`` model-unit images in [0, 1] as ``recipe`` maps them (module docstring).

    ``hu_range``: the CT normalisation range (``intensity.ct_hu_range``), ``None`` for MR (no HU: the
    model's [-1, 1] range is the window). ``groups``: ``(N,)`` ids of the plane stack each slice belongs
    to (one volume's slices of one plane), for ``minmax``; ``None``: every slice its own group.
    """
    x = images.float()
    if hu_range is not None:
        lo, hi = float(hu_range[0]), float(hu_range[1])
        x = (x + 1.0) / 2.0 * (hi - lo) + lo  # HU
        lo, hi = recipe.hu_window if recipe.hu_window is not None else (lo, hi)
    else:
        lo, hi = -1.0, 1.0
    x = x.clamp(lo, hi)
    if recipe.scaling == "window":
        return (x - lo) / (hi - lo)
    ids = torch.arange(len(x)) if groups is None else torch.as_tensor(groups)
    out = torch.empty_like(x)
    for g in torch.unique(ids):
        sel = ids == g
        v = x[sel]
        low, high = v.min(), v.max()
        out[sel] = (v - low) / (high - low) if high > low else torch.zeros_like(v)
    return out


class RecipeEncoder(nn.Module):
    """A pretrained 2D network behind ``recipe``'s input normalisation, for torch-fidelity.

    Takes what :class:`~medsynth.metrics.features.ModuleFeatureExtractor` passes (one channel in
    [-1, 1], i.e. the [0, 1] recipe images rescaled) and returns the network's output map (the extractor
    averages it over space).
    """

    def __init__(self, net: nn.Module, recipe: FDRecipe):
        super().__init__()
        self.net, self.recipe = net, recipe
        for name, value in (("mean", recipe.mean), ("std", recipe.std)):
            self.register_buffer(name, None if value is None else torch.tensor(value).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x01 = (x + 1.0) / 2.0
        if self.recipe.size is not None and tuple(x01.shape[2:]) != self.recipe.size:
            x01 = nn.functional.interpolate(x01, size=self.recipe.size, mode="bilinear", align_corners=False,
                                            antialias=True)
        rgb = x01.expand(-1, 3, -1, -1)
        if self.mean is not None:
            rgb = rgb - self.mean.to(rgb)
        if self.std is not None:
            rgb = rgb / self.std.to(rgb)
        return self.net(rgb)
