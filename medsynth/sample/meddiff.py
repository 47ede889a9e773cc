"""MedDiff-FT inference tools: guided inpainting, stochastic masks, mask erosion, quality filter.

MedDiff-FT (Xie et al., MICCAI 2025, arXiv 2507.00377; ``/work/shared/seeds/003_*.txt``) adds four
tools around a fine-tuned inpainting diffusion model at inference time (abstract and Sec. "Inference"):

* a *dynamic adaptive guiding mask* that confines synthesis to the lesion / ROI while the rest of the
  image is kept (:func:`guided_inpaint_euler`);
* a *lightweight stochastic mask generator* that creates new masks with "hierarchical randomness
  injection" for diversity (:func:`stochastic_masks`);
* an *automated quality assessment* that "filters suboptimal outputs using feature-space metrics"
  (:func:`quality_filter`);
* *mask erosion* ("mask corrosion") of the paired label to "refine fidelity" (:func:`erode_masks`).

The seed copy of the paper holds only its abstract and the released code (``JianhaoXie1/MedDiff-FT``)
only the diffusers inpainting call, so the concrete rules below are this module's reading of those
sentences; every function states which choices are ours.

Flow conventions follow :mod:`medsynth.sample.solvers`: ``x0`` data, ``x1`` noise,
``x_t = (1 - t) x0 + t x1``, velocity ``v = x1 - x0``, sampling integrates ``t`` from 1 to 0, and a
field is ``field(x, t_vec) -> Tensor``. Masks are binary channels ``(N, C, *spatial)`` with 2 or 3
spatial axes. Morphology is :mod:`scipy.ndimage` (binary dilation / erosion with the
connectivity-1 structuring element), applied on CPU.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from medsynth.objectives.rectified_flow import euler_step
from medsynth.sample.solvers import Field, time_grid

__all__ = [
    "INPAINT_SCHEDULES",
    "QUALITY_METHODS",
    "guided_inpaint_euler",
    "stochastic_masks",
    "erode_masks",
    "quality_filter",
]

#: Guiding-mask schedules of :func:`guided_inpaint_euler`.
INPAINT_SCHEDULES: tuple[str, ...] = ("static", "shrink")
#: Feature-space scores of :func:`quality_filter`.
QUALITY_METHODS: tuple[str, ...] = ("mahalanobis", "knn")


def _structure(spatial_ndim: int, lead: int, connectivity: int = 1) -> np.ndarray:
    """Connectivity structuring element over the last ``spatial_ndim`` axes, size 1 on ``lead`` axes."""
    st = ndimage.generate_binary_structure(spatial_ndim, connectivity)
    return st.reshape((1,) * lead + st.shape)


def _dilate(mask: np.ndarray, radius: int, spatial_ndim: int) -> np.ndarray:
    """Binary dilation of the last ``spatial_ndim`` axes, ``radius`` iterations (0: unchanged copy)."""
    if radius <= 0:
        return mask.copy()
    st = _structure(spatial_ndim, mask.ndim - spatial_ndim)
    return ndimage.binary_dilation(mask, structure=st, iterations=int(radius))


def _erode(mask: np.ndarray, radius: int, spatial_ndim: int, connectivity: int = 1) -> np.ndarray:
    """Binary erosion of the last ``spatial_ndim`` axes, ``radius`` iterations (0: unchanged copy)."""
    if radius <= 0:
        return mask.copy()
    st = _structure(spatial_ndim, mask.ndim - spatial_ndim, connectivity)
    return ndimage.binary_erosion(mask, structure=st, iterations=int(radius))


def _to_numpy_bool(masks: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().float().numpy()
    return np.asarray(masks) > 0.5


def _like(out: np.ndarray, ref: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Boolean array -> tensor with ``ref``'s dtype (float32 for numpy input) and device."""
    t = torch.from_numpy(np.ascontiguousarray(out))
    if isinstance(ref, torch.Tensor):
        return t.to(dtype=ref.dtype, device=ref.device)
    return t.to(torch.float32)


