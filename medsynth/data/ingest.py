"""Ingest: a case's source (DICOM series, NIfTI, NRRD, MHA, 2D picture) -> canonical NIfTI, with QC.

Canonical means RAS+ axis order (no resampling, spacing kept), CT values in HU (int16 when they
are whole numbers in range, else float32) and MR as float32. A case that cannot be read or fails
QC is not written; its reason goes to the shard table and from there to ``qc/quarantine.csv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medsynth.cases import CaseRejected, process_cases
from medsynth.data.discover import LABEL_SEPARATOR
from medsynth.data.qc import QCThresholds, header_spacing_reasons, qc_reasons, voxel_spacing
from medsynth.fsutil import sha256_file
from medsynth.io.dicom import DicomSeriesError, find_series, read_series, series_digest, unique_instances
from medsynth.io.image2d import PICTURE, is_image2d_file, read_image2d, read_mask2d
from medsynth.io.volume import canonical, orientation_codes, read_volume, stored_nifti_header, write_nifti

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOptions:
    """Ingest settings from the ``ingest`` config section (defaults in the schema)."""

    ct_dtype: str
    dicom_spacing_tolerance: float
    qc: QCThresholds
    pixel_spacing_mm: float = 1.0
    mask_threshold: float | None = 127.0

    @classmethod
    def from_config(cls, cfg: dict | None = None) -> "IngestOptions":
        """Build from the ``ingest`` config section (keys left out take the schema's defaults)."""
        from medsynth.settings import section

        c = section("ingest", cfg)
        return cls(ct_dtype=c["ct_dtype"], dicom_spacing_tolerance=float(c["dicom_spacing_tolerance"]),
                   qc=QCThresholds.from_config(c["qc"]), pixel_spacing_mm=float(c["pictures"]["pixel_spacing_mm"]),
                   mask_threshold=None if c["pictures"]["mask_threshold"] is None else float(c["pictures"]["mask_threshold"]))


def _read_dicom(row: dict, options: IngestOptions) -> tuple[nib.Nifti1Image, str, str]:
    """Read the case's DICOM series (identical copies of an instance once); returns (image, checksum, note)."""
    source = Path(row["source"])
    files = [p for p in sorted(source.rglob("*")) if p.is_file()]
    matches = [s for s in find_series(files) if s.series_uid == row["series_uid"]]
    if not matches:
        raise CaseRejected(f"DICOM series {row['series_uid']} not found under {source}")
    try:
        instances = unique_instances(matches[0].files, matches[0].instance_uids)
        image = read_series(instances.files, options.dicom_spacing_tolerance)
    except DicomSeriesError as err:
        raise CaseRejected(str(err)) from err
    if instances.note:
        log.warning("%s: %s", row["case_id"], instances.note)
    return image, series_digest(instances.files), instances.note


def _read_source(row: dict, options: IngestOptions) -> tuple[nib.Nifti1Image, str, str]:
    """Read the case's image; returns (image, source checksum, note for the shard table)."""
    if row["source_kind"] == "dicom":
        return _read_dicom(row, options)
    source = Path(row["source"])
    if not source.exists():
        raise CaseRejected(f"source file missing: {source}")
    if row["source_kind"] == PICTURE:
        try:
            return read_image2d(source, options.pixel_spacing_mm), sha256_file(source), ""
        except Exception as err:  # Pillow's errors on a truncated / corrupt / unknown file
            raise CaseRejected(f"unreadable {source.name}: {_first_line(err)}") from err
    try:  # the header as stored first: nibabel would repair (or fail on) a degenerate pixdim
        reasons = header_spacing_reasons(stored_nifti_header(source))
        if not reasons:
            return read_volume(source), sha256_file(source), ""
    except Exception as err:  # any reader failure is a property of the file, not of the pipeline
        raise CaseRejected(f"unreadable {source.name}: {_first_line(err)}") from err
    raise CaseRejected("; ".join(reasons))


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _read_label(row: dict, options: IngestOptions) -> nib.Nifti1Image:
    """The case's label map, canonical (a mask picture: binary by ``ingest.pictures.mask_threshold``); a case
    with several label files (``;``-joined, e.g. BUSI's multifocal masks) gets their voxel-wise maximum."""
    maps = []
    for part in row["label"].split(LABEL_SEPARATOR):
        path = Path(part)
        try:
            if is_image2d_file(path):
                maps.append(read_mask2d(path, options.mask_threshold, options.pixel_spacing_mm))
            else:
                maps.append(canonical(read_volume(path)))
        except Exception as err:
            raise CaseRejected(f"unreadable label map {path.name}: {err}") from err
        if not _same_grid(maps[-1], maps[0]):
            raise CaseRejected(f"label files of one case differ in geometry ({path.name})")
    if len(maps) == 1:
        return maps[0]
    data = np.maximum.reduce([np.asarray(m.dataobj) for m in maps])
    return nib.Nifti1Image(data, maps[0].affine)


def apply_rescale(image: nib.Nifti1Image, slope, intercept) -> nib.Nifti1Image:
    """Apply a per-case rescale (values from a dataset's metadata CSV, e.g. CT-RATE); no-op when absent."""
    if slope in ("", None) and intercept in ("", None):
        return image
    slope = float(slope) if slope not in ("", None) else 1.0
    intercept = float(intercept) if intercept not in ("", None) else 0.0
    data = np.asarray(image.dataobj, dtype=np.float64) * slope + intercept
    return nib.Nifti1Image(data.astype(np.float32), image.affine)


def ct_storage_dtype(data: np.ndarray, choice: str) -> type:
    """int16 when the HU values are whole numbers inside int16 (choice ``auto``), else float32."""
    if choice == "float32":
        return np.float32
    fits = np.issubdtype(data.dtype, np.integer) or np.all(np.mod(data, 1) == 0)
    fits = fits and data.min() >= np.iinfo(np.int16).min and data.max() <= np.iinfo(np.int16).max
    if choice == "int16" and not fits:
        raise CaseRejected("HU values do not fit int16 (ingest.ct_dtype: int16); use auto or float32")
    return np.int16 if fits else np.float32


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-3)


