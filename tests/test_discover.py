"""Case discovery from registry layouts (the local kind and the papers' dataset layouts)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_writer import write_series

from medsynth.data.discover import discover_cases
from medsynth.data.registry import RegistryError, load_registry, resolve_datasets
from medsynth.io.volume import nifti_to_sitk


@pytest.fixture()
def local_folder(tmp_path, example_dir, ct_small):
    root = tmp_path / "my_scans"
    (root / "labels").mkdir(parents=True)
    shutil.copy(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", root / "pat1_ct.nii.gz")
    shutil.copy(example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz", root / "labels" / "pat1_ct.nii.gz")
    sitk.WriteImage(nifti_to_sitk(ct_small), str(root / "pat2_ct.nrrd"))
    write_series(ct_small, root / "dicom" / "series_a", patient_id="PAT3", series_number=4, compress="jpeg2000")
    (root / "prompts.csv").write_text("case_id,grade,split\npat1_ct.nii.gz,mild,test\npat2_ct,severe,\n")
    return root


def test_local_folder_finds_volumes_labels_dicom_and_prompts(local_folder):
    entry = {"name": "mine", "kind": "local", "root": str(local_folder),
             "layout": {"labels": "labels/{stem}.nii.gz", "exclude": ["labels/*"], "prompts_csv": "prompts.csv",
                        "patient_id_regex": r"^(pat\d+)"}}
    table = discover_cases(entry, local_folder).set_index("case_id")
    assert sorted(table.index) == ["mine_PAT3_4", "mine_pat1_ct", "mine_pat2_ct"]
    assert table.loc["mine_pat1_ct", "label"].endswith("labels/pat1_ct.nii.gz")
    assert table.loc["mine_pat1_ct", "patient_id"] == "pat1"
    assert table.loc["mine_pat1_ct", "prompt_grade"] == "mild" and table.loc["mine_pat1_ct", "split"] == "test"
    assert table.loc["mine_pat2_ct", "source_kind"] == "itk" and table.loc["mine_pat2_ct", "prompt_grade"] == "severe"
    dicom = table.loc["mine_PAT3_4"]
    assert dicom["source_kind"] == "dicom" and dicom["patient_id"] == "PAT3" and dicom["modality"] == "CT"


def test_amos_like_layout_maps_labels_modality_and_split(tmp_path):
    root = tmp_path / "amos22"
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for sub, name in [("imagesTr", "amos_0001"), ("imagesTr", "amos_0507"), ("imagesVa", "amos_0010")]:
        for kind in ("images", "labels"):
            folder = root / "amos22" / sub.replace("images", kind)
            folder.mkdir(parents=True, exist_ok=True)
            nib.save(img, str(folder / f"{name}.nii.gz"))
    registry = load_registry("config/datasets.yaml")
    (entry,) = resolve_datasets(["amos22"], registry).values()
    table = discover_cases(entry, root).set_index("case_id")
    assert sorted(table.index) == ["amos22_amos_0001", "amos22_amos_0010", "amos22_amos_0507"]
    assert table.loc["amos22_amos_0507", "modality"] == "MR" and table.loc["amos22_amos_0001", "modality"] == "CT"
    assert table.loc["amos22_amos_0010", "split"] == "val" and table.loc["amos22_amos_0001", "split"] == "train"
    assert table.loc["amos22_amos_0010", "label"].endswith("labelsVa/amos_0010.nii.gz")


def test_case_id_from_parent_folder(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for case in ("BDMAP_00000001", "BDMAP_00000002"):
        (tmp_path / case).mkdir()
        nib.save(img, str(tmp_path / case / "ct.nii.gz"))
        nib.save(img, str(tmp_path / case / "combined_labels.nii.gz"))
    (entry,) = resolve_datasets(["abdomenatlas_1_1_mini"], load_registry("config/datasets.yaml")).values()
    table = discover_cases(entry, tmp_path)
    assert table["case_id"].tolist() == ["abdomenatlas_1_1_mini_BDMAP_00000001", "abdomenatlas_1_1_mini_BDMAP_00000002"]
    assert all(label.endswith("combined_labels.nii.gz") for label in table["label"])


def test_registry_lists_the_papers_datasets_with_source_licence_and_access():
    registry = load_registry("config/datasets.yaml")
    for name in ["example", "ct_rate", "abdomenatlas_1_0_mini", "abdomenatlas_1_1_mini", "amos22", "btcv",
                 "cirrmri600plus", "autopet_fdg", "local"]:
        assert name in registry
        assert {"kind", "title", "licence", "access"} <= set(registry[name]), name
    assert registry["amos22"]["record"] == "7155725"
    assert registry["btcv"]["kind"] == "manual" and "syn3193805" in registry["btcv"]["url"]
    assert registry["cirrmri600plus"]["node"] == "cuk24"
    assert registry["ct_rate"]["auth"]["env"] == "HF_TOKEN"


def test_unknown_dataset_and_bad_kind_are_clear_errors():
    with pytest.raises(RegistryError, match="not in the registry"):
        resolve_datasets(["nope"], {})
    with pytest.raises(RegistryError, match="kind 'ftp'"):
        resolve_datasets([{"name": "x", "kind": "ftp"}], {})
    with pytest.raises(RegistryError, match="needs 'root'"):
        resolve_datasets([{"name": "x", "kind": "local"}], {})


def test_cli_lists_registry(capsys):
    from medsynth.cli import main

    assert main(["datasets", "-v"]) == 0
    out = capsys.readouterr().out
    assert "amos22" in out and "zenodo" in out and "licence: CC BY 4.0" in out


def _dicom_entry(root) -> dict:
    return {"name": "anon", "kind": "local", "root": str(root), "layout": {}}


def test_anonymised_series_get_distinct_patients_never_none(tmp_path, ct_small):
    root = tmp_path / "anonymised"
    study = "1.2.826.0.1.3680043.8.498.1"
    for folder, study_uid in [("s1_a", study), ("s1_b", study), ("s2", None), ("no_study", "")]:
        write_series(ct_small, root / folder, patient_id="", series_number=None, study_uid=study_uid)
    write_series(ct_small, root / "named", patient_id="PAT9", series_number=5)
    table = discover_cases(_dicom_entry(root), root)
    table["folder"] = [p.split("/")[-1] for p in table["source"]]
    by_folder = table.set_index("folder")
    anonymous = by_folder.drop(index="named")
    assert not any("None" in text for text in [*anonymous["case_id"], *anonymous["patient_id"]])
    assert all(case.startswith("anon_anon_") for case in anonymous["case_id"]) and anonymous["case_id"].is_unique
    assert by_folder.loc["s1_a", "patient_id"] == by_folder.loc["s1_b", "patient_id"] == study  # one study, one patient
    assert anonymous["patient_id"].nunique() == 3  # the two series of one study share a patient, no one else does
    assert by_folder.loc["named", ["case_id", "patient_id", "patient_id_source"]].tolist() == [
        "anon_PAT9_5", "PAT9", "PatientID"]  # ids of series with PatientID / SeriesNumber are as before
    assert by_folder.loc["s2", "patient_id_source"] == "StudyInstanceUID" and by_folder.loc["s2", "patient_id"] != study
    assert by_folder.loc["no_study", ["patient_id", "patient_id_source"]].tolist() == [
        by_folder.loc["no_study", "series_uid"], "SeriesInstanceUID"]


def test_series_copied_into_two_folders_is_one_case_found_under_both(tmp_path, ct_small):
    root = tmp_path / "scans"
    write_series(ct_small, root / "site" / "disk1" / "copy_a", patient_id="P1", series_number=2)
    shutil.copytree(root / "site" / "disk1" / "copy_a", root / "site" / "disk2" / "copy_b")
    (row,) = discover_cases(_dicom_entry(root), root).to_dict("records")
    assert row["case_id"] == "anon_P1_2" and row["source"] == str(root / "site")  # the folder above both copies
