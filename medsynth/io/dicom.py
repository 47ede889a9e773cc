"""DICOM series: find them, check their slice geometry, and read them as HU volumes.

Headers are read with pydicom (no pixel data) to group files by SeriesInstanceUID and sort them
along the slice normal; missing, duplicated or unevenly spaced slices are reported as errors.
Pixels are then read by SimpleITK's GDCM series reader, which decodes compressed transfer syntaxes
(JPEG 2000, JPEG lossless, RLE, ...) and applies RescaleSlope/RescaleIntercept.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from medsynth.fsutil import sha256_file
from medsynth.io.volume import sitk_to_nifti


class DicomSeriesError(ValueError):
    """A DICOM series cannot be assembled into a trustworthy volume (reason in the message)."""


@dataclass
class DicomSeries:
    """One series: its UID, its files, and the header fields the manifest needs."""

    series_uid: str
    files: list[Path] = field(default_factory=list)
    patient_id: str = ""
    modality: str = ""
    series_number: str = ""
    description: str = ""


def _read_header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
        return None


def find_series(files: Iterable[str | os.PathLike]) -> list[DicomSeries]:
    """Group the DICOM files among ``files`` by SeriesInstanceUID (non-DICOM files are skipped)."""
    series: dict[str, DicomSeries] = {}
    for f in files:
        path = Path(f)
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        uid = str(ds.SeriesInstanceUID)
        entry = series.setdefault(
            uid,
            DicomSeries(
                series_uid=uid,
                patient_id=str(ds.get("PatientID", "")),
                modality=str(ds.get("Modality", "")),
                series_number=str(ds.get("SeriesNumber", "")),
                description=str(ds.get("SeriesDescription", "")),
            ),
        )
        entry.files.append(path)
    return sorted(series.values(), key=lambda s: (s.patient_id, s.series_number, s.series_uid))


def sort_slices(files: list[Path], spacing_tolerance: float = 0.1) -> list[Path]:
    """Sort one series' files along the slice normal and check that the slices are evenly spaced.

    Raises ``DicomSeriesError`` for: missing geometry tags, mixed orientations, duplicate slice
    positions, missing slices (a gap that is a multiple of the typical spacing) and uneven spacing
    (relative deviation above ``spacing_tolerance``).
    """
    headers = []
    for path in files:
        ds = _read_header(path)
        if ds is None or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise DicomSeriesError(f"missing ImagePositionPatient/ImageOrientationPatient in {path.name}")
        headers.append((path, np.asarray(ds.ImageOrientationPatient, float), np.asarray(ds.ImagePositionPatient, float)))
    orientation = headers[0][1]
    if any(not np.allclose(h[1], orientation, atol=1e-4) for h in headers):
        raise DicomSeriesError("slices of the series have different orientations")
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(headers, key=lambda h: float(h[2] @ normal))
    positions = np.array([h[2] @ normal for h in ordered])
    if len(positions) >= 2:
        gaps = np.diff(positions)
        if np.any(gaps < 1e-3):
            raise DicomSeriesError(f"duplicate slice positions ({int(np.sum(gaps < 1e-3))} duplicates)")
        typical = float(np.median(gaps))
        deviation = np.abs(gaps - typical) / typical
        if np.any(deviation > spacing_tolerance):
            ratios = gaps / typical
            near_multiple = np.abs(ratios - np.round(ratios)) <= spacing_tolerance
            if np.any((np.round(ratios) >= 2) & near_multiple):
                missing = int(np.sum(np.round(ratios[ratios > 1.5]) - 1))
                raise DicomSeriesError(
                    f"missing slice(s): {missing} gap(s) in spacing {typical:.3g} mm (largest gap {gaps.max():.3g} mm)"
                )
            raise DicomSeriesError(f"uneven slice spacing: {gaps.min():.3g} to {gaps.max():.3g} mm")
    return [h[0] for h in ordered]


def read_series(files: list[Path], spacing_tolerance: float = 0.1) -> nib.Nifti1Image:
    """Read one checked, sorted DICOM series into a nibabel image (RAS affine, rescaled values)."""
    ordered = sort_slices(list(files), spacing_tolerance)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ordered])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise DicomSeriesError(f"pixel data could not be decoded: {first_line}") from err
    if image.GetDimension() == 2:
        image = sitk.JoinSeries([image])
    return sitk_to_nifti(image)


def series_digest(files: list[Path]) -> str:
    """sha256 over the sorted per-file sha256 digests of a series (one checksum per series)."""
    h = hashlib.sha256()
    for digest in sorted(sha256_file(p) for p in files):
        h.update(digest.encode())
    return h.hexdigest()
