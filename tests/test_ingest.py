"""Ingest: orientation canonicalisation, file formats, and every quarantine reason."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from dicom_writer import alter_instance, write_series

from medsynth.cases import SHARD_TABLE, CaseRejected, read_shard_table
from medsynth.data.ingest import IngestOptions, ingest_case, ingest_shard
from medsynth.io.volume import canonical, nifti_to_sitk, orientation_codes, read_volume


def _row(path, case_id="case", modality="CT", label="", kind="nifti", series_uid=""):
    return {"case_id": case_id, "modality": modality, "source_kind": kind, "source": str(path),
            "series_uid": series_uid, "label": str(label)}


def _save(tmp_path, data, affine=None, name="img.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize("fixture", ["ct_lps", "mr_lps", "ct_small"])
def test_lps_and_ras_files_become_ras_with_same_voxels_in_world(request, tmp_path, fixture):
    img = request.getfixturevalue(fixture)
    out = canonical(img)
    assert orientation_codes(out) == "RAS"
    # the same world point holds the same value before and after
    data_in, data_out = np.asarray(img.dataobj), np.asarray(out.dataobj)
    for ijk in [(0, 0, 0), (5, 7, 9), tuple(np.array(img.shape) - 1)]:
        world = img.affine @ np.array([*ijk, 1.0])
        ijk_out = np.round(np.linalg.inv(out.affine) @ world)[:3].astype(int)
        assert data_in[ijk] == data_out[tuple(ijk_out)]
    np.testing.assert_allclose(np.linalg.norm(out.affine[:3, :3], axis=0), np.linalg.norm(img.affine[:3, :3], axis=0))


def test_lps_file_ingests_as_ras(tmp_path, example_dir):
    result = ingest_case(_row(example_dir / "ct" / "chest_cta_1p5mm.nii.gz"), tmp_path, IngestOptions.from_config())
    out = nib.load(result["path"])
    assert orientation_codes(out) == "RAS" and result["source_orientation"] == "LPS"
    assert result["spacing"] == "1.5x1.5x1.5" and out.get_data_dtype() == np.int16


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_read_to_same_geometry(tmp_path, ct_lps, suffix):
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(nifti_to_sitk(ct_lps), str(path))
    back = read_volume(path)
    np.testing.assert_allclose(back.affine, ct_lps.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(ct_lps.dataobj))


def test_mr_is_stored_float32_and_label_follows_image(tmp_path, example_dir):
    row = _row(example_dir / "mr" / "abdomen_mr_3mm.nii.gz", modality="MR",
               label=example_dir / "labels" / "abdomen_mr_3mm_total_mr.nii.gz")
    result = ingest_case(row, tmp_path, IngestOptions.from_config())
    img, lab = nib.load(result["path"]), nib.load(result["label_path"])
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, lab.affine)
    assert orientation_codes(lab) == "RAS" and lab.shape == img.shape


# ---- every quarantine reason -------------------------------------------------------------------

def _reject(tmp_path, row, match, options=IngestOptions.from_config()):
    with pytest.raises(CaseRejected, match=match):
        ingest_case(row, tmp_path / "out", options)
    assert not (tmp_path / "out" / "images").exists() or not any((tmp_path / "out" / "images").iterdir())


def test_quarantine_unreadable_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not a nifti file")
    _reject(tmp_path, _row(path), "unreadable broken.nii.gz")


def test_quarantine_missing_file(tmp_path):
    _reject(tmp_path, _row(tmp_path / "gone.nii.gz"), "source file missing")


def test_quarantine_nan(tmp_path, ct_small):
    data = np.asarray(ct_small.dataobj).astype(np.float32)
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    _reject(tmp_path, _row(_save(tmp_path, data, ct_small.affine)), r"non-finite values: 2 NaN/inf")


def test_quarantine_empty_image(tmp_path):
    _reject(tmp_path, _row(_save(tmp_path, np.zeros((40, 40, 40), np.int16))), "empty image")


def test_quarantine_implausible_hu_range(tmp_path, ct_small):
    data = np.asarray(ct_small.dataobj).astype(np.int32)
    data[0, 0, 0] = 40000
    _reject(tmp_path, _row(_save(tmp_path, data, ct_small.affine)), "implausible HU: values")


def test_quarantine_ct_without_rescale(tmp_path, ct_small):
    raw = np.asarray(ct_small.dataobj).astype(np.int32) + 1024  # stored values, intercept never applied
    _reject(tmp_path, _row(_save(tmp_path, raw, ct_small.affine)), "no air")


def test_quarantine_mr_labelled_as_ct(tmp_path, example_dir):
    _reject(tmp_path, _row(example_dir / "mr" / "abdomen_mr_3mm.nii.gz", modality="CT"), "implausible HU")


def test_quarantine_degenerate_spacing(tmp_path, ct_small):
    affine = ct_small.affine.copy()
    affine[2, 2] = 0.01
    _reject(tmp_path, _row(_save(tmp_path, np.asarray(ct_small.dataobj), affine)), "degenerate spacing")


def test_quarantine_implausibly_thick_slices(tmp_path, ct_small):
    affine = ct_small.affine.copy()
    affine[2, 2] = 50.0  # a spacing written in the wrong unit
    _reject(tmp_path, _row(_save(tmp_path, np.asarray(ct_small.dataobj), affine)), r"degenerate spacing: \[3.0, 3.0, 50.0\]")


def test_quarantine_too_few_slices(tmp_path, ct_small):
    data = np.asarray(ct_small.dataobj)[:, :, :5]
    _reject(tmp_path, _row(_save(tmp_path, data, ct_small.affine)), "too few slices")


def test_quarantine_label_geometry_mismatch(tmp_path, ct_small, example_dir):
    label = _save(tmp_path, np.zeros((10, 10, 10), np.int16), name="lab.nii.gz")
    _reject(tmp_path, _row(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", label=label), "label map geometry")


def test_quarantine_dicom_missing_slice(tmp_path, ct_small):
    files = write_series(ct_small, tmp_path / "dcm", drop_slices=(7,))
    from medsynth.io.dicom import find_series

    (series,) = find_series(files)
    _reject(tmp_path, _row(tmp_path / "dcm", kind="dicom", series_uid=series.series_uid), "missing slice")


def test_shard_keeps_going_and_leaves_no_partial_files(tmp_path, example_dir):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"garbage")
    sources = pd.DataFrame([
        _row(broken, case_id="bad"),
        _row(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", case_id="good"),
    ])
    table = ingest_shard(sources, tmp_path / "shard-000", IngestOptions.from_config(), progress=False)
    assert table.set_index("case_id")["status"].to_dict() == {"bad": "quarantined", "good": "ok"}
    produced = sorted(p.name for p in (tmp_path / "shard-000" / "images").iterdir())
    assert produced == ["good.nii.gz"]
    assert (tmp_path / "shard-000" / SHARD_TABLE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


# ---- voxel sizes as the file stores them (nibabel repairs zero and negative pixdims on load) --------

def _save_stored_header(tmp_path, image, pixdim: dict[int, float], sform_code=0, qform_code=0, name="img.nii.gz"):
    """Save ``image`` with header fields written as given, bypassing nibabel's repairs (0 -> 1, -x -> x)."""
    import gzip

    out = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
    raw = bytearray(out.to_bytes())
    header = np.ndarray((), dtype=out.header.structarr.dtype, buffer=raw)  # a view of the header bytes
    for axis, value in pixdim.items():
        header["pixdim"][axis] = value
    header["sform_code"], header["qform_code"] = sform_code, qform_code
    path = tmp_path / name
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


