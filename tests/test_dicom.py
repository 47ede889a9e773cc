"""DICOM series: round trips of the shipped scans, sorting, grouping and broken-series detection."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from dicom_writer import alter_instance, write_series

from medsynth.data.ingest import IngestOptions, ingest_case
from medsynth.io.dicom import DicomSeriesError, find_series, read_series, unique_instances
from medsynth.io.volume import canonical


def _assert_same_volume(got: nib.Nifti1Image, want: nib.Nifti1Image) -> None:
    want = canonical(want)
    got = canonical(got)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    np.testing.assert_allclose(got.affine, want.affine, atol=1e-4)  # orientation, spacing and origin


@pytest.mark.parametrize("compress", [None, "jpeg2000", "rle"])
def test_ct_series_round_trips_to_same_hu_and_geometry(tmp_path, ct_small, compress):
    files = write_series(ct_small, tmp_path, compress=compress, intercept=-2048)
    (series,) = find_series(files)
    assert series.modality == "CT" and len(series.files) == ct_small.shape[2]
    _assert_same_volume(read_series(series.files), ct_small)


def test_jpeg2000_files_really_are_compressed(tmp_path, ct_small):
    import pydicom

    files = write_series(ct_small, tmp_path, compress="jpeg2000")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless


def test_lps_mr_series_round_trips(tmp_path, mr_lps):
    files = write_series(mr_lps, tmp_path, modality="MR", intercept=-100, compress="jpeg2000")
    (series,) = find_series(files)
    assert series.modality == "MR"
    _assert_same_volume(read_series(series.files), mr_lps)


def test_rescale_slope_and_intercept_are_applied(tmp_path, ct_small):
    # stored = (HU + 2048) / 0.5: the raw pixels are nowhere near HU; reading must undo it
    files = write_series(ct_small, tmp_path, slope=0.5, intercept=-2048)
    import pydicom

    raw = pydicom.dcmread(files[0]).pixel_array
    assert raw.min() >= 0
    (series,) = find_series(files)
    _assert_same_volume(read_series(series.files), ct_small)


def test_series_are_grouped_by_uid_and_non_dicom_files_skipped(tmp_path, ct_small, mr_lps):
    a = write_series(ct_small, tmp_path / "mixed", patient_id="P1", series_number=3)
    b = write_series(mr_lps, tmp_path / "mixed", modality="MR", patient_id="P2", series_number=7, intercept=-100)
    (tmp_path / "mixed" / "notes.txt").write_text("not dicom")
    found = find_series(sorted((tmp_path / "mixed").iterdir()))
    assert [(s.patient_id, s.modality, len(s.files)) for s in found] == [("P1", "CT", len(a)), ("P2", "MR", len(b))]


def test_missing_slice_is_detected(tmp_path, ct_small):
    files = write_series(ct_small, tmp_path, drop_slices=(12,))
    with pytest.raises(DicomSeriesError, match="missing slice"):
        read_series(files)


def test_uneven_spacing_is_detected(tmp_path, ct_small):
    files = write_series(ct_small, tmp_path, shift_slice=(10, 1.2))
    with pytest.raises(DicomSeriesError, match="uneven slice spacing"):
        read_series(files)


def test_duplicate_positions_are_detected(tmp_path, ct_small):
    files = write_series(ct_small, tmp_path, shift_slice=(10, 3.0))  # slice 10 lands on slice 11
    with pytest.raises(DicomSeriesError, match="duplicate slice positions"):
        read_series(files)


def test_dicom_case_ingests_to_canonical_nifti_in_hu(tmp_path, ct_lps):
    write_series(ct_lps, tmp_path / "series", compress="jpeg2000")
    (series,) = find_series(sorted((tmp_path / "series").iterdir()))
    row = {"case_id": "dcm_case", "modality": "CT", "source_kind": "dicom", "source": str(tmp_path / "series"),
           "series_uid": series.series_uid, "label": ""}
    result = ingest_case(row, tmp_path / "out", IngestOptions.from_config())
    out = nib.load(result["path"])
    assert "".join(nib.aff2axcodes(out.affine)) == "RAS"
    assert result["dtype"] == "int16" and result["source_orientation"] == "LPS"
    _assert_same_volume(out, ct_lps)


# ---- anonymised series and copies of a series in two folders -------------------------------------

def test_empty_patient_id_and_series_number_are_absent_not_none(tmp_path, ct_small):
    files = write_series(ct_small, tmp_path / "anon", patient_id="", series_number=None, study_uid="")
    (series,) = find_series(files)
    assert (series.patient_id, series.series_number, series.study_uid) == ("", "", "")
    assert series.patient == (series.series_uid, "SeriesInstanceUID")  # never a constant shared by all such series


def _copied_series(tmp_path, volume) -> tuple[list, list]:
    """One series written to ``scans/copy_a`` and copied byte for byte to ``scans/copy_b``; (files a, files b)."""
    first = write_series(volume, tmp_path / "scans" / "copy_a")
    shutil.copytree(tmp_path / "scans" / "copy_a", tmp_path / "scans" / "copy_b")
    return first, [tmp_path / "scans" / "copy_b" / f.name for f in first]


def test_identical_copies_in_two_folders_are_read_once(tmp_path, ct_small):
    a, b = _copied_series(tmp_path, ct_small)
    (series,) = find_series(sorted(a + b))
    assert series.folder == tmp_path / "scans"
    with pytest.raises(DicomSeriesError, match=r"duplicate slice positions .* in scans/copy_a and .* in scans/copy_b"):
        read_series(series.files)  # what happened before: the merged copies were quarantined
    instances = unique_instances(series.files)
    assert sorted(instances.files) == sorted(a) and sorted(instances.ignored) == sorted(b)  # the sorted-first copy
    assert instances.note == f"{len(b)} duplicate DICOM files ignored (identical copies in scans/copy_a and scans/copy_b)"
    _assert_same_volume(read_series(instances.files), ct_small)


def test_conflicting_copies_of_one_instance_name_both_folders(tmp_path, ct_small):
    a, b = _copied_series(tmp_path, ct_small)
    uid = alter_instance(b[3])
    with pytest.raises(DicomSeriesError) as err:
        unique_instances(a + b)
    assert str(err.value) == (f"conflicting copies of DICOM instance {uid}: {a[3].name} in scans/copy_a and "
                              f"{b[3].name} in scans/copy_b differ in pixel data")


def test_different_instances_at_one_position_name_both_folders(tmp_path, ct_small):
    a, b = _copied_series(tmp_path, ct_small)
    alter_instance(b[3], new_instance=True)
    instances = unique_instances(a + b)
    assert len(instances.files) == len(a) + 1
    with pytest.raises(DicomSeriesError, match=rf"^duplicate slice positions \(1 duplicate, e\.g\. "
                       rf"{a[3].name} in scans/copy_a and {b[3].name} in scans/copy_b both at -?[\d.]+ mm\)$"):
        read_series(instances.files)
