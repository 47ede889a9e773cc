"""Tasks of rules/preprocess.smk: templates, register, training_sets, registration_figure."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from medsynth.cases import SHARD_TABLE, STATUS_COLUMNS, read_shard_table
from medsynth.figures import display, registration_overlay
from medsynth.fsutil import atomic_dir
from medsynth.preprocess.registration import RegistrationParams
from medsynth.preprocess.registration.qc import RegistrationQC
from medsynth.io.image2d import PICTURE
from medsynth.preprocess.stage import REGISTERED_ID_COLUMNS, keep_pictures, register_shard, study_template
from medsynth.preprocess.trainsets import SliceOptions, build_training_shard
from medsynth.settings import section
from medsynth.tasks import Job, task

log = logging.getLogger(__name__)

#: the registration shard's sub-folder of 2D pictures (kept on their own grids); a modality name holds volumes
PICTURES_FOLDER = "pictures"


def _read(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def registration_params(preprocess_cfg: dict, modality: str) -> RegistrationParams:
    """Registration settings for ``modality``: CT metric copies clipped to a HU window, MR unclipped."""
    cfg = dict(preprocess_cfg.get("registration") or {})
    if modality != "CT":
        cfg["intensity_range"] = None
    return RegistrationParams.from_config(cfg)


def make_templates(manifest_csv: str, out_dir: str, preprocess_cfg: dict) -> None:
    """One study-grid image per modality of the manifest (``<out_dir>/<modality>.nii.gz``)."""
    preprocess_cfg = section("preprocess", preprocess_cfg)
    manifest = _read(manifest_csv)
    manifest = manifest[~_pictures(manifest)]  # pictures are not registered
    files = preprocess_cfg["template"]["files"]
    with atomic_dir(out_dir) as tmp:
        for modality in sorted(set(manifest["modality"])):
            train = manifest[(manifest["modality"] == modality) & (manifest["split"] == "train")]
            images = [nib.load(p) for p in train["path"]]
            cfg = dict(preprocess_cfg, template=dict(preprocess_cfg["template"], file=files.get(modality)))
            log.info("template %s from %s", modality, files.get(modality) or f"{len(images)} training cases")
            grid = study_template(images, cfg, registration_params(preprocess_cfg, modality))
            nib.save(nib.Nifti1Image(np.asarray(grid.dataobj, np.float32), grid.affine), str(tmp / f"{modality}.nii.gz"))


def _pictures(cases: pd.DataFrame) -> pd.Series:
    """Which manifest rows are 2D pictures (a table without ``source_kind``: none)."""
    if "source_kind" not in cases:
        return pd.Series(False, index=cases.index)
    return cases["source_kind"] == PICTURE


def _moved(part: pd.DataFrame, tmp: Path, folder: str, out_dir: str) -> pd.DataFrame:
    """A sub-folder's shard table with its paths moved from the temporary folder to ``out_dir``."""
    for key in ("registered_path", "coverage_path", "transform_path", "registered_label_path"):
        if key in part:
            part[key] = [str(Path(out_dir) / Path(v).relative_to(tmp)) if v else "" for v in part[key].fillna("")]
    (tmp / folder / SHARD_TABLE).unlink()  # its paths name the temporary folder; the shard table is the record
    return part


