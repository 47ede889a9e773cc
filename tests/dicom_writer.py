"""Write DICOM CT/MR series from NIfTI volumes with pydicom (test helper).

An independent writer (pydicom, not the SimpleITK/GDCM reader under test) so that a round trip
checks our reading, not one library against itself. Stored values are HU minus the intercept
divided by the slope, as scanners store them; ``compress`` encodes with pydicom's encoders
(JPEG 2000 lossless through pylibjpeg-openjpeg, RLE through pydicom itself).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_series(
    volume: nib.Nifti1Image,
    out_dir: Path,
    *,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -2048.0,
    compress: str | None = None,
    drop_slices: tuple[int, ...] = (),
    shift_slice: tuple[int, float] | None = None,
    patient_id: str = "TEST001",
    series_number: int | None = 1,
    study_uid: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume`` (values in HU/arbitrary units, any orientation) as one DICOM series.

    ``drop_slices`` omits slices (a missing-slice series); ``shift_slice=(k, mm)`` moves slice k along
    the normal (uneven spacing). Files are written in shuffled order with random names so the
    reader must sort by position, not by name. ``patient_id=""``, ``series_number=None`` or
    ``study_uid=""`` write that element empty, as anonymisers do; ``study_uid=None`` draws a new one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data = np.asarray(volume.dataobj, dtype=np.float64)
    affine_lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    row_dir, col_dir = affine_lps[:3, 0] / spacing[0], affine_lps[:3, 1] / spacing[1]
    study_uid = generate_uid() if study_uid is None else study_uid
    series_uid, frame_uid = generate_uid(), generate_uid()
    stored = np.round((data - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("values do not fit uint16 with this slope/intercept")
    stored = stored.astype(np.uint16)
    order = [k for k in range(data.shape[2]) if k not in drop_slices]
    rng = np.random.default_rng(seed)
    if shuffle:
        order = list(rng.permutation(order))
    paths = []
    for k in order:
        position = affine_lps @ np.array([0, 0, k, 1.0])
        if shift_slice and shift_slice[0] == k:
            position[:3] += np.cross(row_dir, col_dir) * shift_slice[1]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName = patient_id, "Test^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, int(k) + 1
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in position[:3]]
        ds.ImageOrientationPatient = [float(f"{v:.6f}") for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (between rows), column spacing
        ds.SliceThickness = float(spacing[2])
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        plane = stored[:, :, k].T  # DICOM rows run along the column direction: (row, col) = (j, i)
        ds.Rows, ds.Columns = plane.shape
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        if compress == "jpeg2000":
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        elif compress == "rle":
            ds.compress(RLELossless)
        path = out_dir / f"{generate_uid().split('.')[-1]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def alter_instance(path: Path, *, new_instance: bool = False) -> str:
    """Add 1 to one stored pixel of a DICOM file, in place; ``new_instance`` also gives it a new SOPInstanceUID.

    Returns the file's SOPInstanceUID (after the change): a conflicting copy, or another slice at the same position.
    """
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 1
    ds.PixelData = pixels.tobytes()
    if new_instance:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path)
    return str(ds.SOPInstanceUID)
