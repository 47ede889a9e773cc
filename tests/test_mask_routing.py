"""Masks routed by dataset (masks.by_dataset), a dataset's labels painted over another segmenter's
(masks.segmenters.<name>.base), and the MSD tumour datasets of the registry (MAISI-v2's downstream study)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medsynth.masks.conditions import ConditionSpec
from medsynth.masks.overlay import DATASET_LABEL_OFFSET, overlay_labels
from medsynth.masks.stage import check_routing, masks_shard, route

REPO = Path(__file__).resolve().parents[1]
CT = REPO / "resources" / "example_data" / "ct" / "upper_abdomen_ct_3mm.nii.gz"
MSD = {"msd_liver": ("Task03_Liver", "liver_0", 131), "msd_lung": ("Task06_Lung", "lung_001", 63),
       "msd_pancreas": ("Task07_Pancreas", "pancreas_001", 281), "msd_colon": ("Task10_Colon", "colon_001", 126)}
#: the study wiring under test: CT goes to the classical segmenter, dataset `msd_t` to its labels over it
SEGMENTERS = {"classical": {"backend": "classical"},
              "msd_labels": {"backend": "dataset", "class_map": {1: "liver", 2: "liver_tumor"}, "base": "classical"},
              "msd_alone": {"backend": "dataset", "class_map": {1: "liver", 2: "liver_tumor"}}}
SPECS = [ConditionSpec.from_config({"name": "liver_tumor", "structures": ["liver_tumor"]}),
         ConditionSpec.from_config({"name": "body", "structures": ["body"]})]


def _tumour_labels(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A label map on the example CT's grid: a block of liver (1) holding a smaller block of tumour (2)."""
    image = nib.load(str(CT))
    data = np.zeros(image.shape, np.uint8)
    data[30:60, 30:60, 10:20] = 1
    data[40:50, 40:50, 12:18] = 2
    path = tmp_path / "liver_0_labels.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine), str(path))
    return path, data


def _case(case_id: str, dataset: str, label: Path | str = "") -> dict:
    return {"case_id": case_id, "patient_id": case_id, "dataset": dataset, "modality": "CT", "split": "train",
            "status": "ok", "registered_path": str(CT), "registered_label_path": str(label)}


def test_by_dataset_takes_precedence_over_by_modality():
    by_modality, by_dataset = {"CT": "classical"}, {"msd_t": "msd_labels"}
    assert route({"dataset": "msd_t", "modality": "CT"}, by_modality, by_dataset) == "msd_labels"
    assert route({"dataset": "autopet_fdg", "modality": "CT"}, by_modality, by_dataset) == "classical"
    with pytest.raises(ValueError, match="masks.by_dataset.*masks.by_modality"):
        route({"dataset": "other", "modality": "MR"}, by_modality, by_dataset)


def test_routing_config_errors_are_refused_up_front():
    check_routing(SEGMENTERS, {"msd_t": "msd_labels"})
    with pytest.raises(ValueError, match="masks.by_dataset.msd_t: no segmenter 'typo'"):
        check_routing(SEGMENTERS, {"msd_t": "typo"})
    with pytest.raises(ValueError, match="cycle"):  # any backend may have a base (tests/test_mask_chain.py), not itself
        check_routing({"c": {"backend": "classical", "base": "c"}}, {})
    with pytest.raises(ValueError, match="no segmenter 'nothing'"):
        check_routing({"d": {"backend": "dataset", "class_map": "total", "base": "nothing"}}, {})
    with pytest.raises(ValueError, match="reads the dataset's label maps too"):
        check_routing({**SEGMENTERS, "d": {"backend": "dataset", "class_map": "total", "base": "msd_alone"}}, {})


def test_overlay_labels_paints_shifted_dataset_ids_over_the_base():
    base = np.array([[0, 5], [5, 7]], np.uint8)
    own = np.array([[2, 1], [0, 0]], np.uint8)
    labels, names = overlay_labels(base, {5: "liver", 7: "spleen"}, own, {1: "liver", 2: "liver_tumor"})
    off = DATASET_LABEL_OFFSET
    assert labels.dtype == np.int16 and labels.tolist() == [[off + 2, off + 1], [5, 7]]
    assert names == {5: "liver", 7: "spleen", off + 1: "liver", off + 2: "liver_tumor"}
    with pytest.raises(ValueError, match="collides"):
        overlay_labels(base, {off: "odd"}, own, {1: "x"})
    with pytest.raises(ValueError, match="shape"):
        overlay_labels(base, {}, own[:1], {1: "x"})


