"""The affine transform (fixed -> moving world points): conversion, files and resampling through SimpleITK."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medsynth.fsutil import atomic_path

from .geometry import FLIP, image_data, sitk_from_array, sitk_grid
from .params import INTERPOLATIONS, ITK_TRANSFORM_SUFFIXES


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
        return cls(FLIP @ np.asarray(matrix_lps, dtype=float) @ FLIP, **kwargs)

    @property
    def matrix_lps(self) -> np.ndarray:
        return FLIP @ self.matrix @ FLIP

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
        data = image_data(image)
        if data.dtype == bool:
            data = data.astype(np.uint8)
        if default_value is None:
            default_value = float(np.nanmin(data)) if data.size else 0.0
        if dtype is None:
            out_dtype = np.dtype(data.dtype) if interpolation == "nearest" else np.dtype(np.float32)
        else:
            out_dtype = np.dtype(dtype)
        src = sitk_from_array(data, image.affine)
        if interpolation != "nearest" and src.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            src = sitk.Cast(src, sitk.sitkFloat32)
        out = sitk.Resample(src, sitk_grid(reference), self.to_sitk(), interp, float(default_value))
        arr = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
        if np.issubdtype(out_dtype, np.integer) and interpolation != "nearest":
            info = np.iinfo(out_dtype)
            arr = np.clip(np.rint(arr), info.min, info.max)
        result = nib.Nifti1Image(np.ascontiguousarray(arr.astype(out_dtype, copy=False)), reference.affine)
        result.header.set_xyzt_units("mm", "sec")
        return result
