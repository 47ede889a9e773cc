"""Fréchet and kernel distances between real and synthetic image sets, computed by torch-fidelity.

* :func:`frechet_metrics`: Fréchet distance (FD, the FID formula) and KID (polynomial-kernel MMD over
  random subsets) of two sets of ``[N, 1, H, W]`` images in [0, 1], in the feature space of any
  registered torch-fidelity extractor (:mod:`medsynth.metrics.features`).
* :func:`inception_fid`: FID/KID with torch-fidelity's InceptionV3, only when local weights exist
  (:func:`~medsynth.metrics.features.inception_weights`); otherwise ``fid: None`` with an
  ``"unavailable: ..."`` status and torch-fidelity is not called.
* :func:`per_window_fd`: 2D CT slice sets, FD per radiology window plus the mean over windows
  (MedSyn2 Table 1, FID under lung / vessel / soft-tissue / bone windows, for 2D studies).
* :func:`per_plane_windowed_fd`: 3D CT volumes, FD per window and per plane on the central slices of
  each axis (MAISI's "2.5D" FID: axial, sagittal, coronal slices, central 40 %), with the mean over
  planes per window and the overall mean (MedSyn2 Table 1 for 3D studies).

Volumes are ``[N, 1, X, Y, Z]`` in the project's canonical RAS axis order (array axes 2, 3, 4 =
x: right-left, y: posterior-anterior, z: inferior-superior; as written by
:mod:`medsynth.preprocess.trainsets`). Planes (:data:`PLANES`): **axial** = XY slices taken along
axis 4 (z), **sagittal** = YZ slices along axis 2 (x), **coronal** = ZX slices along axis 3 (y).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medsynth.metrics.features import INCEPTION_EXTRACTOR, inception_weights
from medsynth.metrics.windows import windowed

__all__ = [
    "PLANES",
    "PLANE_LABELS",
    "UInt8ImageDataset",
    "central_slices",
    "extract_features",
    "frechet_distance",
    "frechet_distance_lowrank",
    "frechet_metrics",
    "inception_fid",
    "per_plane_windowed_fd",
    "per_window_fd",
    "to_uint8_rgb",
]

PLANES: dict[str, int] = {"axial": 4, "sagittal": 2, "coronal": 3}
"""Plane name -> array axis of an ``[N, 1, X, Y, Z]`` volume that the slices are taken along."""
PLANE_LABELS: dict[str, str] = {"axial": "XY", "sagittal": "YZ", "coronal": "ZX"}
"""Plane name -> the in-plane axes, MedSyn2 Table 1's plane labels."""


def _tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


def to_uint8_rgb(x01: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``[N, 1, H, W]`` values in [0, 1] (clipped) -> ``uint8 [N, 3, H, W]`` grey RGB, torch-fidelity's input."""
    x = _tensor(x01)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected [N, 1, H, W] images, got shape {tuple(x.shape)}")
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


class UInt8ImageDataset(Dataset):
    """A dataset of ``uint8 [3, H, W]`` tensors (what torch-fidelity reads) from ``[N, 1, H, W]`` in [0, 1]."""

    def __init__(self, x01: torch.Tensor | np.ndarray):
        self.images = to_uint8_rgb(x01)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _feature_layer(extractor: str, feature_layer: str | None) -> str:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"feature extractor {extractor!r} is not registered with torch-fidelity")
    return feature_layer or FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric("fid")


