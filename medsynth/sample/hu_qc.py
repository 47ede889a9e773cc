"""MAISI HU-intensity quality check of generated CT and regeneration until it passes.

MAISI-v2 (``/work/shared/seeds/002_*.txt``, "Loss & Training", quality check): "the median HU values
of major organs in generated CTs are verified to fall within physiological ranges (based on
5th/95th percentiles or 6-sigma bounds from training data)". MONAI's MAISI ``quality_check.py``
implements it as: per organ, the median HU inside the organ label of every training CT; bounds
``mean +/- 6 std`` (``sigma_6_low/high``) and the 0.5th / 99.5th percentiles of those medians; a
generated CT is an outlier when one organ's median lies outside ``[low, high]``; labels absent from
the image are not checked. Generated CTs that fail are regenerated.

:func:`organ_hu_bounds` builds the bounds from the real training split, :func:`hu_check` applies
them, :func:`regenerate_until_pass` re-samples the failures. Images are in HU (convert model-space
images with :func:`medsynth.metrics.windows.model_to_hu`); masks are binary channels
``(N, C, *spatial)`` named by ``names`` (liver, lungs, bone, kidneys, spleen, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "HU_BOUND_METHODS",
    "bounds_from_medians",
    "organ_medians",
    "organ_hu_bounds",
    "hu_check",
    "regenerate_until_pass",
]

#: Bound rules of :func:`organ_hu_bounds`.
HU_BOUND_METHODS: tuple[str, ...] = ("sigma", "percentile", "union")

ArrayLike = torch.Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(images_hu: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(N, *spatial)`` HU values and ``(N, C, *spatial)`` boolean masks, shapes checked."""
    img = _np(images_hu)
    msk = _np(masks) > 0.5
    if msk.ndim < 3:
        raise ValueError(f"masks must be (N, C, *spatial), got shape {msk.shape}")
    if img.ndim == msk.ndim:
        if img.shape[1] != 1:
            raise ValueError(f"images_hu must have one channel, got shape {img.shape}")
        img = img[:, 0]
    if img.shape != (msk.shape[0],) + msk.shape[2:]:
        raise ValueError(f"images_hu shape {img.shape} does not match masks shape {msk.shape}")
    return img, msk


def organ_medians(images_hu: ArrayLike, masks: ArrayLike) -> np.ndarray:
    """``(N, C)`` median HU inside each mask channel (NaN where the organ is absent or all NaN).

    ``images_hu`` is ``(N, 1, *spatial)`` or ``(N, *spatial)``; ``masks`` ``(N, C, *spatial)``, binarised
    at 0.5. NaN voxels are ignored, as in MAISI (``np.nanmedian``).
    """
    img, msk = _pair(images_hu, masks)
    out = np.full(msk.shape[:2], np.nan)
    for i in range(msk.shape[0]):
        for c in range(msk.shape[1]):
            vals = img[i][msk[i, c]]
            vals = vals[~np.isnan(vals)]
            if vals.size:
                out[i, c] = float(np.median(vals))
    return out


