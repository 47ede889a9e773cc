"""Affine registration of volumes to a study template (antspyx or SimpleITK), and template building.

Modules: params (settings), geometry (RAS/LPS images), transform, sitk_backend, ants_backend, register, template,
qc (registration QC: body kept in the study grid, final metric, volume scale).

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
once, at its first filter run, and ``ants.registration`` has no thread argument; this package sets it
just before the first ANTs registration of the process (see ``ants_backend._init_ants_threads``).
"""

from __future__ import annotations

from .geometry import metric_image
from .params import (
    BACKENDS,
    INTERPOLATIONS,
    ITK_TRANSFORM_SUFFIXES,
    METRICS,
    SITK_OPTIMIZERS,
    RegistrationParams,
)
from .register import register_affine
from .template import build_template, reference_grid
from .transform import AffineTransform

__all__ = [
    "BACKENDS",
    "INTERPOLATIONS",
    "ITK_TRANSFORM_SUFFIXES",
    "METRICS",
    "SITK_OPTIMIZERS",
    "AffineTransform",
    "RegistrationParams",
    "build_template",
    "metric_image",
    "reference_grid",
    "register_affine",
]
