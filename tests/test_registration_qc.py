"""Registration QC on the shipped abdomen CT (6 mm) and a 144 mm study grid: a scan much longer than the grid,
a header with halved voxel spacing and one with 1.35x spacing are quarantined, each with a one-line reason
naming the measure, its value, the threshold and its config key; the case that fits the grid stays ok."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from snakemake.exceptions import WorkflowError

from medsynth.cases import CaseRejected, read_shard_table
from medsynth.io.volume import canonical
from medsynth.preprocess.registration import reference_grid
from medsynth.preprocess.registration.qc import RegistrationQC, body_mask
from medsynth.preprocess.stage import QC_COLUMNS, check_registration
from medsynth.tasks.preprocess import register_ingest_shard

SPACING = 6.0
FAST = {"shrink_factors": [2, 1], "smoothing_sigmas": [1.0, 0.0], "iterations": [100, 30]}
KEY = "preprocess.registration_qc"
#: case -> the reason it is quarantined with (None: stays ok)
EXPECTED = {
    "fits": None,
    "too_long": rf"registration QC: (\d+\.\d)% of the body inside the study grid \(< {KEY}\.min_body_fraction 0\.6\)",
    "half_spacing": rf"registration QC: final mattes metric (-0\.\d+) \(> {KEY}\.max_metric\.mattes -0\.12; lower is better\)",
    "large_spacing": rf"registration QC: affine volume scale \|det A\| (\d\.\d\d) \(outside {KEY}\.det_range \[0\.5, 2\]\)",
}
#: the table column each reason quotes
QUOTED = {"too_long": ("body_fraction", 100.0), "half_spacing": ("metric_value", 1.0), "large_spacing": ("affine_det", 1.0)}


def _downsample(img: nib.Nifti1Image) -> nib.Nifti1Image:
    img = canonical(img)
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    return reference_grid(img, (SPACING,) * 3, tuple(int(s) for s in np.round(np.asarray(img.shape) * zooms / SPACING)))


def _crop_z(img: nib.Nifti1Image, k0: int, k1: int) -> nib.Nifti1Image:
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.array([0, 0, k0, 1.0]))[:3]
    return nib.Nifti1Image(np.ascontiguousarray(np.asarray(img.dataobj)[:, :, k0:k1]), affine)


def _respaced(img: nib.Nifti1Image, factor: float) -> nib.Nifti1Image:
    """The same voxels with a header that scales the voxel spacing by ``factor`` (a wrong header)."""
    affine = img.affine.copy()
    affine[:3, :3] *= factor
    return nib.Nifti1Image(np.asarray(img.dataobj), affine)


@pytest.fixture(scope="module")
def study(tmp_path_factory, example_dir):
    """(manifest, ingest shard, templates dir): four CT cases of the 6 mm abdomen and a 144 mm long CT grid."""
    root = tmp_path_factory.mktemp("regqc")
    abdomen = _downsample(nib.load(str(example_dir / "ct" / "abdomen_pelvis_ct_3mm.nii.gz")))
    middle = _crop_z(abdomen, abdomen.shape[2] // 2 - 10, abdomen.shape[2] // 2 + 10)  # 120 mm
    images = {"fits": middle, "too_long": abdomen, "half_spacing": _respaced(middle, 0.5),
              "large_spacing": _respaced(middle, 1.35)}
    (root / "templates").mkdir()
    nib.save(reference_grid(abdomen, (SPACING,) * 3, (64, 56, 24)), str(root / "templates" / "CT.nii.gz"))
    rows = []
    for name, img in images.items():
        nib.save(img, str(root / f"{name}.nii.gz"))
        rows.append({"case_id": name, "patient_id": name, "dataset": "t", "modality": "CT", "split": "train",
                     "source": f"{name}.nii.gz", "path": str(root / f"{name}.nii.gz"), "label_path": ""})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "ingest").mkdir()
    pd.DataFrame(rows)[["case_id"]].assign(status="ok", reason="").to_csv(root / "ingest" / "cases.csv", index=False)
    return root


@pytest.mark.parametrize("backend", ["sitk", "ants"])
def test_registration_qc_quarantines_failed_registrations_and_keeps_the_rest(study, tmp_path, backend):
    cfg = {"registration": {"backend": backend, **FAST}, "min_coverage": 0.05}
    out = tmp_path / "registered"
    table = register_ingest_shard(str(study / "manifest.csv"), str(study / "ingest"), str(study / "templates"),
                                  str(out), cfg).set_index("case_id")
    print("\n" + table[[*QC_COLUMNS, "status", "reason"]].to_string())
    assert set(QC_COLUMNS) <= set(read_shard_table(out).columns)
    for case, pattern in EXPECTED.items():
        row = table.loc[case]
        if pattern is None:
            assert (row["status"], row["reason"]) == ("ok", ""), case
            assert row["body_fraction"] == 1.0 and 0.9 < row["affine_det"] < 1.1 and row["metric_value"] < -1.0
            assert (out / "CT" / "images" / f"{case}.nii.gz").exists()
            continue
        assert row["status"] == "quarantined", case
        match = re.fullmatch(pattern, row["reason"])
        assert match, (case, row["reason"])
        column, scale = QUOTED[case]  # the reason quotes the value the table holds
        assert float(match.group(1)) == pytest.approx(row[column] * scale, abs=0.06)
        assert not list(out.rglob(f"{case}.*")), "a quarantined case leaves no files"
    # the thresholds are config: relaxed, every case stays
    relaxed = {**cfg, "registration_qc": {"min_body_fraction": 0.0, "max_metric": {"mattes": None}, "det_range": [0.1, 10]}}
    kept = register_ingest_shard(str(study / "manifest.csv"), str(study / "ingest"), str(study / "templates"),
                                 str(tmp_path / "relaxed"), relaxed)
    assert set(kept["status"]) == {"ok"}


def test_check_registration_names_every_failed_measure_and_keeps_the_values():
    qc = RegistrationQC.from_config()  # the schema's defaults
    assert (qc.min_body_fraction, qc.max_metric["mattes"], qc.det_range) == (0.6, -0.12, (0.5, 2.0))
    row = {"coverage_fraction": 0.031, "metric_value": -0.05, "body_ml": 20000.0, "body_fraction": 0.18,
           "registered_body_ml": 3600.0, "affine_det": 1.0}
    with pytest.raises(CaseRejected) as err:
        check_registration(row, qc, "mattes", min_coverage=0.05)
    assert str(err.value) == (
        "registration QC: 3.1% of the study grid covered by the case (< preprocess.min_coverage 0.05); "
        "18.0% of the body inside the study grid (< preprocess.registration_qc.min_body_fraction 0.6); "
        "final mattes metric -0.050 (> preprocess.registration_qc.max_metric.mattes -0.12; lower is better)")
    assert err.value.details == row
    check_registration({**row, "coverage_fraction": 0.5, "body_fraction": 0.9, "metric_value": -0.3}, qc, "mattes", 0.05)
    check_registration({**row, "coverage_fraction": 0.5, "body_fraction": 0.9}, qc, "meansquares", 0.05)  # not checked
    with pytest.raises(WorkflowError, match="min_body_fractio"):  # the schema's validation
        RegistrationQC.from_config({"min_body_fractio": 0.5})


def test_body_mask_counts_the_lungs_and_finds_the_mr_body(example_dir):
    chest = _downsample(nib.load(str(example_dir / "ct" / "chest_cta_1p5mm.nii.gz")))
    hu = np.asarray(chest.dataobj)
    body = body_mask(hu, "CT", -500.0)
    lungs = body & (hu < -500)
    assert lungs.sum() * SPACING**3 / 1000 > 2000  # litres of aerated lung are body (axial holes filled)
    assert 0.2 < body.mean() < 0.8  # the air around the patient is not
    mr = canonical(nib.load(str(example_dir / "mr" / "abdomen_mr_3mm.nii.gz")))
    data = np.asarray(mr.dataobj)
    mr_body = body_mask(data, "MR", -500.0)
    inside = np.mean(data[mr_body]) > 5 * np.mean(data[~mr_body])
    assert 0.2 < mr_body.mean() < 0.8 and inside  # Otsu separates the body from the dark background
