"""The ANTs backend (antspyx): thread count, ANTs images, reading ANTs affines, and the affine registration."""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

from .geometry import FLIP, lps_geometry
from .params import ANTS_METRIC
from .transform import AffineTransform

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

    spacing, origin, direction = lps_geometry(affine)
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


def register_ants(moving_metric, moving_affine, fixed_metric, fixed_affine, init, center_ras, params):
    """Affine registration with antspyx from the start ``init`` (RAS, fixed -> moving)."""
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
        center_lps = (FLIP @ np.array([*center_ras, 1.0]))[:3]
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
            aff_metric=ANTS_METRIC[params.metric],
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