def test_masks_shard_routes_by_dataset_and_overlays_the_case_labels(tmp_path):
    label_path, own = _tumour_labels(tmp_path)
    registered = pd.DataFrame([_case("msd_a", "msd_t", label_path), _case("plain", "autopet_fdg"),
                               _case("msd_nolabel", "msd_t")])
    table = masks_shard(registered, tmp_path / "masks", SEGMENTERS, {"CT": "classical"}, SPECS, progress=False,
                        by_dataset={"msd_t": "msd_labels"}).set_index("case_id")

    assert table.loc["msd_a", "segmenter"] == "msd_labels" and table.loc["plain", "segmenter"] == "classical"
    assert table.loc["msd_a", "status"] == "ok" and table.loc["plain", "status"] == "ok"
    structures = json.loads(table.loc["msd_a", "structures"])
    assert {"body", "liver", "liver_tumor"} <= set(structures)  # the base's names and the dataset's
    assert "liver_tumor" not in json.loads(table.loc["plain", "structures"])

    labels = np.asarray(nib.load(table.loc["msd_a", "labels_path"]).dataobj)
    base = np.asarray(nib.load(table.loc["plain", "labels_path"]).dataobj)  # same image, classical alone
    painted = own != 0
    assert (labels[painted] == own[painted].astype(np.int16) + DATASET_LABEL_OFFSET).all()
    assert (labels[~painted] == base[~painted]).all() and (base[~painted] != 0).any()
    conditions = np.asarray(nib.load(table.loc["msd_a", "conditions_path"]).dataobj)
    assert (conditions[..., 0].astype(bool) == (own == 2)).all()     # liver_tumor: the dataset's class 2
    assert conditions[..., 1].any()                                   # body: the base segmenter's
    assert float(table.loc["msd_a", "ml_liver_tumor"]) > 0 and float(table.loc["plain", "ml_liver_tumor"]) == 0

    # a case of a dataset-label segmenter without a label file: quarantined, saying why
    assert table.loc["msd_nolabel", "status"] == "quarantined"
    assert table.loc["msd_nolabel", "reason"] == ("segmentation failed: segmenter 'msd_labels' uses the dataset's "
                                                  "label maps, but this case has none")
    assert not (tmp_path / "masks" / "labels" / "msd_nolabel.nii.gz").exists()


def test_masks_for_shard_passes_by_dataset_with_schema_defaults(monkeypatch):
    import medsynth.tasks.masks as tasks

    seen: dict = {}
    monkeypatch.setattr(tasks, "read_shard_table", lambda folder: pd.DataFrame())
    monkeypatch.setattr(tasks, "masks_shard", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs))
    tasks.masks_for_shard("in", "out", {"segmenters": SEGMENTERS, "by_dataset": {"msd_t": "msd_labels"}})
    assert seen["kwargs"]["by_dataset"] == {"msd_t": "msd_labels"}
    assert seen["args"][2]["msd_labels"]["base"] == "classical" and seen["args"][2]["classical"]["base"] is None
    tasks.masks_for_shard("in", "out", {})
    assert seen["kwargs"]["by_dataset"] == {}  # the schema's default


# -- the registry's MSD entries --------------------------------------------------------------------------


def _registry_entries() -> dict[str, dict]:
    from medsynth.data.registry import load_registry, resolve_datasets

    return resolve_datasets(list(MSD), load_registry(REPO / "config" / "datasets.yaml"))


def test_msd_registry_entries_resolve_with_md5_checksums():
    from medsynth.data.download import parse_checksum

    entries = _registry_entries()
    for name, (task, _, cases) in MSD.items():
        entry = entries[name]
        assert entry["kind"] == "http" and entry["published_cases"] == cases
        assert {"title", "licence", "access", "citation", "url"} <= set(entry) and "CC BY-SA 4.0" in entry["licence"]
        (item,) = entry["files"]
        assert item["url"] == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{task}.tar"
        algorithm, digest = parse_checksum(item["checksum"])
        assert algorithm == "md5" and len(digest) == 32 and int(digest, 16) >= 0
        assert hashlib.new(algorithm)  # an algorithm the download layer's hashing knows


def _nifti(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 4, 2), value, np.int16), np.eye(4)), str(path))


def _msd_tar(tmp_path: Path, task: str, stem: str) -> Path:
    """A miniature of an MSD archive: one labelled case, its AppleDouble twins and an unlabelled test image."""
    tree = tmp_path / "tree"
    _nifti(tree / task / "imagesTr" / f"{stem}.nii.gz")
    _nifti(tree / task / "labelsTr" / f"{stem}.nii.gz", 1)
    _nifti(tree / task / "imagesTs" / f"{stem}_test.nii.gz")
    for folder in ("imagesTr", "labelsTr"):
        (tree / task / folder / f"._{stem}.nii.gz").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    archive = tmp_path / f"{task}.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tree / task, arcname=task)
    shutil.rmtree(tree)
    return archive


@pytest.mark.parametrize("name", list(MSD))
def test_msd_archive_is_checked_extracted_and_its_training_cases_found(tmp_path, monkeypatch, name):
    import medsynth.data.fetch as fetch
    from medsynth.data.discover import discover_cases
    from medsynth.data.download import DownloadPolicy, verify_checksum

    task, stem, _ = MSD[name]
    archive = _msd_tar(tmp_path, task, stem)
    entry = _registry_entries()[name]
    entry["files"][0]["checksum"] = f"md5:{hashlib.md5(archive.read_bytes()).hexdigest()}"

    def fake_download(url, dest, *, checksum=None, **kwargs):  # the network stand-in; the checksum check is real
        assert url.endswith(f"/{task}.tar") and verify_checksum(archive, checksum) is None
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(archive, dest))

    monkeypatch.setattr(fetch, "download_file", fake_download)
    policy = DownloadPolicy(retries=0, backoff_s=0, backoff_max_s=0, timeout_s=1, progress=False)
    root = fetch.fetch_dataset(entry, tmp_path / "raw", policy, base_dir=tmp_path)
    cases = discover_cases(entry, root)
    assert cases["case_id"].tolist() == [f"{name}_{stem}"]  # no ._ twin, no unlabelled imagesTs case
    assert cases.loc[0, "label"].endswith(f"{task}/labelsTr/{stem}.nii.gz") and cases.loc[0, "modality"] == "CT"
    assert verify_checksum(archive, "md5:" + "0" * 32) is not None  # a wrong md5 is noticed