def organ_hu_bounds(
    images_hu: ArrayLike,
    masks: ArrayLike,
    names: Sequence[str],
    method: Literal["sigma", "percentile", "union"] = "sigma",
    k: float = 6.0,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> dict[str, tuple[float, float]]:
    """Per-organ HU bounds on the per-sample organ median from the real training split (MAISI QC).

    For channel ``c`` named ``names[c]``, the medians of the samples that contain the organ give
    ``mean +/- k * std`` (``"sigma"``, population std, MAISI's 6-sigma rule), the ``percentiles`` of the
    medians (``"percentile"``; MONAI's MAISI uses 0.5 / 99.5, the paper text says 5 / 95) or the wider
    of the two (``"union"``: ``min`` of the lows, ``max`` of the highs, MONAI's ``is_outlier``). A
    channel present in fewer than 2 samples has no meaningful spread and gets **no entry**, so
    :func:`hu_check` does not check it. Returns ``{name: (low, high)}`` in channel order.
    """
    return bounds_from_medians(organ_medians(images_hu, masks), names, method, k, percentiles)


def bounds_from_medians(
    med: np.ndarray,
    names: Sequence[str],
    method: Literal["sigma", "percentile", "union"] = "sigma",
    k: float = 6.0,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> dict[str, tuple[float, float]]:
    """:func:`organ_hu_bounds` from the ``(N, C)`` per-sample organ medians (:func:`organ_medians`), which a
    caller may compute shard by shard and concatenate: the medians are per sample, so the bounds are the same."""
    if method not in HU_BOUND_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(HU_BOUND_METHODS)}")
    lo_p, hi_p = (float(p) for p in percentiles)
    if not 0.0 <= lo_p <= hi_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low <= high <= 100, got {percentiles}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if len(names) != med.shape[1]:
        raise ValueError(f"{len(names)} names for {med.shape[1]} mask channels")
    bounds: dict[str, tuple[float, float]] = {}
    for c, name in enumerate(names):
        vals = med[:, c][~np.isnan(med[:, c])]
        if vals.size < 2:
            continue
        mean, std = float(vals.mean()), float(vals.std())
        sig = (mean - k * std, mean + k * std)
        pct = (float(np.percentile(vals, lo_p)), float(np.percentile(vals, hi_p)))
        if method == "sigma":
            bounds[name] = sig
        elif method == "percentile":
            bounds[name] = pct
        else:
            bounds[name] = (min(sig[0], pct[0]), max(sig[1], pct[1]))
    return bounds


def hu_check(
    images_hu: ArrayLike,
    masks: ArrayLike,
    bounds: Mapping[str, tuple[float, float]],
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """MAISI quality check: a sample passes when every bounded organ in its mask has its median in bounds.

    ``names`` names the mask channels; when omitted, ``bounds`` must have one entry per channel and its
    key order is taken as the channel order. Organs absent from a sample's mask and channels without a
    bound are not checked (MAISI skips them). Bounds are inclusive.

    Returns ``(passed (N,) bool, details)``, ``details[i] = {"passed": bool, "failed": [names],
    "organs": {name: {"median": float | None, "low": float, "high": float, "ok": bool}}}`` listing every
    bounded channel (``median`` ``None`` and ``ok`` ``True`` when the organ is absent).
    """
    med = organ_medians(images_hu, masks)
    n_ch = med.shape[1]
    if names is None:
        if len(bounds) != n_ch:
            raise ValueError(f"{len(bounds)} bounds for {n_ch} mask channels: pass names=")
        names = list(bounds)
    if len(names) != n_ch:
        raise ValueError(f"{len(names)} names for {n_ch} mask channels")
    passed = np.ones(med.shape[0], dtype=bool)
    details: list[dict[str, Any]] = []
    for i in range(med.shape[0]):
        organs: dict[str, dict[str, Any]] = {}
        failed: list[str] = []
        for c, name in enumerate(names):
            if name not in bounds:
                continue
            low, high = (float(b) for b in bounds[name])
            value = med[i, c]
            present = not np.isnan(value)
            ok = (not present) or (low <= value <= high)
            organs[name] = {"median": float(value) if present else None, "low": low, "high": high, "ok": bool(ok)}
            if not ok:
                failed.append(name)
        passed[i] = not failed
        details.append({"passed": bool(passed[i]), "failed": failed, "organs": organs})
    return torch.from_numpy(passed), details


def regenerate_until_pass(
    generate_fn: Callable[[torch.Tensor, int], torch.Tensor],
    check_fn: Callable[[torch.Tensor, torch.Tensor], Any],
    n: int,
    max_tries: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Generate ``n`` samples and regenerate the ones failing ``check_fn``, at most ``max_tries`` attempts each.

    ``generate_fn(indices, attempt)`` returns the images for ``indices`` (a ``long`` tensor of sample
    indices; ``attempt`` counts from 0, so it can offset a seed). ``check_fn(images, indices)`` returns a
    ``(len(indices),)`` bool tensor / array, or a tuple whose first item is one (e.g. a closure over
    :func:`hu_check` that picks the masks of ``indices``). Attempt 0 generates all samples; attempt
    ``a`` regenerates those that have failed every attempt so far. A sample that never passes keeps its
    last attempt's image (the MAISI pipeline then reports it as failed).

    Returns ``(images (n, ...), passed (n,) bool, tries_per_sample (n,) long, pass_rate)`` where
    ``tries_per_sample`` is the number of attempts made for each sample and ``pass_rate`` the fraction
    that passed within ``max_tries``.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if int(max_tries) != max_tries or max_tries < 1:
        raise ValueError(f"max_tries must be an integer >= 1, got {max_tries!r}")

    def run_check(images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        res = check_fn(images, idx)
        if isinstance(res, tuple):
            res = res[0]
        ok = torch.as_tensor(res).to(torch.bool).cpu().reshape(-1)
        if ok.numel() != idx.numel():
            raise ValueError(f"check_fn returned {ok.numel()} results for {idx.numel()} samples")
        return ok

    idx = torch.arange(int(n))
    images = generate_fn(idx, 0).clone()
    if images.shape[0] != n:
        raise ValueError(f"generate_fn returned {images.shape[0]} images for {n} indices")
    passed = run_check(images, idx)
    tries = torch.ones(int(n), dtype=torch.long)
    for attempt in range(1, int(max_tries)):
        pending = torch.nonzero(~passed).flatten()
        if pending.numel() == 0:
            break
        new = generate_fn(pending, attempt)
        if new.shape[0] != pending.numel():
            raise ValueError(f"generate_fn returned {new.shape[0]} images for {pending.numel()} indices")
        images[pending.to(images.device)] = new.to(device=images.device, dtype=images.dtype)
        passed[pending] = run_check(new, pending)
        tries[pending] += 1
    return images, passed, tries, float(passed.float().mean())