def ingest_case(row: dict, out_dir: Path, options: IngestOptions) -> dict:
    """Ingest one sources row into ``out_dir/images`` (+ ``labels``); returns the shard-table row.

    Raises ``CaseRejected`` with the one-line quarantine reason.
    """
    image, source_digest, note = _read_source(row, options)
    image = apply_rescale(image, row.get("rescale_slope", ""), row.get("rescale_intercept", ""))
    original_orientation = orientation_codes(image)
    image = canonical(image)
    data = np.asarray(image.dataobj)
    reasons = qc_reasons(image, row["modality"], options.qc, planar=row["source_kind"] == PICTURE)
    if reasons:
        raise CaseRejected("; ".join(reasons))
    dtype = ct_storage_dtype(data, options.ct_dtype) if row["modality"] == "CT" else np.float32
    label_path = ""
    if row.get("label"):
        label = _read_label(row, options)
        if not _same_grid(label, image):
            raise CaseRejected("label map geometry (shape/affine) differs from the image")
        label_path = str(write_nifti(label, out_dir / "labels" / f"{row['case_id']}.nii.gz", np.int16))
    path = write_nifti(image, out_dir / "images" / f"{row['case_id']}.nii.gz", dtype)
    spacing = voxel_spacing(image)
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "label_path": label_path,
        "source_sha256": source_digest,
        "source_orientation": original_orientation,
        "shape": "x".join(str(int(n)) for n in image.shape[:3]),
        "spacing": "x".join(f"{s:.4g}" for s in spacing),
        "dtype": np.dtype(dtype).name,
        "min": float(data.min()),
        "max": float(data.max()),
        "notes": note,
    }


def ingest_shard(sources: pd.DataFrame, out_dir: str | Path, options: IngestOptions, progress: bool = True) -> pd.DataFrame:
    """Ingest every case of a shard into the folder ``out_dir`` (written atomically as a whole).

    Returns the shard table: one row per case with ``status`` (``ok``/``quarantined``) and ``reason``.
    A failing case never stops the others.
    """
    columns = list(sources.columns)
    return process_cases(
        sources.to_dict("records"), out_dir, lambda case, tmp: ingest_case(case, tmp, options),
        columns=columns,
        error_reason=lambda err: f"ingest error: {type(err).__name__}: {err}",
        path_keys=("path", "label_path"), stage="ingest", progress=progress)
