"""The preprocessing stage: study template, affine registration of each shard onto the study grid.

Per modality, a template is either a configured file or built from the training split (iterative
affine mean). The study grid is that template resampled to the study spacing and centre
cropped/padded to the study size. Every case is registered affinely to it; the registered image
(HU for CT, original units for MR), its in-field coverage, its label map (nearest neighbour) and
the transform are written per case; cases whose registration fails or fails the registration QC
(``preprocess.registration.qc``: body kept in the grid, final metric, volume scale; grid coverage) are
quarantined with the measure, its value and the threshold's config key. 2D pictures (``source_kind``
``image2d``) have no template and are not registered: each keeps its own pixel grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medsynth.cases import CaseRejected, process_cases
from medsynth.io.volume import canonical, write_nifti
from medsynth.preprocess.registration import RegistrationParams, build_template, reference_grid, register_affine
from medsynth.preprocess.registration.qc import RegistrationQC, failures, measure

log = logging.getLogger(__name__)

#: the manifest columns copied into each row of a registration shard table
REGISTERED_ID_COLUMNS = ("case_id", "patient_id", "dataset", "modality", "split", "source")
#: value outside the field of view after resampling
FILL = {"CT": -1024.0}
#: the registration QC columns of a shard table row (kept in the row of a quarantined case too)
QC_COLUMNS = ("coverage_fraction", "metric_value", "body_ml", "body_fraction", "registered_body_ml", "affine_det")


def study_template(images: list[nib.Nifti1Image], cfg: dict, params: RegistrationParams) -> nib.Nifti1Image:
    """The study grid image of one modality: template (file or built) -> spacing -> centre crop/pad.

    ``cfg``: the ``preprocess`` section (complete), its ``template.file`` set for this modality or None."""
    grid, options = cfg["grid"], cfg["template"]
    if options.get("file"):  # not a schema key: the task sets it from template.files per modality
        template = canonical(nib.load(options["file"]))
    else:
        if not images:
            raise ValueError("no training cases of this modality to build a template from (splits, or preprocess.template.files)")
        template = build_template(images, params, iterations=int(options["iterations"]),
                                  spacing_mm=grid["spacing_mm"], start=options["start"], unbias=bool(options["unbias"]))
    return reference_grid(template, grid["spacing_mm"], grid["size"])


def register_case(image: nib.Nifti1Image, grid: nib.Nifti1Image, modality: str, params: RegistrationParams,
                  label: nib.Nifti1Image | None, out_dir: Path, case_id: str, ct_body_hu: float) -> dict:
    """Register one case to the study grid, write image, coverage, label map and transform; the row
    has their paths and the QC measures (``QC_COLUMNS``)."""
    transform = register_affine(image, grid, params)
    fill = FILL.get(modality, float(np.min(np.asarray(image.dataobj))))
    registered = transform.apply(image, grid, "linear", default_value=fill)
    ones = nib.Nifti1Image(np.ones(image.shape[:3], np.float32), image.affine)
    coverage = transform.apply(ones, grid, "linear", default_value=0.0)
    write_nifti(registered, out_dir / "images" / f"{case_id}.nii.gz", np.float32)
    write_nifti(coverage, out_dir / "coverage" / f"{case_id}.nii.gz", np.float32)
    transform.save(out_dir / "transforms" / f"{case_id}.json")
    row = {"registered_path": str(out_dir / "images" / f"{case_id}.nii.gz"),
           "coverage_path": str(out_dir / "coverage" / f"{case_id}.nii.gz"),
           "transform_path": str(out_dir / "transforms" / f"{case_id}.json"),
           "registered_label_path": "",
           "coverage_fraction": float(np.asarray(coverage.dataobj).mean()),
           **measure(image, modality, transform, grid, ct_body_hu)}
    if label is not None:
        moved = transform.apply(label, grid, "nearest", default_value=0)
        write_nifti(moved, out_dir / "labels" / f"{case_id}.nii.gz", np.int16)
        row["registered_label_path"] = str(out_dir / "labels" / f"{case_id}.nii.gz")
    return row


def keep_picture(image: nib.Nifti1Image, label: nib.Nifti1Image | None, out_dir: Path, case_id: str) -> dict:
    """A 2D picture is not registered: its image, a full coverage map, its label map and the identity
    transform are written as a registered case's are (no registration QC: it has no template to fit)."""
    from medsynth.preprocess.registration.transform import AffineTransform

    write_nifti(image, out_dir / "images" / f"{case_id}.nii.gz", np.float32)
    ones = nib.Nifti1Image(np.ones(image.shape[:3], np.float32), image.affine)
    write_nifti(ones, out_dir / "coverage" / f"{case_id}.nii.gz", np.float32)
    AffineTransform.identity().save(out_dir / "transforms" / f"{case_id}.json")
    row = {"registered_path": str(out_dir / "images" / f"{case_id}.nii.gz"),
           "coverage_path": str(out_dir / "coverage" / f"{case_id}.nii.gz"),
           "transform_path": str(out_dir / "transforms" / f"{case_id}.json"),
           "registered_label_path": "", "coverage_fraction": 1.0}
    if label is not None:
        write_nifti(label, out_dir / "labels" / f"{case_id}.nii.gz", np.int16)
        row["registered_label_path"] = str(out_dir / "labels" / f"{case_id}.nii.gz")
    return row


