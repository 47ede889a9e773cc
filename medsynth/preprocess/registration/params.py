"""Registration settings: the backends, metrics, optimisers and interpolations, and :class:`RegistrationParams`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk

BACKENDS = ("ants", "sitk")
METRICS = ("mattes", "meansquares", "correlation")
SITK_OPTIMIZERS = ("regular_step", "conjugate_gradient")
INTERPOLATIONS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}
#: suffixes ``AffineTransform.save`` writes through SimpleITK (ITK transform files, LPS)
ITK_TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")

#: ANTs metric names (antsRegistration is case-insensitive)
ANTS_METRIC = {"mattes": "mattes", "meansquares": "meansquares", "correlation": "GC"}


@dataclass
class RegistrationParams:
    """Settings of :func:`register_affine` (one entry per resolution level in the three lists): config
    ``preprocess.registration``, whose defaults are the schema's (build it with :meth:`from_config`)."""

    backend: str
    metric: str
    shrink_factors: list[int]
    #: Gaussian smoothing per level, in voxels of the full-resolution image
    smoothing_sigmas: list[float]
    #: maximum optimiser iterations per level (both backends stop earlier on convergence)
    iterations: list[int]
    #: fraction of the fixed voxels sampled by the metric (regular grid with seeded jitter)
    sampling_fraction: float
    histogram_bins: int
    seed: int
    #: clip window of the metric's copies (HU for CT); ``None``: no clipping (MR), min shifted to 0
    intensity_range: tuple[float, float] | None
    #: SimpleITK only: ``regular_step`` (regular-step gradient descent; fast) or
    #: ``conjugate_gradient`` (conjugate gradient with line search, the optimiser ANTs uses for
    #: linear stages; several times slower, more robust far from the optimum)
    sitk_optimizer: str
    #: SimpleITK only: largest optimiser step, in voxels of the current level (antspyx fixes the
    #: ANTs gradient step of its "Affine" transform at 0.25)
    max_step_voxels: float
    #: threads for the registration. 1 makes both backends bit-for-bit reproducible;
    #: ``None`` leaves the libraries' defaults (all cores), which changes results in the last digits
    #: (ANTs: up to ~0.1 mm) from run to run. For ANTs it takes effect only if set before the
    #: library's first use in the process (see ``_init_ants_threads``).
    num_threads: int | None
    #: step (mm) of the search over superior-inferior shifts that refines the centre-of-mass start
    #: when the two fields of view differ in length (a slab against a whole-trunk template); the
    #: shift with the best coarse-level metric starts the registration. 0 switches the search off.
    init_search_step_mm: float

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
    def from_config(cls, cfg: dict[str, Any] | None = None) -> "RegistrationParams":
        """Build from a config mapping (the ``registration`` section, or a mapping containing one); keys
        left out take the schema's defaults (``preprocess.registration``).

        Unknown keys are an error (a typo should not silently fall back to a default).
        """
        from medsynth.settings import section

        cfg = dict(cfg or {})
        if "registration" in cfg and isinstance(cfg["registration"], dict):
            cfg = dict(cfg["registration"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown registration setting(s): {', '.join(unknown)}")
        cfg = {**section("preprocess")["registration"], **cfg}  # checked below, as ValueError
        if cfg["intensity_range"] is not None:
            cfg["intensity_range"] = tuple(cfg["intensity_range"])
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["intensity_range"] is not None:
            d["intensity_range"] = list(d["intensity_range"])
        return d
