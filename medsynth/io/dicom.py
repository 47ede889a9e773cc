"""DICOM series: find them, check their slice geometry, and read them as HU volumes.

Headers are read with pydicom (no pixel data) to group files by SeriesInstanceUID and sort them
along the slice normal; missing, duplicated or unevenly spaced slices are reported as errors.
Identical copies of an instance (one SOPInstanceUID, e.g. a series copied into two folders) are
read once; different files under one SOPInstanceUID are an error naming both.
Pixels are then read by SimpleITK's GDCM series reader, which decodes compressed transfer syntaxes
(JPEG 2000, JPEG lossless, RLE, ...) and applies RescaleSlope/RescaleIntercept.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from medsynth.fsutil import sha256_file
from medsynth.io.volume import sitk_to_nifti


class DicomSeriesError(ValueError):
    """A DICOM series cannot be assembled into a trustworthy volume (reason in the message)."""


#: Where a series' patient id comes from, in order: a study belongs to one patient, a series to one study.
PATIENT_ID_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class DicomSeries:
    """One series: its UID, its files, and the header fields the manifest needs ("" when absent or empty)."""

    series_uid: str
    files: list[Path] = field(default_factory=list)
    patient_id: str = ""
    modality: str = ""
    series_number: str = ""
    description: str = ""
    study_uid: str = ""
    #: SOPInstanceUID of each file ("" when it has none), read with the header that grouped it
    instance_uids: dict[Path, str] = field(default_factory=dict)

    @property
    def patient(self) -> tuple[str, str]:
        """(patient id, the tag it came from): the first of ``PATIENT_ID_TAGS`` with a value, never a shared constant."""
        values = dict(zip(PATIENT_ID_TAGS, (self.patient_id, self.study_uid, self.series_uid)))
        tag = next((t for t in PATIENT_ID_TAGS if values[t]), PATIENT_ID_TAGS[-1])
        return values[tag], tag

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file of the series (its one folder, or above all its copies)."""
        return Path(os.path.commonpath([f.parent for f in self.files]))


def _read_header(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
        return None


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    """A header value as text; "" when absent or empty (pydicom gives None for an empty IS/DS/UI element)."""
    value = ds.get(keyword)
    text = "" if value is None else str(value)
    return text if text.strip() else ""


def find_series(files: Iterable[str | os.PathLike]) -> list[DicomSeries]:
    """Group the DICOM files among ``files`` by SeriesInstanceUID (non-DICOM files and files without one are skipped)."""
    series: dict[str, DicomSeries] = {}
    for f in files:
        path = Path(f)
        ds = _read_header(path)
        uid = _text(ds, "SeriesInstanceUID") if ds is not None else ""
        if not uid:
            continue
        entry = series.setdefault(
            uid,
            DicomSeries(
                series_uid=uid,
                patient_id=_text(ds, "PatientID"),
                modality=_text(ds, "Modality"),
                series_number=_text(ds, "SeriesNumber"),
                description=_text(ds, "SeriesDescription"),
                study_uid=_text(ds, "StudyInstanceUID"),
            ),
        )
        entry.files.append(path)
        entry.instance_uids[path] = _text(ds, "SOPInstanceUID")
    return sorted(series.values(), key=lambda s: (s.patient_id, s.series_number, s.series_uid))


def _folder_labels(folders: list[Path]) -> dict[Path, str]:
    """Short names of ``folders``: each relative to the parent of their common folder (``scans/copy_a``)."""
    anchor = Path(os.path.commonpath(folders)).parent
    return {f: f.relative_to(anchor).as_posix() or str(f) for f in folders}


def _locate(a: Path, b: Path) -> str:
    """Where two files are, naming both folders when they differ."""
    labels = _folder_labels(sorted({a.parent, b.parent}))
    if a.parent == b.parent:
        return f"{a.name} and {b.name} in {labels[a.parent]}"
    return f"{a.name} in {labels[a.parent]} and {b.name} in {labels[b.parent]}"


def _join(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _pixels_differ(a: pydicom.Dataset, b: pydicom.Dataset) -> bool:
    """True when two instances hold different pixels (stored bytes, else decoded values across transfer syntaxes)."""
    if a.get("PixelData") == b.get("PixelData"):
        return False
    if a.file_meta.get("TransferSyntaxUID") == b.file_meta.get("TransferSyntaxUID"):
        return True
    try:
        return not np.array_equal(a.pixel_array, b.pixel_array)
    except Exception:  # undecodable here: not provably the same pixels
        return True


#: Header fields two copies of one instance must share (besides the pixels) to be the same image.
COPY_FIELDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept",
               "Rows", "Columns")


def _copy_difference(first: Path, copy: Path) -> str | None:
    """What differs between two files of one SOPInstanceUID ("pixel data" or a header field), or None."""
    if sha256_file(first) == sha256_file(copy):
        return None
    try:
        a, b = pydicom.dcmread(str(first)), pydicom.dcmread(str(copy))
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError) as err:
        return f"content (one cannot be read in full: {type(err).__name__})"
    if _pixels_differ(a, b):
        return "pixel data"
    return next((k for k in COPY_FIELDS if a.get(k) != b.get(k)), None)


@dataclass(frozen=True)
class UniqueInstances:
    """A series' files, one per SOPInstanceUID, and the identical copies left out."""

    files: list[Path]
    ignored: list[Path]
    copy_folders: list[str]

    @property
    def note(self) -> str:
        """One line for the shard table ("" when nothing was left out)."""
        if not self.ignored:
            return ""
        files = "file" if len(self.ignored) == 1 else "files"
        return f"{len(self.ignored)} duplicate DICOM {files} ignored (identical copies in {_join(self.copy_folders)})"


def unique_instances(files: Iterable[Path], instance_uids: Mapping[Path, str] | None = None) -> UniqueInstances:
    """Keep one file per SOPInstanceUID (the first in sorted path order) when its copies are identical.

    Copies are identical when their bytes are, or their pixels and geometry (``COPY_FIELDS``) are.
    Raises ``DicomSeriesError`` naming both files and folders when they differ. ``instance_uids``
    (``DicomSeries.instance_uids``) saves reading each header again.
    """
    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(f) for f in files):
        if instance_uids is not None and path in instance_uids:
            uid = instance_uids[path]
        else:
            ds = _read_header(path)
            uid = _text(ds, "SOPInstanceUID") if ds is not None else ""
        groups.setdefault(uid or str(path), []).append(path)  # a file without a UID is an instance of its own
    for uid, (first, *copies) in groups.items():
        for copy in copies:
            difference = _copy_difference(first, copy)
            if difference:
                raise DicomSeriesError(f"conflicting copies of DICOM instance {uid}: {_locate(first, copy)} "
                                       f"differ in {difference}")
    copied = sorted({p.parent for group in groups.values() if len(group) > 1 for p in group})
    return UniqueInstances(files=[g[0] for g in groups.values()], ignored=[p for g in groups.values() for p in g[1:]],
                           copy_folders=list(_folder_labels(copied).values()) if copied else [])


def _duplicate_positions(ordered: list, positions: np.ndarray, duplicate: np.ndarray) -> str:
    """The reason for slices sharing a position: how many, and the first pair with its files and folders."""
    first = int(np.argmax(duplicate))
    count = int(duplicate.sum())
    return (f"duplicate slice positions ({count} duplicate{'s' if count != 1 else ''}, e.g. "
            f"{_locate(ordered[first][0], ordered[first + 1][0])} both at {positions[first]:.4g} mm)")


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
            raise DicomSeriesError(_duplicate_positions(ordered, positions, gaps < 1e-3))
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