def keep_pictures(cases: pd.DataFrame, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """The registration stage's shard table for 2D pictures (manifest rows): each kept on its own grid."""

    def keep(case: dict, tmp: Path) -> dict:
        label = nib.load(case["label_path"]) if case.get("label_path") else None
        return keep_picture(nib.load(case["path"]), label, tmp, case["case_id"])

    return process_cases(
        cases.to_dict("records"), out_dir, keep, columns=REGISTERED_ID_COLUMNS,
        error_reason=lambda err: f"picture not kept: {err}",
        path_keys=("registered_path", "coverage_path", "transform_path", "registered_label_path"),
        stage="register", progress=progress)


def check_registration(row: dict, qc: RegistrationQC, metric: str, min_coverage: float) -> None:
    """Quarantine (``CaseRejected``) a registered case that fails a QC threshold; the reason names each
    failed measure, its value, the threshold and its config key."""
    found = []
    if row["coverage_fraction"] < min_coverage:
        found.append(f"{row['coverage_fraction']:.1%} of the study grid covered by the case"
                     f" (< preprocess.min_coverage {min_coverage:g})")
    found += failures(row, qc, metric)
    if found:
        raise CaseRejected("registration QC: " + "; ".join(found), {key: row[key] for key in QC_COLUMNS})


def register_shard(cases: pd.DataFrame, grids: dict[str, nib.Nifti1Image], out_dir: str | Path,
                   params: RegistrationParams, min_coverage: float = 0.05, progress: bool = True,
                   qc: RegistrationQC | None = None) -> pd.DataFrame:
    """Register every case of a shard (manifest rows) into the folder ``out_dir`` (atomically).

    ``qc``: the registration QC thresholds (default: the schema's ``preprocess.registration_qc``).
    """
    qc = qc or RegistrationQC.from_config()

    def register(case: dict, tmp: Path) -> dict:
        if case["modality"] not in grids:
            raise ValueError(f"no study grid for modality {case['modality']}")
        image = nib.load(case["path"])
        label = nib.load(case["label_path"]) if case.get("label_path") else None
        produced = register_case(image, grids[case["modality"]], case["modality"], params, label, tmp,
                                 case["case_id"], qc.ct_body_hu)
        check_registration(produced, qc, params.metric, min_coverage)
        return produced

    return process_cases(
        cases.to_dict("records"), out_dir, register,
        columns=REGISTERED_ID_COLUMNS,
        error_reason=lambda err: f"registration failed: {err}",
        path_keys=("registered_path", "coverage_path", "transform_path", "registered_label_path"),
        stage="register", progress=progress)