@pytest.mark.parametrize("value, problem", [
    (0.0, "pixdim[3] = 0 (nibabel would assume 1 mm)"),
    (-3.0, "pixdim[3] = -3 (negative: readers disagree, nibabel would use 3 mm)"),
    (float("nan"), "pixdim[3] = nan"),
])
def test_quarantine_degenerate_pixdim_in_the_file_header(tmp_path, ct_small, value, problem):
    path = _save_stored_header(tmp_path, ct_small, {3: value})
    with pytest.raises(CaseRejected) as err:
        ingest_case(_row(path), tmp_path / "out", IngestOptions.from_config())
    assert str(err.value) == f"degenerate spacing: {problem} in the file header, which has no sform to override it"


def test_a_qform_alone_takes_its_spacing_from_pixdim_too(tmp_path, ct_small):
    path = _save_stored_header(tmp_path, ct_small, {3: 0.0}, qform_code=1)
    _reject(tmp_path, _row(path), r"^degenerate spacing: pixdim\[3\] = 0 ")


def test_an_sform_overrides_a_zero_pixdim(tmp_path, ct_small):
    path = _save_stored_header(tmp_path, ct_small, {3: 0.0}, sform_code=1)
    result = ingest_case(_row(path), tmp_path / "out", IngestOptions.from_config())
    assert result["spacing"] == "x".join(f"{s:g}" for s in ct_small.header.get_zooms())


# ---- a real-world folder through discovery, one ingest shard and the manifest ---------------------

def test_shard_with_copied_series_conflicting_copies_and_zero_pixdim(tmp_path, ct_small, example_dir):
    import shutil

    from medsynth.data.discover import discover_cases
    from medsynth.data.manifest import build_manifest

    root = tmp_path / "scans"
    files = {}
    for name, patient, number in [("copied", "P1", 2), ("conflict", "P2", 3)]:
        files[name] = write_series(ct_small, root / name / "copy_a", patient_id=patient, series_number=number)
        shutil.copytree(root / name / "copy_a", root / name / "copy_b")
    changed = files["conflict"][0].name
    uid = alter_instance(root / "conflict" / "copy_b" / changed)
    shutil.copy(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", root / "good.nii.gz")
    _save_stored_header(root, ct_small, {3: 0.0}, name="zero_slice_spacing.nii.gz")
    sources = discover_cases({"name": "mine", "kind": "local", "root": str(root), "layout": {}}, root)

    table = ingest_shard(sources, tmp_path / "shard-000", IngestOptions.from_config(), progress=False).set_index("case_id")
    assert table["status"].to_dict() == {"mine_P1_2": "ok", "mine_P2_3": "quarantined", "mine_good": "ok",
                                         "mine_zero_slice_spacing": "quarantined"}
    assert table.loc["mine_P1_2", "notes"] == (
        f"{len(files['copied'])} duplicate DICOM files ignored (identical copies in copied/copy_a and copied/copy_b)")
    assert table.loc["mine_P1_2", "shape"] == "x".join(str(n) for n in ct_small.shape)
    assert table.loc["mine_P2_3", "reason"] == (f"conflicting copies of DICOM instance {uid}: {changed} in "
                                                f"conflict/copy_a and {changed} in conflict/copy_b differ in pixel data")
    assert table.loc["mine_zero_slice_spacing", "reason"] == ("degenerate spacing: pixdim[3] = 0 (nibabel would assume "
                                                              "1 mm) in the file header, which has no sform to override it")
    shard = read_shard_table(tmp_path / "shard-000")  # as the manifest rule reads it: with the notes column
    manifest, quarantine = build_manifest([shard], {"fractions": {"train": 1.0}}, seed=0)
    assert manifest["case_id"].tolist() == ["mine_P1_2", "mine_good"]
    assert quarantine["case_id"].tolist() == ["mine_P2_3", "mine_zero_slice_spacing"]
