"""Reading medical volumes (NIfTI, NRRD, MHA/MHD) into canonical RAS NIfTI images, and writing them.

NIfTI is read with nibabel (its affine is kept exactly); NRRD and MetaImage go through SimpleITK,
whose LPS geometry is converted to a RAS affine. ``canonical`` reorders axes to the closest RAS+
orientation without resampling, so spacing and values are untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.openers import ImageOpener

from medsynth.fsutil import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
#: LPS (DICOM/ITK world) to RAS (NIfTI world)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its volume suffix (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_volume_file(path: str | os.PathLike) -> bool:
    """True for the file types ``read_volume`` understands (DICOM is handled by ``medsynth.io.dicom``)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def sitk_to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """Convert a 3D SimpleITK image (LPS world) to a nibabel image with the equivalent RAS affine."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("multi-component (vector/RGB) images are not supported")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing[None, :]
    affine_lps[:3, 3] = image.GetOrigin()
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    return nib.Nifti1Image(np.ascontiguousarray(data), LPS_TO_RAS @ affine_lps)


def nifti_to_sitk(image: nib.Nifti1Image) -> sitk.Image:
    """Convert a nibabel image (RAS affine) to SimpleITK (LPS world); inverse of ``sitk_to_nifti``."""
    affine_lps = LPS_TO_RAS @ image.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    out = sitk.GetImageFromArray(np.asarray(image.dataobj).transpose(2, 1, 0))
    out.SetSpacing(spacing.tolist())
    out.SetOrigin(affine_lps[:3, 3].tolist())
    out.SetDirection((affine_lps[:3, :3] / spacing[None, :]).flatten().tolist())
    return out


def read_volume(path: str | os.PathLike) -> nib.Nifti1Image:
    """Read a NIfTI, NRRD or MetaImage volume as a nibabel image (not yet canonical)."""
    path = Path(path)
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        img = nib.load(str(path))
        return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    if lower.endswith(ITK_SUFFIXES):
        return sitk_to_nifti(sitk.ReadImage(str(path)))
    raise ValueError(f"unsupported volume type: {path.name}")


def stored_nifti_header(path: str | os.PathLike) -> nib.Nifti1Header | None:
    """The header of a NIfTI file exactly as stored; ``None`` for other file types.

    ``nib.load`` repairs the header it returns (a zero ``pixdim`` becomes 1, a negative one its absolute
    value), so only the stored header shows the spacing the file really declares.
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        return None
    header_class = type(nib.load(str(path)).header)  # NIfTI-1 or -2, and nibabel's errors for a broken file
    with ImageOpener(str(path)) as fobj:
        return header_class.from_fileobj(fobj, check=False)


def canonical(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """Reorder axes to the closest RAS+ orientation (no resampling; spacing and values unchanged)."""
    return nib.as_closest_canonical(image)


def orientation_codes(image: nib.Nifti1Image) -> str:
    """Axis codes of the image, e.g. ``RAS`` or ``LPS``."""
    return "".join(nib.aff2axcodes(image.affine))


def write_nifti(image: nib.Nifti1Image, path: str | os.PathLike, dtype: np.dtype | type | None = None) -> Path:
    """Write ``image`` (optionally cast to ``dtype``) atomically as compressed NIfTI."""
    data = np.asarray(image.dataobj)
    if dtype is not None:
        data = data.astype(dtype)
    out = nib.Nifti1Image(data, image.affine)
    out.header.set_xyzt_units("mm", "sec")
    out.set_qform(image.affine, code=1)
    out.set_sform(image.affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(out, str(tmp))
    return Path(path)
