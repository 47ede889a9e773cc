"""The registry's 2D-picture datasets (MedDiff-FT's five benchmarks, MedSyn2's SemiSeg): each layout finds its
images, pairs each with its mask(s) and split on a stand-in tree with the real file names, at the depth the
download leaves them (an archive unpacks into a folder named after it), and the cases ingest."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsynth.data.discover import LABEL_SEPARATOR, discover_cases
from medsynth.data.ingest import IngestOptions, ingest_case
from medsynth.data.registry import load_registry, resolve_datasets
from medsynth.figures import radiological
from medsynth.io.image2d import PICTURE

REPO = Path(__file__).resolve().parents[1]

#: per dataset: (image path, its mask paths, split) as the download leaves them under the files folder
TREES = {
    "isic2017": [
        ("ISIC-2017_Training_Data/ISIC-2017_Training_Data/ISIC_0000000.jpg",
         ["ISIC-2017_Training_Part1_GroundTruth/ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png"], "train"),
        ("ISIC-2017_Validation_Data/ISIC-2017_Validation_Data/ISIC_0001769.jpg",
         ["ISIC-2017_Validation_Part1_GroundTruth/ISIC-2017_Validation_Part1_GroundTruth/ISIC_0001769_segmentation.png"], "val"),
        ("ISIC-2017_Test_v2_Data/ISIC-2017_Test_v2_Data/ISIC_0012086.jpg",
         ["ISIC-2017_Test_v2_Part1_GroundTruth/ISIC-2017_Test_v2_Part1_GroundTruth/ISIC_0012086_segmentation.png"], "test"),
    ],
    "isic2018": [
        ("ISIC2018_Task1-2_Training_Input/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg",
         ["ISIC2018_Task1_Training_GroundTruth/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png"], "train"),
        ("ISIC2018_Task1-2_Validation_Input/ISIC2018_Task1-2_Validation_Input/ISIC_0012255.jpg",
         ["ISIC2018_Task1_Validation_GroundTruth/ISIC2018_Task1_Validation_GroundTruth/ISIC_0012255_segmentation.png"], "val"),
        ("ISIC2018_Task1-2_Test_Input/ISIC2018_Task1-2_Test_Input/ISIC_0012236.jpg",
         ["ISIC2018_Task1_Test_GroundTruth/ISIC2018_Task1_Test_GroundTruth/ISIC_0012236_segmentation.png"], "test"),
    ],
    "busi": [
        ("Dataset_BUSI/Dataset_BUSI_with_GT/benign/benign (1).png",
         ["Dataset_BUSI/Dataset_BUSI_with_GT/benign/benign (1)_mask.png"], ""),
        ("Dataset_BUSI/Dataset_BUSI_with_GT/malignant/malignant (12).png",
         ["Dataset_BUSI/Dataset_BUSI_with_GT/malignant/malignant (12)_mask.png"], ""),
        ("Dataset_BUSI/Dataset_BUSI_with_GT/benign/benign (4).png",  # multifocal: three mask files
         ["Dataset_BUSI/Dataset_BUSI_with_GT/benign/benign (4)_mask.png",
          "Dataset_BUSI/Dataset_BUSI_with_GT/benign/benign (4)_mask_1.png",
          "Dataset_BUSI/Dataset_BUSI_with_GT/benign/benign (4)_mask_2.png"], ""),
    ],
    "ph2": [
        ("PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp",
         ["PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp"], ""),
        ("PH2Dataset/PH2 Dataset images/IMD435/IMD435_Dermoscopic_Image/IMD435.bmp",
         ["PH2Dataset/PH2 Dataset images/IMD435/IMD435_lesion/IMD435_lesion.bmp"], ""),
    ],
    "ddti": [
        ("DDTI dataset/DDTI/1_or_data/image/1.PNG", ["DDTI dataset/DDTI/1_or_data/mask/1.PNG"], ""),
        ("DDTI dataset/DDTI/1_or_data/image/17.PNG", ["DDTI dataset/DDTI/1_or_data/mask/17.PNG"], ""),
    ],
    "semiseg": [
        ("MultiClassInfection-Train/MultiClassInfection-Train/Imgs/3.jpg",
         ["MultiClassInfection-Train/MultiClassInfection-Train/GT/3.png"], "train"),
        ("MultiClassInfection-Test/MultiClassInfection-Test/Imgs/47.jpg",
         ["MultiClassInfection-Test/MultiClassInfection-Test/GT/47.png"], "test"),
    ],
}
#: files of the real archives that are not cases (superpixels, Semi-Inf-Net priors, licences)
DISTRACTORS = {
    "isic2017": ["ISIC-2017_Training_Data/ISIC-2017_Training_Data/ISIC_0000000_superpixels.png"],
    "isic2018": ["ISIC2018_Task1-2_Training_Input/ISIC2018_Task1-2_Training_Input/LICENSE.txt"],
    "semiseg": ["MultiClassInfection-Train/MultiClassInfection-Train/Prior/3.png"],
}


def _picture(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".txt":
        path.write_text("licence")
        return
    Image.fromarray(pixels).save(path, format={"jpg": "JPEG", "bmp": "BMP"}.get(path.suffix.lower()[1:], "PNG"))


def _tree(root: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    for image, masks, _ in TREES[name]:
        _picture(root / image, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        for k, mask in enumerate(masks):  # mask k: a square of its own, 0 / 255
            pixels = np.zeros((24, 32), np.uint8)
            pixels[2 + 6 * k: 6 + 6 * k, 4: 10] = 255
            _picture(root / mask, pixels)
    for extra in DISTRACTORS.get(name, []):
        _picture(root / extra, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(TREES))
def test_each_picture_layout_pairs_images_masks_and_splits(tmp_path, name):
    _tree(tmp_path, name)
    (entry,) = resolve_datasets([name], load_registry(REPO / "config" / "datasets.yaml")).values()
    table = discover_cases(entry, tmp_path)
    found = {Path(s).relative_to(tmp_path).as_posix(): row for s, row in zip(table["source"], table.to_dict("records"))}
    assert sorted(found) == sorted(image for image, _, _ in TREES[name])
    for image, masks, split in TREES[name]:
        row = found[image]
        assert row["source_kind"] == PICTURE
        assert [Path(p).relative_to(tmp_path).as_posix() for p in row["label"].split(LABEL_SEPARATOR)] == masks
        assert row["split"] == split
        assert row["modality"] == entry["layout"]["modality"]


def test_a_multifocal_busi_case_ingests_the_union_of_its_masks(tmp_path):
    _tree(tmp_path, "busi")
    (entry,) = resolve_datasets(["busi"], load_registry(REPO / "config" / "datasets.yaml")).values()
    table = discover_cases(entry, tmp_path)
    row = table[table["case_id"] == "busi_benign_4"].iloc[0].to_dict()
    out = ingest_case(row, tmp_path / "out", IngestOptions.from_config({"qc": {"min_slices": 16}}))
    labels = radiological(np.asarray(nib.load(out["label_path"]).dataobj)[:, :, 0])
    expected = np.zeros((24, 32), np.int16)
    for k in range(3):
        expected[2 + 6 * k: 6 + 6 * k, 4: 10] = 1
    assert np.array_equal(labels, expected)
    assert out["shape"] == "32x24x1"