def register_ingest_shard(manifest_csv: str, ingest_shard: str, templates_dir: str, out_dir: str,
                          preprocess_cfg: dict) -> pd.DataFrame:
    """Register the accepted cases of one ingest shard to their modality's study grid."""
    preprocess_cfg = section("preprocess", preprocess_cfg)
    manifest = _read(manifest_csv)
    ingested = set(read_shard_table(ingest_shard)["case_id"])
    cases = manifest[manifest["case_id"].isin(ingested)]
    is_picture = _pictures(cases)
    pictures, cases = cases[is_picture], cases[~is_picture]
    grids = {p.name.split(".")[0]: nib.load(p) for p in sorted(Path(templates_dir).glob("*.nii.gz"))}
    by_modality = {m: registration_params(preprocess_cfg, m) for m in grids}
    qc = RegistrationQC.from_config(preprocess_cfg["registration_qc"])
    tables = []
    # one params object per modality: register each modality's cases with its own settings
    with atomic_dir(out_dir) as tmp:
        for modality, params in by_modality.items():
            subset = cases[cases["modality"] == modality]
            if len(subset):
                part = register_shard(subset, grids, tmp / modality, params, float(preprocess_cfg["min_coverage"]), qc=qc)
                tables.append(_moved(part, tmp, modality, out_dir))
        if len(pictures):
            tables.append(_moved(keep_pictures(pictures, tmp / PICTURES_FOLDER), tmp, PICTURES_FOLDER, out_dir))
        missing = cases[~cases["modality"].isin(grids)]
        if len(missing):
            tables.append(missing[list(REGISTERED_ID_COLUMNS)].assign(
                status="quarantined", reason="registration failed: no template for this modality"))
        table = (pd.concat(tables, ignore_index=True) if tables
                 else pd.DataFrame(columns=[*REGISTERED_ID_COLUMNS, *STATUS_COLUMNS]))
        table.to_csv(tmp / SHARD_TABLE, index=False)
    return table


def training_sets_for_shard(manifest_csv: str, registered_dir: str, masks_dir: str, outputs, intensity_cfg: dict,
                            trainsets_cfg: dict) -> None:
    """2D and 3D training sets of one shard (outputs: slices, slices_index, volumes, volumes_index)."""
    names = json.loads((Path(masks_dir) / "conditions.json").read_text())
    trainsets_cfg = section("trainsets", trainsets_cfg)
    build_training_shard(
        read_shard_table(masks_dir), read_shard_table(registered_dir), _read(manifest_csv), names,
        section("intensity", intensity_cfg), SliceOptions.from_config(trainsets_cfg["slices"]),
        tuple(trainsets_cfg["volume_size"]),
        (Path(outputs.slices), Path(outputs.slices_index)), (Path(outputs.volumes), Path(outputs.volumes_index)),
    )


def registered_cases(registered_dirs: list[str]) -> pd.DataFrame:
    tables = [read_shard_table(d) for d in registered_dirs]
    table = pd.concat(tables, ignore_index=True)
    return table[table["status"] == "ok"].sort_values("case_id")


def draw_registration_figure(templates_dir: str, registered_dirs: list[str], out_png: str, figures_cfg: dict,
                        intensity_cfg: dict) -> None:
    """Registered cases over their templates (the first ``figures.cases`` cases)."""
    figures_cfg = section("figures", figures_cfg)
    window = tuple(intensity_cfg["windows"][figures_cfg["ct_window"]])
    rows = []
    cases = registered_cases(registered_dirs)
    cases = cases[[os.path.exists(os.path.join(templates_dir, f"{m}.nii.gz")) for m in cases["modality"]]]  # not pictures
    for case in cases.head(int(figures_cfg["cases"])).to_dict("records"):
        template = np.asarray(nib.load(os.path.join(templates_dir, f"{case['modality']}.nii.gz")).dataobj, np.float32)
        image = np.asarray(nib.load(case["registered_path"]).dataobj, np.float32)
        rows.append({"case_id": case["case_id"], "modality": case["modality"],
                     "template": display(template, case["modality"], window), "image": display(image, case["modality"], window)})
    registration_overlay(rows, out_png)


@task()
def templates(job: Job) -> None:
    """One study-grid image per modality of the manifest."""
    make_templates(job.input.manifest, job.output.templates, job.params.preprocess)


@task()
def register(job: Job) -> None:
    """Affine registration of one shard's cases to their modality's template."""
    register_ingest_shard(job.input.manifest, job.input.shard, job.input.templates, job.output.shard,
                          job.params.preprocess)


@task()
def training_sets(job: Job) -> None:
    """2D slices and 3D volumes of one shard, with condition masks and prompt fields."""
    training_sets_for_shard(job.input.manifest, job.input.registered, job.input.masks, job.output,
                            job.params.intensity, job.params.trainsets)


@task()
def registration_figure(job: Job) -> None:
    """Registered cases over their template, for the report."""
    draw_registration_figure(job.input.templates, job.input.registered, job.output.figure, job.params.figures,
                        job.params.intensity)
