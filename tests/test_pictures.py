"""2D pictures (PNG / JPEG with mask pictures) as one-slice cases: reading, discovery, normalisation, and a
folder of them through the workflow to the training slices, a broken picture quarantined."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import load_file
from workflow import embedded_config, run_snakemake

from medsynth.data.discover import discover_cases
from medsynth.figures import radiological
from medsynth.io.image2d import PICTURE, read_image2d, read_mask2d
from medsynth.io.volume import canonical
from medsynth.preprocess.intensity import denormalise, hu_window, normalise

LIVER = 5  # TotalSegmentator's id of the liver in the shipped label map


@pytest.fixture(scope="module")
def ct_pictures(example_dir) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three axial slices of the shipped upper-abdomen CT as 8-bit soft-tissue pictures (rows, columns) with
    their liver masks (0 / 255): real anatomy, as a 2D benchmark stores it."""
    image = canonical(nib.load(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz"))
    label = canonical(nib.load(example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz"))
    hu = np.asarray(image.dataobj, np.float32)
    liver = np.asarray(label.dataobj) == LIVER
    zs = np.argsort(liver.sum(axis=(0, 1)))[::-1][:3]
    return [((hu_window(radiological(hu[:, :, z]), 50, 350) * 255).round().astype(np.uint8),
             radiological(liver[:, :, z]).astype(np.uint8) * 255) for z in sorted(zs)]


def test_a_picture_reads_as_one_slice_shown_as_stored(tmp_path, ct_pictures):
    pixels, _ = ct_pictures[0]
    Image.fromarray(pixels).save(tmp_path / "a.png")
    volume = read_image2d(tmp_path / "a.png", spacing_mm=0.5)
    assert volume.shape == (pixels.shape[1], pixels.shape[0], 1)
    assert np.array_equal(radiological(np.asarray(volume.dataobj)[:, :, 0]), pixels)
    assert np.allclose(np.diag(volume.affine), [0.5, 0.5, 1.0, 1.0])
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")


def test_colour_becomes_luma_and_16_bit_values_are_kept(tmp_path, ct_pictures):
    pixels, _ = ct_pictures[0]
    rgb = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(radiological(np.asarray(read_image2d(tmp_path / "rgb.png").dataobj)[:, :, 0]), luma)
    wide = pixels.astype(np.uint16) * 200  # up to 51,000: a 16-bit picture
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert np.array_equal(radiological(np.asarray(read_image2d(tmp_path / "wide.png").dataobj)[:, :, 0]), wide)


def test_a_mask_picture_is_binary_at_the_threshold_jpeg_noise_included(tmp_path):
    mask = np.array([[0, 3, 126], [127, 128, 250]], np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    labels = radiological(np.asarray(read_mask2d(tmp_path / "m.png", threshold=127).dataobj)[:, :, 0])
    assert labels.dtype == np.int16
    assert labels.tolist() == [[0, 0, 0], [0, 1, 1]]


def test_palette_and_one_bit_masks_keep_their_ids_not_their_colours(tmp_path):
    ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette([0, 0, 0, 255, 255, 255, 40, 40, 40] + [0] * 759)  # class 2 is drawn darker than class 1
    palette.save(tmp_path / "p.png")
    read = lambda name, threshold: radiological(  # noqa: E731
        np.asarray(read_mask2d(tmp_path / name, threshold=threshold).dataobj)[:, :, 0])
    assert read("p.png", None).tolist() == ids.tolist()
    assert read("p.png", 127).tolist() == (ids > 0).astype(int).tolist()
    Image.fromarray(ids > 0).save(tmp_path / "b.png")  # mode "1"
    assert Image.open(tmp_path / "b.png").mode == "1"
    assert read("b.png", 127).tolist() == (ids > 0).astype(int).tolist()


def test_pictures_are_cases_where_the_layout_names_them(tmp_path, ct_pictures):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, (pixels, mask) in zip(("a", "b"), ct_pictures):
        Image.fromarray(pixels).save(tmp_path / "images" / f"{name}.jpg")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    layout = {"images": ["images/*"], "labels": {"from": r"^images/(\w+)\.jpg$", "to": r"masks/\1.png"},
              "modality": "ct_8bit", "dicom": False}
    table = discover_cases({"name": "pics", "kind": "local", "layout": layout}, tmp_path)
    assert table["case_id"].tolist() == ["pics_a", "pics_b"]
    assert set(table["source_kind"]) == {PICTURE} and set(table["modality"]) == {"ct_8bit"}
    assert [p.split("/")[-2:] for p in table["label"]] == [["masks", "a.png"], ["masks", "b.png"]]
    # the default globs find volumes only: a folder of pictures without layout.images has no case
    assert discover_cases({"name": "pics", "kind": "local", "layout": {"dicom": False}}, tmp_path).empty


def test_a_picture_modality_takes_the_fixed_range_and_inverts():
    pixels = np.array([[0.0, 51.0], [204.0, 255.0]], np.float32)
    unit, params = normalise(pixels, "ultrasound", {"picture_range": [0, 255]})
    assert params == {"kind": "picture", "range": [0, 255]}
    assert np.allclose(unit, [[-1.0, -0.6], [0.6, 1.0]])
    assert np.allclose(denormalise(unit, params), pixels, atol=1e-4)


# ----------------------------------------------------------------------------- through the workflow

@pytest.fixture(scope="module")
def picture_study(tmp_path_factory, ct_pictures):
    """A local folder of three CT pictures (grey PNG, colour JPEG, grey PNG) with liver masks, a truncated
    picture and a picture whose mask has another size; run to the QC table, the training slices and the
    registration figure. Returns the study's results folder."""
    work = tmp_path_factory.mktemp("picture_study")
    root = work / "pictures"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (a, ma), (b, mb), (c, mc) = ct_pictures
    Image.fromarray(a).save(root / "images" / "a.png")
    Image.fromarray(np.stack([b, b, b], axis=-1)).save(root / "images" / "b.jpg", quality=95)
    Image.fromarray(c).save(root / "images" / "c.png")
    for name, mask in (("a", ma), ("b", mb), ("c", mc)):
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "images" / "z_truncated.png").write_bytes((root / "images" / "a.png").read_bytes()[:200])
    Image.fromarray(ma).save(root / "masks" / "z_truncated.png")
    Image.fromarray(a).save(root / "images" / "z_other_size.png")
    Image.fromarray(ma[:-8]).save(root / "masks" / "z_other_size.png")
    layout = {"images": ["images/*"], "labels": {"from": r"^images/(\w+)\.\w+$", "to": r"masks/\1.png"},
              "modality": "ct_8bit", "dicom": False}
    config = embedded_config(
        study="pics", datasets=[{"name": "pics", "kind": "local", "root": str(root), "layout": layout}],
        splits={"fractions": {"train": 1.0}},
        masks={"segmenters": {"liver_masks": {"backend": "dataset", "class_map": {1: "liver"}}},
               "by_modality": {"ct_8bit": "liver_masks"}, "conditions": [{"name": "liver", "structures": ["liver"]}]})
    config["volumes"] = {**config["volumes"], "enabled": False}
    run_snakemake(work, config, "results/pics/qc/quarantine.csv", "results/pics/trainsets/slices/shard-000.csv",
                  "results/pics/figures/registration_overlay.png")
    return work / "results" / "pics"


def test_a_folder_of_pictures_gives_one_training_slice_each(picture_study):
    results = picture_study
    index = pd.read_csv(results / "trainsets" / "slices" / "shard-000.csv")
    assert index["case_id"].tolist() == ["pics_a", "pics_b", "pics_c"]
    assert set(index["slice"]) == {0} and set(index["modality"]) == {"ct_8bit"}
    assert {json.loads(s)["kind"] for s in index["normalisation"]} == {"picture"}
    rows = load_file(results / "trainsets" / "slices" / "shard-000.safetensors")
    size = 64  # the embedded study's trainsets.slices.size: each picture resized to it
    assert tuple(rows["image"].shape) == (3, 1, size, size) and tuple(rows["masks"].shape) == (3, 1, size, size)
    folder = results.parents[1] / "pictures"
    for name, image, masks in zip("abc", rows["image"], rows["masks"]):
        # the stored slice is the picture as decoded (case b: a JPEG), scaled to [-1, 1] and area-resized
        stored = next((folder / "images").glob(f"{name}.*"))
        pixels = np.asarray(Image.open(stored).convert("L"), np.float32) / 127.5 - 1.0
        mask = np.asarray(Image.open(folder / "masks" / f"{name}.png"), np.float32) > 127
        assert np.abs(radiological(image[0].astype(np.float32)) - _area(pixels, size)).max() < 2e-3  # float16
        assert np.array_equal(radiological(masks[0]), (_area(mask.astype(np.float32), size) >= 0.5).astype(np.uint8))


def _area(array: np.ndarray, size: int) -> np.ndarray:
    return F.interpolate(torch.from_numpy(array)[None, None], size=(size, size), mode="area")[0, 0].numpy()


def test_a_broken_picture_is_quarantined_with_its_reason_and_the_rest_go_on(picture_study):
    results = picture_study
    quarantine = pd.read_csv(results / "qc" / "quarantine.csv", dtype=str, keep_default_na=False).set_index("case_id")
    assert sorted(quarantine.index) == ["pics_z_other_size", "pics_z_truncated"]
    assert quarantine.loc["pics_z_truncated", "reason"].startswith("unreadable z_truncated.png")
    assert "label map geometry" in quarantine.loc["pics_z_other_size", "reason"]
    assert set(quarantine["stage"]) == {"ingest"}
    assert (results / "figures" / "registration_overlay.png").stat().st_size > 0
    assert not (results / "templates").exists() or not list((results / "templates").glob("*.nii.gz"))


def test_the_shipped_example_pictures_are_the_shipped_ct_as_tests_example_pictures_makes_them(example_dir):
    """resources/example_pictures (the MedDiff-FT smoke study's data) is the shipped CT, slice by slice."""
    from example_pictures import example_pictures

    made = example_pictures(example_dir)
    folder = example_dir.parent / "example_pictures"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png")) == sorted(
        f"{key.split('/')[0]}/{kind}/{key.split('/')[1]}.png" for key in made for kind in ("images", "masks"))
    for key, (picture, mask) in made.items():
        split, name = key.split("/")
        assert np.array_equal(np.asarray(Image.open(folder / split / "images" / f"{name}.png")), picture), key
        assert np.array_equal(np.asarray(Image.open(folder / split / "masks" / f"{name}.png")), mask), key
    cases = discover_cases({"kind": "local", "root": str(folder), "name": "example_pictures",
                            **_registry_entry("example_pictures")}, folder)
    assert len(cases) == 30 and (cases["split"] == "test").sum() == 6 and cases["label"].str.len().gt(0).all()


def _registry_entry(name: str) -> dict:
    import yaml

    from example_pictures import REPO

    return {k: v for k, v in yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())[name].items()
            if k == "layout"}