def guided_inpaint_euler(
    field: Field,
    x1: torch.Tensor,
    known_x0: torch.Tensor,
    keep_mask: torch.Tensor,
    steps: int,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    schedule: Literal["static", "shrink"] = "static",
    max_dilate: int = 2,
) -> torch.Tensor:
    """Euler sampling with MedDiff-FT's guiding mask (inference, "dynamic adaptive guiding mask").

    Euler steps on :func:`~medsynth.sample.solvers.time_grid` ``(steps, shift)`` from ``x1`` (``t = 1``);
    after every step to time ``t'`` the kept region is overwritten by the known image noised to ``t'``,
    ``x <- k * ((1 - t') known_x0 + t' eps) + (1 - k) * x``, so only the ROI (``keep_mask == 0``, the
    lesion) is synthesised and, at ``t' = 0``, the kept region equals ``known_x0`` exactly. ``eps`` is
    ``x1`` itself (one noise draw, deterministic) when ``generator`` is ``None``, otherwise a fresh
    ``N(0, I)`` draw from ``generator`` at every step (RePaint-style re-noising of the known part).

    ``keep_mask`` broadcasts to ``x1`` (e.g. ``(N, 1, *spatial)`` or ``(1, 1, *spatial)``); with
    ``schedule="static"`` it may be soft (values in [0, 1] blend). ``schedule="shrink"`` is our reading of
    the *dynamic adaptive* mask: the ROI ``keep_mask < 0.5`` is dilated by ``round(max_dilate * t')``
    voxels (connectivity-1 steps) after the step to ``t'``, i.e. a generous region is free early, when
    the coarse layout forms and the lesion must blend into its surroundings, and the region tightens
    to the exact ROI as ``t' -> 0`` (so the final outside still equals ``known_x0``). ``steps`` NFE.
    """
    if schedule not in INPAINT_SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(INPAINT_SCHEDULES)}")
    if known_x0.shape != x1.shape:
        raise ValueError(f"known_x0 shape {tuple(known_x0.shape)} != x1 shape {tuple(x1.shape)}")
    if int(max_dilate) != max_dilate or max_dilate < 0:
        raise ValueError(f"max_dilate must be an integer >= 0, got {max_dilate!r}")
    if keep_mask.ndim > x1.ndim:
        raise ValueError(f"keep_mask has more axes ({keep_mask.ndim}) than x ({x1.ndim})")
    keep = keep_mask.reshape((1,) * (x1.ndim - keep_mask.ndim) + tuple(keep_mask.shape))
    keep = keep.to(device=x1.device, dtype=x1.dtype)
    torch.broadcast_shapes(keep.shape, x1.shape)  # raises on a non-broadcastable mask
    known = known_x0.to(device=x1.device, dtype=x1.dtype)

    keep_by_radius: dict[int, torch.Tensor] = {}
    if schedule == "shrink":
        roi = keep.detach().cpu().float().numpy() < 0.5
        spatial = max(x1.ndim - 2, 1)
        for r in range(int(max_dilate) + 1):
            keep_by_radius[r] = torch.from_numpy(~_dilate(roi, r, spatial)).to(device=x1.device, dtype=x1.dtype)

    ts = time_grid(steps, shift, dtype=torch.float64).tolist()
    x = x1
    for t, t_next in zip(ts[:-1], ts[1:]):
        t_vec = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        x = euler_step(x, field(x, t_vec), t, t_next)
        if generator is None:
            eps = x1
        else:
            eps = torch.randn(x1.shape, generator=generator, device=generator.device, dtype=x1.dtype).to(x1.device)
        known_t = (1.0 - t_next) * known + t_next * eps
        k = keep if schedule == "static" else keep_by_radius[int(round(max_dilate * t_next))]
        x = k * known_t + (1.0 - k) * x
    return x


