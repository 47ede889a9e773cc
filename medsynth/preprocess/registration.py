"""Affine registration of volumes to a study template (antspyx or SimpleITK), and template building.

Conventions
-----------
* Images are nibabel images with RAS affines (``medsynth.io.volume``); ITK/ANTs work in LPS and are
  converted at the boundary.
* :class:`AffineTransform` holds a 4x4 matrix that maps FIXED world points (RAS, mm) to MOVING world
  points: the *resampling* direction, as ITK, ANTs and SimpleITK return it. ``moving`` resampled with
  it lands on the fixed grid.
* Both backends initialise the affine by the translation between the intensity centres of mass of
  the two images and then run a multi-resolution (shrink + Gaussian smoothing in voxels) affine
  optimisation of the same metric. Both return an :class:`AffineTransform`.
* The metric sees float32 copies clipped to ``intensity_range`` (HU for CT) and shifted to start at
  0, so that the centre of mass is the tissue's (raw CT is dominated by negative air) and bright
  metal/contrast does not dominate. The data that is resampled (``AffineTransform.apply``) is never
  altered.
* Resampling (``apply``) always goes through SimpleITK, whichever backend registered.

Determinism: both backends take ``seed`` for their metric sampling, and with ``num_threads=1`` (the
default) repeated runs give bit-identical transforms, in one process and across processes. With
more threads the multithreaded metric sums change the result in the last digits (SimpleITK) or by up
to ~0.1 mm (ANTs) between runs. antspyx's ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` only
once, at its first filter run, and ``ants.registration`` has no thread argument; this module sets it
just before the first ANTs registration of the process (see ``_init_ants_threads``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medsynth.fsutil import atomic_path
from medsynth.io.volume import LPS_TO_RAS, canonical

BACKENDS = ("ants", "sitk")
METRICS = ("mattes", "meansquares", "correlation")
SITK_OPTIMIZERS = ("regular_step", "conjugate_gradient")
INTERPOLATIONS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}
#: default clip window (HU) of the copies the metric sees
CT_INTENSITY_RANGE = (-1024.0, 2000.0)
#: suffixes ``AffineTransform.save`` writes through SimpleITK (ITK transform files, LPS)
ITK_TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")

# ANTs metric names (antsRegistration is case-insensitive)
_ANTS_METRIC = {"mattes": "mattes", "meansquares": "meansquares", "correlation": "GC"}


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------


@dataclass
class RegistrationParams:
    """Settings of :func:`register_affine` (one entry per resolution level in the three lists)."""

    backend: str = "ants"
    metric: str = "mattes"
    shrink_factors: list[int] = field(default_factory=lambda: [4, 2, 1])
    #: Gaussian smoothing per level, in voxels of the full-resolution image
    smoothing_sigmas: list[float] = field(default_factory=lambda: [2.0, 1.0, 0.0])
    #: maximum optimiser iterations per level (both backends stop earlier on convergence)
    iterations: list[int] = field(default_factory=lambda: [200, 100, 50])
    #: fraction of the fixed voxels sampled by the metric (regular grid with seeded jitter)
    sampling_fraction: float = 0.1
    histogram_bins: int = 32
    seed: int = 42
    #: clip window of the metric's copies (HU for CT); ``None``: no clipping (MR), min shifted to 0
    intensity_range: tuple[float, float] | None = CT_INTENSITY_RANGE
    #: SimpleITK only: ``regular_step`` (regular-step gradient descent; fast) or
    #: ``conjugate_gradient`` (conjugate gradient with line search, the optimiser ANTs uses for
    #: linear stages; several times slower, more robust far from the optimum)
    sitk_optimizer: str = "regular_step"
    #: SimpleITK only: largest optimiser step, in voxels of the current level (antspyx fixes the
    #: ANTs gradient step of its "Affine" transform at 0.25)
    max_step_voxels: float = 1.0
    #: threads for the registration. 1 (default) makes both backends bit-for-bit reproducible;
    #: ``None`` leaves the libraries' defaults (all cores), which changes results in the last digits
    #: (ANTs: up to ~0.1 mm) from run to run. For ANTs it takes effect only if set before the
    #: library's first use in the process (see ``_init_ants_threads``).
    num_threads: int | None = 1
    #: step (mm) of the search over superior-inferior shifts that refines the centre-of-mass start
    #: when the two fields of view differ in length (a slab against a whole-trunk template); the
    #: shift with the best coarse-level metric starts the registration. 0 switches the search off.
    init_search_step_mm: float = 10.0

    def __post_init__(self) -> None:
        self.backend = str(self.backend).lower()
        self.metric = str(self.metric).lower()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        self.shrink_factors = [int(s) for s in self.shrink_factors]
        self.smoothing_sigmas = [float(s) for s in self.smoothing_sigmas]
        self.iterations = [int(i) for i in self.iterations]
        n = len(self.shrink_factors)
        if n == 0 or len(self.smoothing_sigmas) != n or len(self.iterations) != n:
            raise ValueError(
                "shrink_factors, smoothing_sigmas and iterations need one (equal, non-zero) number "
                f"of levels, got {len(self.shrink_factors)}, {len(self.smoothing_sigmas)}, "
                f"{len(self.iterations)}"
            )
        if any(s < 1 for s in self.shrink_factors):
            raise ValueError("shrink_factors must be >= 1")
        if any(s < 0 for s in self.smoothing_sigmas) or any(i < 0 for i in self.iterations):
            raise ValueError("smoothing_sigmas and iterations must be >= 0")
        if not 0.0 < float(self.sampling_fraction) <= 1.0:
            raise ValueError(f"sampling_fraction must be in (0, 1], got {self.sampling_fraction}")
        self.sampling_fraction = float(self.sampling_fraction)
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or int(self.seed) < 1:
            # SimpleITK reads seed 0 as "seed from the wall clock"
            raise ValueError(f"seed must be a positive integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if int(self.histogram_bins) < 4:
            raise ValueError("histogram_bins must be >= 4")
        self.histogram_bins = int(self.histogram_bins)
        if self.intensity_range is not None:
            lo, hi = (float(v) for v in self.intensity_range)
            if not lo < hi:
                raise ValueError(f"intensity_range must be (low, high) with low < high, got {self.intensity_range}")
            self.intensity_range = (lo, hi)
        if self.sitk_optimizer not in SITK_OPTIMIZERS:
            raise ValueError(f"sitk_optimizer must be one of {SITK_OPTIMIZERS}, got {self.sitk_optimizer!r}")
        if not self.max_step_voxels > 0:
            raise ValueError("max_step_voxels must be > 0")
        if float(self.init_search_step_mm) < 0:
            raise ValueError("init_search_step_mm must be >= 0")
        self.init_search_step_mm = float(self.init_search_step_mm)
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise ValueError("num_threads must be >= 1 or None")

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "RegistrationParams":
        """Build from a config mapping (the ``registration`` section, or a mapping containing one).

        Unknown keys are an error (a typo should not silently fall back to a default).
        """
        cfg = dict(cfg or {})
        if "registration" in cfg and isinstance(cfg["registration"], dict):
            cfg = dict(cfg["registration"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown registration setting(s): {', '.join(unknown)}")
        if cfg.get("intensity_range") is not None:
            cfg["intensity_range"] = tuple(cfg["intensity_range"])
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["intensity_range"] is not None:
            d["intensity_range"] = list(d["intensity_range"])
        return d


# ----------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------

_FLIP = LPS_TO_RAS  # its own inverse


def _lps_geometry(affine: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """(spacing, origin, direction) in LPS of a RAS affine (as ``nifti_to_sitk`` computes them)."""
    affine_lps = _FLIP @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing[None, :]
    return spacing.tolist(), affine_lps[:3, 3].tolist(), direction.flatten().tolist()


def _sitk_from_array(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image (LPS) of an (x, y, z) array with a RAS affine."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    spacing, origin, direction = _lps_geometry(affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _sitk_grid(reference: nib.Nifti1Image) -> sitk.Image:
    """A small-typed SimpleITK image with the reference's grid (its data is not read)."""
    shape = [int(s) for s in reference.shape[:3]]
    img = sitk.Image(shape, sitk.sitkUInt8)
    spacing, origin, direction = _lps_geometry(reference.affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def _image_data(image: nib.Nifti1Image) -> np.ndarray:
    data = np.asanyarray(image.dataobj)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    return np.asarray(data)


def metric_image(data: np.ndarray, intensity_range: tuple[float, float] | None) -> np.ndarray:
    """The float32 copy the metric sees: clipped to ``intensity_range`` and shifted to start at 0."""
    arr = np.asarray(data, dtype=np.float32)
    if intensity_range is not None:
        lo, hi = intensity_range
        arr = np.clip(arr, lo, hi)
        arr -= np.float32(lo)
    else:
        arr = arr - np.float32(np.nanmin(arr))
    return np.nan_to_num(arr, copy=False)


def _center_of_mass_ras(weights: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of mass (RAS mm) of a non-negative (x, y, z) array."""
    total = float(weights.sum(dtype=np.float64))
    if not total > 0:
        raise ValueError("cannot initialise by centre of mass: the metric image is empty")
    idx = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        profile = weights.sum(axis=other, dtype=np.float64)
        idx.append(float(np.dot(profile, np.arange(weights.shape[axis]))) / total)
    return (np.asarray(affine, dtype=float) @ np.array([*idx, 1.0]))[:3]


def _translation(offset: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m


# ----------------------------------------------------------------------------------------------
# transform
# ----------------------------------------------------------------------------------------------


class AffineTransform:
    """A 3D affine transform: ``matrix`` maps FIXED world points (RAS mm) to MOVING world points.

    That is the resampling direction: ``apply(moving, fixed_grid)`` samples ``moving`` at
    ``matrix @ x`` for every grid point ``x``.
    """

    def __init__(
        self,
        matrix: np.ndarray,
        backend: str | None = None,
        metric_value: float | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        m = np.array(matrix, dtype=float)
        if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError("matrix must be a 4x4 homogeneous affine")
        if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise ValueError("matrix is singular or not finite")
        m[3] = [0, 0, 0, 1]
        self.matrix = m
        self.backend = backend
        self.metric_value = None if metric_value is None else float(metric_value)
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return f"AffineTransform(backend={self.backend!r}, metric_value={self.metric_value}, matrix={self.matrix.tolist()})"

    # -- construction / conversion -------------------------------------------------------------
    @classmethod
    def identity(cls) -> "AffineTransform":
        return cls(np.eye(4))

    @classmethod
    def from_lps(cls, matrix_lps: np.ndarray, **kwargs: Any) -> "AffineTransform":
        """From a 4x4 matrix in ITK's LPS world (same fixed -> moving direction)."""
        return cls(_FLIP @ np.asarray(matrix_lps, dtype=float) @ _FLIP, **kwargs)

    @property
    def matrix_lps(self) -> np.ndarray:
        return _FLIP @ self.matrix @ _FLIP

    @classmethod
    def from_sitk(cls, transform: sitk.Transform, **kwargs: Any) -> "AffineTransform":
        """From any linear SimpleITK transform (composites of linear transforms included)."""
        tx = transform
        if tx.GetName() == "CompositeTransform":
            composite = sitk.CompositeTransform(tx)
            m = np.eye(4)
            # a composite applies its last-added transform first: T(x) = T0(T1(...Tn(x)))
            for i in range(composite.GetNumberOfTransforms()):
                m = m @ cls.from_sitk(composite.GetNthTransform(i)).matrix_lps
            return cls.from_lps(m, **kwargs)
        if not tx.IsLinear():
            raise ValueError(f"not a linear transform: {tx.GetName()}")
        origin = np.zeros(3)
        mapped = np.array(tx.TransformPoint(origin.tolist()))
        cols = [np.array(tx.TransformPoint(e.tolist())) - mapped for e in np.eye(3)]
        m = np.eye(4)
        m[:3, :3] = np.stack(cols, axis=1)
        m[:3, 3] = mapped
        # TransformPoint is exact for linear transforms; refine from the parameters where known
        if tx.GetName() in ("AffineTransform", "MatrixOffsetTransformBase"):
            aff = sitk.AffineTransform(tx)
            a = np.asarray(aff.GetMatrix(), dtype=float).reshape(3, 3)
            c = np.asarray(aff.GetCenter(), dtype=float)
            t = np.asarray(aff.GetTranslation(), dtype=float)
            m[:3, :3] = a
            m[:3, 3] = t + c - a @ c
        return cls.from_lps(m, **kwargs)

    def to_sitk(self) -> sitk.AffineTransform:
        """As a SimpleITK ``AffineTransform`` (LPS, centre 0)."""
        m = self.matrix_lps
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(m[:3, :3].flatten().tolist())
        tx.SetTranslation(m[:3, 3].tolist())
        return tx

    def inverse(self) -> "AffineTransform":
        """The transform mapping moving points to fixed points."""
        return AffineTransform(np.linalg.inv(self.matrix))

    def compose(self, other: "AffineTransform") -> "AffineTransform":
        """``self ∘ other``: apply ``other`` first, then ``self`` (points)."""
        return AffineTransform(self.matrix @ other.matrix)

    def transform_points(self, points_ras: np.ndarray) -> np.ndarray:
        """Map (N, 3) fixed-world RAS points to moving-world RAS points."""
        pts = np.asarray(points_ras, dtype=float)
        return pts @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def displacement(self, other: "AffineTransform", points_ras: np.ndarray) -> np.ndarray:
        """Per-point distance (mm) between where ``self`` and ``other`` map the points."""
        return np.linalg.norm(self.transform_points(points_ras) - other.transform_points(points_ras), axis=1)

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "affine",
            "convention": "matrix maps fixed-image world points (RAS, mm) to moving-image world points",
            "matrix_ras": self.matrix.tolist(),
            "backend": self.backend,
            "metric_value": self.metric_value,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: ``.json`` (RAS matrix + metadata) or an ITK transform file (``.tfm``,
        ``.txt``, ``.mat``, ``.h5``; LPS, readable by ITK, ANTs, SimpleITK and 3D Slicer)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            with atomic_path(path, suffix=".json") as tmp:
                tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        elif suffix in ITK_TRANSFORM_SUFFIXES:
            with atomic_path(path, suffix=suffix) as tmp:
                sitk.WriteTransform(self.to_sitk(), str(tmp))
        else:
            raise ValueError(f"unsupported transform file type {path.name!r} (use .json or {', '.join(ITK_TRANSFORM_SUFFIXES)})")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AffineTransform":
        """Read a file written by :meth:`save` (or any linear ITK/ANTs transform file)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            d = json.loads(path.read_text())
            if d.get("type", "affine") != "affine" or "matrix_ras" not in d:
                raise ValueError(f"{path} is not an affine transform file")
            return cls(np.asarray(d["matrix_ras"], dtype=float), d.get("backend"), d.get("metric_value"), d.get("info"))
        if suffix in ITK_TRANSFORM_SUFFIXES:
            return cls.from_sitk(sitk.ReadTransform(str(path)))
        raise ValueError(f"unsupported transform file type {path.name!r}")

    # -- resampling -----------------------------------------------------------------------------
    def apply(
        self,
        image: nib.Nifti1Image,
        reference: nib.Nifti1Image,
        interpolation: str = "linear",
        default_value: float | None = None,
        dtype: np.dtype | type | None = None,
    ) -> nib.Nifti1Image:
        """Resample ``image`` (the moving image) onto the grid of ``reference`` (SimpleITK).

        ``interpolation``: ``linear`` (intensities), ``nearest`` (label maps: only input values
        come out) or ``bspline``. ``default_value`` fills points outside ``image``; default: the
        image minimum (air for CT, background for MR and labels). ``dtype``: output type; default
        float32 for linear/bspline and the input type for nearest. The output carries
        ``reference.affine`` exactly.
        """
        try:
            interp = INTERPOLATIONS[interpolation]
        except KeyError:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}") from None
        data = _image_data(image)
        if data.dtype == bool:
            data = data.astype(np.uint8)
        if default_value is None:
            default_value = float(np.nanmin(data)) if data.size else 0.0
        if dtype is None:
            out_dtype = np.dtype(data.dtype) if interpolation == "nearest" else np.dtype(np.float32)
        else:
            out_dtype = np.dtype(dtype)
        src = _sitk_from_array(data, image.affine)
        if interpolation != "nearest" and src.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            src = sitk.Cast(src, sitk.sitkFloat32)
        out = sitk.Resample(src, _sitk_grid(reference), self.to_sitk(), interp, float(default_value))
        arr = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
        if np.issubdtype(out_dtype, np.integer) and interpolation != "nearest":
            info = np.iinfo(out_dtype)
            arr = np.clip(np.rint(arr), info.min, info.max)
        result = nib.Nifti1Image(np.ascontiguousarray(arr.astype(out_dtype, copy=False)), reference.affine)
        result.header.set_xyzt_units("mm", "sec")
        return result


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------


def register_affine(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    params: RegistrationParams | None = None,
) -> AffineTransform:
    """Affine registration of ``moving`` to ``fixed``; returns the fixed -> moving transform.

    Multi-resolution (``params.shrink_factors`` / ``smoothing_sigmas`` / ``iterations``),
    initialised by the translation between the intensity centres of mass of the metric copies
    (float32, clipped to ``params.intensity_range``, shifted to start at 0).
    ``transform.apply(moving, fixed)`` then gives the registered image.

    ``metric_value`` of the result is the same measure for both backends: the metric (Mattes MI
    for ``mattes``, negative, lower is better) of the full-resolution metric copies under the
    final transform, computed by SimpleITK on the same seeded sample points. The backend's own
    last value is in ``info["backend_metric"]``.
    """
    params = params or RegistrationParams()
    fixed_metric = metric_image(_image_data(fixed), params.intensity_range)
    moving_metric = metric_image(_image_data(moving), params.intensity_range)
    com_fixed = _center_of_mass_ras(fixed_metric, fixed.affine)
    com_moving = _center_of_mass_ras(moving_metric, moving.affine)
    init = _translation(com_moving - com_fixed)  # fixed point -> moving point
    fixed_sitk = _sitk_from_array(fixed_metric, fixed.affine)
    moving_sitk = _sitk_from_array(moving_metric, moving.affine)
    with _sitk_threads(params.num_threads):
        init, search = _search_shift(fixed_sitk, moving_sitk, fixed, moving, init, params)
        if params.backend == "ants":
            tx = _register_ants(moving_metric, moving.affine, fixed_metric, fixed.affine, init, com_fixed, params)
        else:
            tx = _register_sitk(moving_sitk, fixed_sitk, params, init, com_fixed)
        tx.metric_value = _sitk_metric_value(fixed_sitk, moving_sitk, tx.to_sitk(), params)
    tx.info["init_translation_ras"] = init[:3, 3].tolist()
    tx.info["init_search"] = search
    tx.info["params"] = params.to_dict()
    return tx


@contextlib.contextmanager
def _sitk_threads(num_threads: int | None) -> Iterator[None]:
    """SimpleITK's global default thread count set to ``num_threads`` for the block.

    ``ImageRegistrationMethod.SetNumberOfThreads`` alone does not make SimpleITK registration
    reproducible (the pyramid filters and the optimiser's helpers take the global default).
    """
    if num_threads is None:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(num_threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _superior_extent(image: nib.Nifti1Image) -> float:
    """Length (mm) of the image's field of view along the superior (world z) axis."""
    corners = np.array([[i, j, k, 1.0] for i in (0, image.shape[0] - 1) for j in (0, image.shape[1] - 1)
                        for k in (0, image.shape[2] - 1)])
    z = (np.asarray(image.affine) @ corners.T)[2]
    return float(z.max() - z.min())


def _search_shift(fixed_sitk: sitk.Image, moving_sitk: sitk.Image, fixed: nib.Nifti1Image, moving: nib.Nifti1Image,
                  init: np.ndarray, params: RegistrationParams) -> tuple[np.ndarray, dict]:
    """Refine a centre-of-mass start by the superior-inferior shift with the best coarse metric.

    When one field of view is shorter than the other (by ``d`` mm), centres of mass do not say
    where along the body the shorter one belongs: shifts in [-d/2, d/2] (step
    ``init_search_step_mm``) are scored with the metric on the first (coarsest, smoothed) level.
    """
    step = params.init_search_step_mm
    half = abs(_superior_extent(fixed) - _superior_extent(moving)) / 2.0
    if step <= 0 or half < step:
        return init, {}
    shrink, sigma = params.shrink_factors[0], params.smoothing_sigmas[0]

    def coarse(img: sitk.Image) -> sitk.Image:
        smooth = sitk.SmoothingRecursiveGaussian(img, [max(sigma, 1e-3) * sp for sp in img.GetSpacing()])
        return sitk.BinShrink(smooth, [shrink] * 3)

    fixed_small, moving_small = coarse(fixed_sitk), coarse(moving_sitk)
    reg = sitk.ImageRegistrationMethod()
    _set_metric(reg, params)
    shifts = np.unique(np.concatenate([np.arange(-half, half + 1e-6, step), [0.0]]))
    scores = []
    for dz in shifts:
        candidate = init.copy()
        candidate[2, 3] += dz
        reg.SetInitialTransform(AffineTransform(candidate).to_sitk(), inPlace=False)
        try:
            scores.append(float(reg.MetricEvaluate(fixed_small, moving_small)))
        except RuntimeError:  # too few samples overlap at this shift
            scores.append(np.inf)
    best = int(np.argmin(scores))
    chosen = init.copy()
    chosen[2, 3] += shifts[best]
    return chosen, {"shift_mm": float(shifts[best]), "candidates": len(shifts), "metric": scores[best]}


def _set_metric(reg: sitk.ImageRegistrationMethod, params: RegistrationParams) -> None:
    if params.metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=params.histogram_bins)
    elif params.metric == "meansquares":
        reg.SetMetricAsMeanSquares()
    else:
        reg.SetMetricAsCorrelation()
    if params.sampling_fraction < 1.0:
        reg.SetMetricSamplingStrategy(reg.REGULAR)  # regular grid, jittered with the seed
        reg.SetMetricSamplingPercentage(params.sampling_fraction, params.seed)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    if params.num_threads is not None:
        reg.SetNumberOfThreads(int(params.num_threads))


def _sitk_metric_value(fixed_img: sitk.Image, moving_img: sitk.Image, tx: sitk.Transform, params) -> float:
    """The metric of the full-resolution metric copies under ``tx`` (seeded samples)."""
    reg = sitk.ImageRegistrationMethod()
    _set_metric(reg, params)
    reg.SetInitialTransform(tx, inPlace=False)
    return float(reg.MetricEvaluate(fixed_img, moving_img))


# ---- ANTs ------------------------------------------------------------------------------------

_ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
#: thread count the ANTs library of this process was started with by us ("default": library default)
_ants_threads: int | str | None = None


def _init_ants_threads(num_threads: int | None) -> None:
    """Fix the ANTs library's thread count for this process (once).

    antspyx's ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when it first runs a
    filter; later changes of the variable are ignored, and ``ants.registration`` has no thread
    argument. So the variable is set, a tiny filter is run to make ITK read it, and the previous
    value is restored (SimpleITK, a separate ITK, is not affected). If ANTs already ran in this
    process before (outside this module), its thread count cannot be changed any more.
    """
    global _ants_threads
    wanted: int | str = "default" if num_threads is None else int(num_threads)
    if _ants_threads is not None:
        if wanted != _ants_threads and num_threads is not None:
            warnings.warn(
                f"ANTs already runs with {_ants_threads} thread(s) in this process; "
                f"num_threads={num_threads} cannot take effect any more",
                RuntimeWarning,
                stacklevel=3,
            )
        return
    import ants

    previous = os.environ.get(_ITK_THREADS_ENV)
    if num_threads is not None:
        os.environ[_ITK_THREADS_ENV] = str(int(num_threads))
    try:
        ants.smooth_image(ants.from_numpy(np.zeros((4, 4, 4), np.float32)), 1.0)
    finally:
        if previous is None:
            os.environ.pop(_ITK_THREADS_ENV, None)
        else:
            os.environ[_ITK_THREADS_ENV] = previous
    _ants_threads = wanted


def _ants_image(data: np.ndarray, affine: np.ndarray):
    import ants

    spacing, origin, direction = _lps_geometry(affine)
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=origin,
        spacing=spacing,
        direction=np.asarray(direction).reshape(3, 3),
    )


def _ants_matrix_lps(path: str) -> np.ndarray:
    """4x4 LPS matrix of an ANTs/ITK affine ``.mat`` file (``T(x) = A (x - c) + t + c``)."""
    import ants

    tx = ants.read_transform(path)
    p = np.asarray(tx.parameters, dtype=float)
    c = np.asarray(tx.fixed_parameters, dtype=float)
    if p.shape != (12,) or c.shape != (3,):
        raise RuntimeError(f"not a 3D affine transform: {path} ({tx.type})")
    a = p[:9].reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = p[9:12] + c - a @ c
    return m


def _register_ants(moving_metric, moving_affine, fixed_metric, fixed_affine, init, center_ras, params):
    import ants

    _init_ants_threads(params.num_threads)
    fixed_img = _ants_image(fixed_metric, fixed_affine)
    moving_img = _ants_image(moving_metric, moving_affine)
    with tempfile.TemporaryDirectory(prefix="medsynth_ants_") as tmp:
        # Explicit centre-of-mass initialisation. antspyx's default (initial_transform=None) is
        # antsRegistration's "-r [fixed,moving,1]", the same intensity centre-of-mass translation
        # computed inside ANTs; passing it as a file makes it visible, identical to the SimpleITK
        # backend's, and centred on the fixed centre of mass so that the affine stage rotates and
        # scales about the anatomy. antsRegistration folds it into the output affine (-z 1).
        init_lps = AffineTransform(init).matrix_lps
        center_lps = (_FLIP @ np.array([*center_ras, 1.0]))[:3]
        init_tx = ants.create_ants_transform(
            transform_type="AffineTransform",
            precision="double",
            dimension=3,
            matrix=np.eye(3),
            translation=init_lps[:3, 3],
            center=center_lps,
        )
        init_path = os.path.join(tmp, "init.mat")
        ants.write_transform(init_tx, init_path)
        reg = ants.registration(
            fixed=fixed_img,
            moving=moving_img,
            type_of_transform="Affine",
            initial_transform=[init_path],
            outprefix=os.path.join(tmp, "reg_"),
            aff_metric=_ANTS_METRIC[params.metric],
            aff_sampling=params.histogram_bins,
            aff_random_sampling_rate=params.sampling_fraction,
            aff_iterations=tuple(params.iterations),
            aff_shrink_factors=tuple(params.shrink_factors),
            aff_smoothing_sigmas=tuple(params.smoothing_sigmas),
            smoothing_in_mm=False,
            random_seed=str(params.seed),
            verbose=False,
        )
        fwd = reg["fwdtransforms"]
        fwd = [fwd] if isinstance(fwd, str) else list(fwd)
        if len(fwd) != 1 or not fwd[0].endswith("GenericAffine.mat"):
            raise RuntimeError(f"unexpected ANTs output transforms: {fwd}")
        m_lps = _ants_matrix_lps(fwd[0])
        backend_metric = None
        if params.metric == "mattes":
            backend_metric = float(ants.image_mutual_information(fixed_img, reg["warpedmovout"]))
    return AffineTransform.from_lps(m_lps, backend="ants", info={"backend_metric": backend_metric})


# ---- SimpleITK -------------------------------------------------------------------------------


def _register_sitk(moving_img: sitk.Image, fixed_img: sitk.Image, params: RegistrationParams, init: np.ndarray,
                   center_ras: np.ndarray) -> AffineTransform:
    # the same start as ANTs gets (centre-of-mass translation, refined by the shift search),
    # rotating about the fixed image's centre of mass
    init_lps = AffineTransform(init).matrix_lps
    tx = sitk.AffineTransform(3)
    tx.SetCenter((LPS_TO_RAS @ np.array([*center_ras, 1.0]))[:3].tolist())
    tx.SetMatrix(init_lps[:3, :3].ravel().tolist())
    tx.SetTranslation(init_lps[:3, 3].tolist())
    min_spacing = min(fixed_img.GetSpacing())
    levels: list[dict[str, Any]] = []
    # One Execute per level (the transform carries over, as inside a multi-level Execute) so that
    # each level gets its own iteration budget and step size; SimpleITK's optimiser takes one
    # iteration count for all levels.
    for shrink, sigma, n_iter in zip(params.shrink_factors, params.smoothing_sigmas, params.iterations):
        if n_iter == 0:
            continue
        reg = sitk.ImageRegistrationMethod()
        _set_metric(reg, params)
        step = params.max_step_voxels * shrink * min_spacing
        if params.sitk_optimizer == "regular_step":
            reg.SetOptimizerAsRegularStepGradientDescent(
                learningRate=step,
                minStep=1e-3 * min_spacing,
                numberOfIterations=n_iter,
                relaxationFactor=0.5,
                gradientMagnitudeTolerance=1e-8,
                maximumStepSizeInPhysicalUnits=step,
            )
        else:
            reg.SetOptimizerAsConjugateGradientLineSearch(
                learningRate=1.0,
                numberOfIterations=n_iter,
                convergenceMinimumValue=1e-6,
                convergenceWindowSize=10,
                lineSearchUpperLimit=2.0,
                maximumStepSizeInPhysicalUnits=step,
            )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([shrink])
        reg.SetSmoothingSigmasPerLevel([sigma])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(fixed_img, moving_img)
        levels.append(
            {
                "shrink": shrink,
                "sigma": sigma,
                "iterations": int(reg.GetOptimizerIteration()),
                "metric": float(reg.GetMetricValue()),
                "stop": reg.GetOptimizerStopConditionDescription(),
            }
        )
    return AffineTransform.from_sitk(
        tx,
        backend="sitk",
        info={"backend_metric": levels[-1]["metric"] if levels else None, "levels": levels},
    )


# ----------------------------------------------------------------------------------------------
# study grid and template
# ----------------------------------------------------------------------------------------------


def reference_grid(
    template: nib.Nifti1Image,
    spacing_mm: Sequence[float],
    size: Sequence[int],
) -> nib.Nifti1Image:
    """The study grid: ``template`` (closest-canonical orientation) resampled to ``spacing_mm`` on a
    grid of ``size`` voxels centred on the template's centre (i.e. resample, then centre crop/pad).

    Returns the resampled template (float32, padded with its minimum) carrying the grid's affine.
    """
    spacing = np.asarray([float(s) for s in spacing_mm], dtype=float)
    shape = np.asarray([int(s) for s in size])
    if spacing.shape != (3,) or shape.shape != (3,) or np.any(spacing <= 0) or np.any(shape < 1):
        raise ValueError(f"need 3 positive spacings and sizes, got {spacing_mm} and {size}")
    template = canonical(template)
    affine = np.asarray(template.affine, dtype=float)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    rotation = affine[:3, :3] / zooms[None, :]
    centre = affine @ np.array([*((np.asarray(template.shape[:3]) - 1) / 2.0), 1.0])
    grid = np.eye(4)
    grid[:3, :3] = rotation * spacing[None, :]
    grid[:3, 3] = centre[:3] - grid[:3, :3] @ ((shape - 1) / 2.0)
    target = _GridOnly(tuple(int(s) for s in shape), grid)
    return AffineTransform.identity().apply(template, target, "linear", dtype=np.float32)


class _GridOnly:
    """Minimal stand-in for a reference image: only ``shape`` and ``affine`` are read."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray) -> None:
        self.shape = shape
        self.affine = affine


def build_template(
    images: Sequence[nib.Nifti1Image],
    params: RegistrationParams | None = None,
    iterations: int = 2,
    spacing_mm: Sequence[float] | None = None,
    unbias: bool = True,
    start: str = "largest",
) -> nib.Nifti1Image:
    """Iterative affine mean template of ``images``.

    Start from the image of largest (``start="largest"``: the one covering the most anatomy, so
    that partial scans register into it) or median physical extent (resampled to ``spacing_mm`` if given, same
    extent), register every image to the current template, average the aligned images on the
    template grid (each voxel over the cases that cover it), repeat ``iterations`` times. With
    ``unbias`` each average is taken in the mean position/shape of the cases (every case is
    resampled through its transform composed with the inverse of the mean transform), so the
    template does not keep the pose of the starting image.
    """
    images = list(images)
    if not images:
        raise ValueError("build_template needs at least one image")
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    params = params or RegistrationParams()
    extents = [float(np.prod(np.asarray(im.shape[:3]) * np.linalg.norm(im.affine[:3, :3], axis=0))) for im in images]
    if start not in ("largest", "median"):
        raise ValueError(f"start must be 'largest' or 'median', got {start!r}")
    order = np.argsort(extents, kind="stable")
    start = int(order[-1] if start == "largest" else order[(len(images) - 1) // 2])
    template = canonical(images[start])
    if spacing_mm is not None:
        zooms = np.linalg.norm(template.affine[:3, :3], axis=0)
        extent = np.asarray(template.shape[:3]) * zooms
        size = np.maximum(1, np.round(extent / np.asarray(spacing_mm, dtype=float))).astype(int)
        template = reference_grid(template, spacing_mm, tuple(size))
    else:
        template = nib.Nifti1Image(_image_data(template).astype(np.float32), template.affine)
    shape = template.shape[:3]
    fill = float(np.min(_image_data(template)))
    for _ in range(iterations):
        transforms = [register_affine(im, template, params) for im in images]
        if unbias and len(images) > 1:
            mean_inv = np.linalg.inv(np.mean([t.matrix for t in transforms], axis=0))
            transforms = [AffineTransform(t.matrix @ mean_inv) for t in transforms]
        total = np.zeros(shape, np.float64)
        count = np.zeros(shape, np.float64)
        for im, tx in zip(images, transforms):
            warped = np.asarray(tx.apply(im, template, "linear").dataobj, dtype=np.float64)
            ones = nib.Nifti1Image(np.ones(im.shape[:3], np.uint8), im.affine)
            cover = np.asarray(tx.apply(ones, template, "nearest", default_value=0).dataobj) > 0
            total[cover] += warped[cover]
            count[cover] += 1
        mean = np.full(shape, fill, np.float32)
        np.divide(total, count, out=mean, where=count > 0, casting="unsafe")
        template = nib.Nifti1Image(mean, template.affine)
        template.header.set_xyzt_units("mm", "sec")
    return template