def extract_features(sets: Sequence[torch.Tensor | np.ndarray], extractor: str, *, weights_path: str | None = None,
                     feature_layer: str | None = None, batch_size: int = 64, cuda: bool = False) -> list[torch.Tensor]:
    """``[N, D]`` features of each image set (``[N, 1, H, W]`` in [0, 1]) with one torch-fidelity extractor,
    through torch-fidelity's own feature pass (what ``calculate_metrics`` computes its statistics from)."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    layer = _feature_layer(extractor, feature_layer)
    kwargs = {"feature_extractor_weights_path": str(weights_path)} if weights_path is not None else {}
    net = create_feature_extractor(extractor, [layer], cuda=bool(cuda), verbose=False, **kwargs)
    return [get_featuresdict_from_dataset(UInt8ImageDataset(x), net, int(batch_size), bool(cuda), True, False)[layer]
            for x in sets]


def frechet_distance(real_features: torch.Tensor | np.ndarray, fake_features: torch.Tensor | np.ndarray) -> float:
    """The Fréchet distance of two ``[N, D]`` feature sets (torch-fidelity's statistics and formula)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(torch.as_tensor(f)) for f in (real_features, fake_features)]
    return float(fid_statistics_to_metric(stats[0], stats[1], False)[KEY_METRIC_FID])


def frechet_distance_lowrank(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """The same Fréchet distance as :func:`frechet_distance`, from the ``N x M`` cross matrix of the centred
    features instead of ``D x D`` covariances: with ``A``, ``B`` the centred feature rows,
    ``tr sqrt(S_a S_b)`` is the sum of the singular values of ``A B^T`` over ``sqrt((N-1)(M-1))``.
    Cheap when ``N, M << D`` (bootstrap replicates of 2048-d Inception features)."""
    a = np.asarray(real_features, dtype=np.float64)
    b = np.asarray(fake_features, dtype=np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    a, b = a - mu_a, b - mu_b
    na, nb = len(a) - 1, len(b) - 1
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(na * nb)
    diff = mu_a - mu_b
    return float(diff @ diff + (a * a).sum() / na + (b * b).sum() / nb - 2.0 * cross)


def frechet_metrics(real01: torch.Tensor | np.ndarray, fake01: torch.Tensor | np.ndarray, extractor: str, *,
                    kid: bool = True, kid_subset_size: int | None = None, kid_subsets: int = 100,
                    weights_path: str | None = None, feature_layer: str | None = None, batch_size: int = 64,
                    cuda: bool = False, rng_seed: int = 2020, return_features: bool = False) -> dict:
    """FD and KID between ``real01`` and ``fake01`` (``[N, 1, H, W]`` in [0, 1]), computed as torch-fidelity's
    ``calculate_metrics`` does (its feature pass, statistics, FID formula and KID subsets).

    ``extractor``: a registered torch-fidelity feature extractor name; ``feature_layer`` defaults to
    the extractor's FID layer (also used for KID). ``kid_subset_size`` defaults to
    ``min(n_real, n_fake, 1000)`` and may not exceed ``min(n_real, n_fake)``. ``weights_path`` is
    forwarded as ``feature_extractor_weights_path`` (Inception: load locally, no download). Nothing is
    cached on disk. Returns ``{"fd", "kid_mean", "kid_std", "n_real", "n_fake", "extractor",
    "feature_layer"}`` (KID values ``None`` when ``kid`` is false), and ``"features"`` (real, fake
    ``[N, D]``) with ``return_features`` (for bootstrap intervals).
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    n_real, n_fake = len(real01), len(fake01)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"Fréchet/kernel distances need at least 2 images per set, got n_real={n_real}, "
                         f"n_fake={n_fake}")
    layer = _feature_layer(extractor, feature_layer)
    subset = min(n_real, n_fake, 1000) if kid_subset_size is None else int(kid_subset_size)
    if kid and not 2 <= subset <= min(n_real, n_fake):
        raise ValueError(f"kid_subset_size must be in [2, min(n_real, n_fake) = {min(n_real, n_fake)}], got {subset}")
    real_f, fake_f = extract_features([real01, fake01], extractor, weights_path=weights_path, feature_layer=layer,
                                      batch_size=batch_size, cuda=cuda)
    out = {"fd": frechet_distance(real_f, fake_f), "kid_mean": None, "kid_std": None, "n_real": n_real,
           "n_fake": n_fake, "extractor": extractor, "feature_layer": layer}
    if kid:
        res = kid_features_to_metric(real_f, fake_f, kid_subsets=int(kid_subsets), kid_subset_size=subset,
                                     rng_seed=int(rng_seed), verbose=False)
        out.update(kid_mean=float(res[KEY_METRIC_KID_MEAN]), kid_std=float(res[KEY_METRIC_KID_STD]))
    if return_features:
        out["features"] = (real_f, fake_f)
    return out


def inception_fid(real01: torch.Tensor | np.ndarray, fake01: torch.Tensor | np.ndarray,
                  weights_path: str | None = None, **kw) -> dict:
    """FID / KID with torch-fidelity's InceptionV3 when local weights exist, else an ``unavailable`` status.

    Returns ``{"fid", "kid_mean", "kid_std", "n_real", "n_fake", "status"}``; values are ``None`` (and
    torch-fidelity is not called) when :func:`inception_weights` finds no weights. ``kw`` go to
    :func:`frechet_metrics`.
    """
    path, status = inception_weights(weights_path)
    if path is None:
        return {"fid": None, "kid_mean": None, "kid_std": None, "n_real": len(real01), "n_fake": len(fake01),
                "status": status}
    res = frechet_metrics(real01, fake01, INCEPTION_EXTRACTOR, weights_path=path, **kw)
    return {"fid": res["fd"], "kid_mean": res["kid_mean"], "kid_std": res["kid_std"], "n_real": res["n_real"],
            "n_fake": res["n_fake"], "status": "ok", "features": res.get("features")}


def _distance(real01: torch.Tensor, fake01: torch.Tensor, extractor: str, **kw) -> dict:
    """:func:`frechet_metrics` row with a status; Inception without local weights gives ``None`` values."""
    if extractor == INCEPTION_EXTRACTOR:
        path, status = inception_weights(kw.pop("weights_path", None))
        if path is None:
            return {"fd": None, "kid_mean": None, "kid_std": None, "n_real": len(real01), "n_fake": len(fake01),
                    "status": status}
        kw["weights_path"] = path
    res = frechet_metrics(real01, fake01, extractor, **kw)
    keys = ("fd", "kid_mean", "kid_std", "n_real", "n_fake", *(("features",) if "features" in res else ()))
    return {k: res[k] for k in keys} | {"status": "ok"}


def _mean_row(rows: list[dict], **label) -> dict:
    """Mean of ``fd`` / ``kid_mean`` / ``kid_std`` over ``rows``; ``None`` (with the first failing status) if any is missing."""
    out: dict = dict(label)
    bad = [r["status"] for r in rows if r["status"] != "ok"]
    for key in ("fd", "kid_mean", "kid_std"):
        vals = [r[key] for r in rows]
        out[key] = None if bad or any(v is None for v in vals) else float(np.mean(vals))
    out["n_real"] = out["n_fake"] = None  # a mean row pools several sets; see the rows it averages
    out["n_rows"] = len(rows)
    out["status"] = bad[0] if bad else "ok"
    return out


def _windows(windows: Mapping[str, Sequence[float]]) -> list[tuple[str, float, float]]:
    if not windows:
        raise ValueError("no windows given")
    return [(str(name), float(lw[0]), float(lw[1])) for name, lw in windows.items()]


def per_window_fd(real_model: torch.Tensor | np.ndarray, fake_model: torch.Tensor | np.ndarray,
                  hu_range: Sequence[float], windows: Mapping[str, Sequence[float]], extractor: str,
                  **kw) -> list[dict]:
    """FD / KID of 2D CT slice sets (``[N, 1, H, W]`` model units) under each window, plus a ``"mean"`` row.

    Rows: ``{"window", "level", "width", "fd", "kid_mean", "kid_std", "n_real", "n_fake", "status"}``;
    the last has ``window: "mean"`` (mean over windows; MedSyn2 Table 1). ``kw`` go to
    :func:`frechet_metrics`.
    """
    real, fake = _tensor(real_model), _tensor(fake_model)
    rows = []
    for name, level, width in _windows(windows):
        row = _distance(windowed(real, hu_range, level, width), windowed(fake, hu_range, level, width),
                        extractor, **kw)
        rows.append({"window": name, "level": level, "width": width} | row)
    return rows + [_mean_row(rows, window="mean", level=None, width=None)]


def central_slices(volumes: torch.Tensor, axis: int, fraction: float = 0.4) -> torch.Tensor:
    """2D slices ``[N * k, 1, a, b]`` of ``[N, 1, X, Y, Z]`` volumes along ``axis`` (2, 3 or 4), keeping the
    central ``k = max(1, round(fraction * size))`` slices; the in-plane axes keep their array order."""
    if volumes.dim() != 5 or volumes.shape[1] != 1:
        raise ValueError(f"expected [N, 1, X, Y, Z] volumes, got shape {tuple(volumes.shape)}")
    if axis not in (2, 3, 4):
        raise ValueError(f"axis must be 2, 3 or 4, got {axis}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"central fraction must be in (0, 1], got {fraction}")
    size = volumes.shape[axis]
    k = max(1, int(round(fraction * size)))
    start = (size - k) // 2
    kept = volumes.narrow(axis, start, k).movedim(axis, 1)  # [N, k, 1, a, b]
    return kept.reshape(-1, 1, *kept.shape[3:])


def per_plane_windowed_fd(real_volumes: torch.Tensor | np.ndarray, fake_volumes: torch.Tensor | np.ndarray,
                          hu_range: Sequence[float], windows: Mapping[str, Sequence[float]], extractor: str,
                          central_fraction: float = 0.4, **kw) -> list[dict]:
    """FD / KID of 3D CT volumes (``[N, 1, X, Y, Z]`` model units) per window x plane (2.5D), with means.

    For each window and each plane of :data:`PLANES` (axial: XY slices along z; sagittal: YZ along x;
    coronal: ZX along y) the central ``central_fraction`` of the slices of every volume form the two
    sets (MAISI 2.5D FID). Rows ``{"window", "plane", "fd", "kid_mean", "kid_std", "n_real", "n_fake",
    "status"}``: window x plane rows, then per window a ``plane: "mean"`` row (mean over the three
    planes), then ``{"window": "mean", "plane": "mean"}`` over all window x plane rows.
    """
    real, fake = _tensor(real_volumes), _tensor(fake_volumes)
    slices = {plane: (central_slices(real, axis, central_fraction), central_slices(fake, axis, central_fraction))
              for plane, axis in PLANES.items()}
    cells, means = [], []
    for name, level, width in _windows(windows):
        per_plane = []
        for plane, (r, f) in slices.items():
            row = _distance(windowed(r, hu_range, level, width), windowed(f, hu_range, level, width), extractor, **kw)
            per_plane.append({"window": name, "plane": plane} | row)
        cells += per_plane
        means.append(_mean_row(per_plane, window=name, plane="mean"))
    return cells + means + [_mean_row(cells, window="mean", plane="mean")]