def stochastic_masks(
    masks: torch.Tensor | np.ndarray,
    n: int,
    generator: torch.Generator | None,
    *,
    max_union: int = 2,
    p_perturb: float = 0.5,
    max_shift: int = 3,
    max_dilate: int = 1,
) -> torch.Tensor:
    """``n`` new binary masks ``(n, C, *spatial)`` from real ones (MedDiff-FT "stochastic mask generator").

    MedDiff-FT generates masks with a lightweight model and "hierarchical randomness injection"; this
    training-free stand-in injects randomness at two levels (our reading):

    1. *sample level*: ``k ~ U{1..min(max_union, N)}`` distinct real masks are drawn, with Dirichlet(1)
       weights ``w`` (normalised ``Exp(1)`` draws); the soft mask ``s = sum_i w_i m_i`` is thresholded at
       ``tau ~ U(0, max_i w_i]``. A small ``tau`` gives the plain union, ``tau`` near ``max w`` keeps the
       heaviest source plus what the others agree on; the heaviest source is always contained, so a
       channel present in any chosen source stays present.
    2. *channel level*: with probability ``p_perturb`` each non-empty channel is shifted by an integer
       offset in ``[-max_shift, max_shift]`` per spatial axis (zero fill) and dilated (``r > 0``) or
       eroded (``r < 0``) by ``r ~ U{-max_dilate..max_dilate}`` connectivity-1 iterations
       (:mod:`scipy.ndimage`). A perturbation that would empty the channel is dropped.

    No flips: left/right anatomy is not symmetric and the paper does not use them. All draws come from
    ``generator`` (torch), so equal seeds give equal masks. The result has ``masks``' dtype and device.
    """
    m = _to_numpy_bool(masks)
    if m.ndim < 3:
        raise ValueError(f"masks must be (N, C, *spatial), got shape {m.shape}")
    if int(n) != n or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if max_union < 1 or max_shift < 0 or max_dilate < 0 or not 0.0 <= p_perturb <= 1.0:
        raise ValueError("need max_union >= 1, max_shift >= 0, max_dilate >= 0 and 0 <= p_perturb <= 1")
    n_real, n_ch = m.shape[:2]
    if n_real == 0:
        raise ValueError("need at least one real mask")
    spatial = m.ndim - 2
    k_max = min(int(max_union), n_real)
    out = np.zeros((int(n),) + m.shape[1:], dtype=bool)

    def randint(low: int, high: int, size: int = 1) -> list[int]:
        return torch.randint(low, high + 1, (size,), generator=generator).tolist()

    def uniform(size: int = 1) -> np.ndarray:
        return torch.rand(size, generator=generator, dtype=torch.float64).numpy()

    for i in range(int(n)):
        k = randint(1, k_max)[0]
        src = torch.randperm(n_real, generator=generator)[:k].numpy()
        w = -np.log1p(-uniform(k))  # Exp(1); normalised -> Dirichlet(1)
        w = w / w.sum() if w.sum() > 0 else np.full(k, 1.0 / k)
        tau = float(w.max()) * (1.0 - float(uniform()[0]))  # in (0, max w]
        soft = np.tensordot(w, m[src].astype(np.float64), axes=1)
        base = soft >= tau - 1e-12
        for c in range(n_ch):
            mc = base[c]
            if mc.any() and uniform()[0] < p_perturb:
                offs = randint(-int(max_shift), int(max_shift), spatial)
                pert = ndimage.shift(mc.astype(np.uint8), offs, order=0, mode="constant", cval=0) > 0
                r = randint(-int(max_dilate), int(max_dilate))[0]
                pert = _dilate(pert, r, spatial) if r >= 0 else _erode(pert, -r, spatial)
                if pert.any():
                    mc = pert
            out[i, c] = mc
    return _like(out, masks)


def erode_masks(masks: torch.Tensor | np.ndarray, iterations: int = 1, *, connectivity: int = 1) -> torch.Tensor:
    """Binary erosion of every channel of ``(N, C, *spatial)`` masks (MedDiff-FT "mask erosion").

    MedDiff-FT erodes the label paired with a synthetic image so that its boundary lies inside the
    synthesised lesion, whose rim is the least reliable part ("mask corrosion to refine fidelity").
    :func:`scipy.ndimage.binary_erosion` with the ``connectivity`` structuring element over the spatial
    axes only (1: cross, ``spatial``: full box), ``iterations`` times; voxels outside the image count as
    background (scipy's default), so a mask touching the border is eroded there too. ``iterations = 0``
    returns the binarised input. Same dtype and device as ``masks`` (float32 for numpy input).
    """
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    m = _to_numpy_bool(masks)
    if m.ndim < 3:
        raise ValueError(f"masks must be (N, C, *spatial), got shape {m.shape}")
    spatial = m.ndim - 2
    if not 1 <= connectivity <= spatial:
        raise ValueError(f"connectivity must be in [1, {spatial}], got {connectivity}")
    return _like(_erode(m, int(iterations), spatial, connectivity), masks)


def quality_filter(
    features_real: torch.Tensor,
    features_fake: torch.Tensor,
    keep_fraction: float | None = None,
    threshold: float | None = None,
    *,
    method: Literal["mahalanobis", "knn"] = "mahalanobis",
    k: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score generated samples by feature-space distance to the real set and keep the best ones.

    MedDiff-FT's "automated quality assessment protocol filters suboptimal outputs using feature-space
    metrics"; the metric is not given in the seed text, so the scores here are (lower is better):

    * ``"mahalanobis"`` (default): distance of each fake feature to the Gaussian fitted to the real
      features, the per-sample analogue of the Fréchet distance. MedDiff-FT fine-tunes on few real
      samples (often ``N < D``), so the covariance is the Ledoit-Wolf shrinkage estimate
      (:class:`sklearn.covariance.LedoitWolf`), which stays invertible; needs ``N >= 2``.
    * ``"knn"``: mean Euclidean distance to the ``min(k, N)`` nearest real features.

    ``threshold`` keeps scores ``<= threshold``; ``keep_fraction`` keeps the ``round(keep_fraction * M)``
    best scores (ties by index). Given both, a sample must meet both; given neither, all are kept.
    Returns ``(keep (M,) bool, scores (M,) float32)`` on ``features_fake``'s device.
    """
    if method not in QUALITY_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(QUALITY_METHODS)}")
    real = features_real.detach().cpu().double().reshape(features_real.shape[0], -1)
    fake = features_fake.detach().cpu().double().reshape(features_fake.shape[0], -1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if keep_fraction is not None and not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    m = fake.shape[0]
    if method == "mahalanobis":
        if real.shape[0] < 2:
            raise ValueError("the Mahalanobis score needs at least 2 real feature vectors")
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(real.numpy())
        d2 = lw.mahalanobis(fake.numpy()) if m else np.zeros(0)
        scores = torch.from_numpy(np.sqrt(np.maximum(d2, 0.0)))
    else:
        if real.shape[0] < 1 or k < 1:
            raise ValueError("the k-NN score needs at least 1 real feature vector and k >= 1")
        kk = min(int(k), real.shape[0])
        scores = torch.cdist(fake, real).topk(kk, dim=1, largest=False).values.mean(dim=1)
    scores = scores.to(torch.float32)  # the returned scores decide, so a caller's threshold agrees
    keep = torch.ones(m, dtype=torch.bool)
    if threshold is not None:
        keep &= scores <= float(threshold)
    if keep_fraction is not None:
        count = int(math.floor(keep_fraction * m + 0.5))
        best = torch.zeros(m, dtype=torch.bool)
        best[torch.argsort(scores, stable=True)[:count]] = True
        keep &= best
    device = features_fake.device
    return keep.to(device), scores.to(device)

