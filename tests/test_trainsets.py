"""Training-set shards: slices with enough coverage, masks kept binary, safetensors round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medsynth.preprocess.intensity import hu_to_unit
from medsynth.io.trainsets import load_rows, load_shard, load_slices, read_index, select_rows, write_shard
from medsynth.preprocess.trainsets import SliceOptions, axial_slices, centre_crop_or_pad, volume_sample


def test_slices_skip_uncovered_planes_and_resize(ct_small):
    image = hu_to_unit(np.asarray(ct_small.dataobj))
    masks = np.stack([image > 0.2, image < -0.5]).astype(np.uint8)
    coverage = np.zeros(image.shape, np.float32)
    coverage[:, :, 5:25] = 1.0
    got = list(axial_slices(image, masks, coverage, SliceOptions.from_config({"size": 32, "min_coverage": 0.5, "every": 2})))
    assert [z for z, _, _ in got] == list(range(6, 25, 2))
    z, img, msk = got[0]
    assert img.shape == (1, 32, 32) and msk.shape == (2, 32, 32)
    assert set(np.unique(msk)) <= {0, 1}
    assert -1.0 <= img.min() and img.max() <= 1.0


def test_shard_round_trip(tmp_path, ct_small):
    image = hu_to_unit(np.asarray(ct_small.dataobj))
    masks = (image[None] > 0.2).astype(np.uint8)
    samples = [({"case_id": "c", "slice": z}, img, msk)
               for z, img, msk in axial_slices(image, masks, np.ones(image.shape), SliceOptions.from_config({"size": 16}))]
    index = write_shard(samples, ["dense"], tmp_path / "s.safetensors", tmp_path / "s.csv")
    data = load_shard(tmp_path / "s.safetensors")
    assert data["image"].shape == (30, 1, 16, 16) and data["masks"].shape == (30, 1, 16, 16)
    assert set(np.unique(data["masks"])) <= {-0.5, 0.5}
    np.testing.assert_allclose(data["image"][3], samples[3][1], atol=2e-3)  # float16 storage
    assert pd.read_csv(tmp_path / "s.csv")["sample"].tolist() == list(range(30)) == index["sample"].tolist()


def test_empty_shard_is_valid(tmp_path):
    write_shard([], ["a", "b"], tmp_path / "e.safetensors", tmp_path / "e.csv")
    assert load_shard(tmp_path / "e.safetensors")["masks"].shape[1] == 2


def test_volume_sample_and_crop_pad():
    image = np.random.default_rng(0).uniform(-1, 1, (40, 30, 20)).astype(np.float32)
    masks = (image[None] > 0).astype(np.uint8)
    img, msk = volume_sample(image, masks, (16, 16, 16))
    assert img.shape == (1, 16, 16, 16) and msk.shape == (1, 16, 16, 16)
    padded = centre_crop_or_pad(np.ones((4, 6)), (6, 4), fill=0.0)
    np.testing.assert_array_equal(padded, np.pad(np.ones((4, 4)), ((1, 1), (0, 0))))


def test_held_out_slabs_split_slices_and_drop_the_gap_around_them():
    import pytest

    options = SliceOptions.from_config({"slabs": {"test": {"p1": [10, 14]}, "gap": 2}})
    splits = [options.slice_split("p1", z, "val") for z in range(6, 19)]
    assert splits == ["train", "train", None, None, "test", "test", "test", "test", "test", None, None, "train",
                      "train"]
    assert options.slice_split("p2", 12, "val") == "val"  # a patient without a slab keeps its patient-level split
    assert SliceOptions.from_config({}).slice_split("p1", 12, "test") == "test"  # no slabs: patient-level splits
    with pytest.raises(ValueError, match="last slice 3 before first 5"):
        SliceOptions.from_config({"slabs": {"test": {"p1": [5, 3]}}})


def test_rows_read_by_position_are_those_picked_from_all_slices(tmp_path):
    """read_index + load_rows = load_slices + picking rows, across shard boundaries, in any order, without
    reading the shards that hold none of the rows (an empty shard and a shard of no asked-for row included)."""
    import shutil

    from conftest import ct_slice_shard

    names = ["liver", "lungs", "bone", "kidneys", "spleen"]
    for stem, n in (("shard-000", 14), ("shard-001", 9), ("shard-002", 4)):
        ct_slice_shard(tmp_path / stem, names, n=n, size=16)
        for ext in ("safetensors", "csv"):
            shutil.move(tmp_path / stem / f"shard-000.{ext}", tmp_path / f"{stem}.{ext}")
    write_shard([], names, tmp_path / "shard-003.safetensors", tmp_path / "shard-003.csv")
    shards = sorted(str(p) for p in tmp_path.glob("shard-*.*"))
    index, images, masks, got_names = load_slices(shards)
    pd.testing.assert_frame_equal(read_index(shards), index)
    assert len(index) == 27 and list(index["shard"].unique()) == ["shard-000", "shard-001", "shard-002"]
    test = select_rows(index, {"split": ["test"]})
    assert set(index["shard"].iloc[test]) == {"shard-000", "shard-001"}  # both sides of a boundary
    for positions in (test, np.array([20, 3, 13, 14, 3, 0]), np.arange(27), np.array([], int)):
        rows, got_images, got_masks, row_names = load_rows(shards, positions, index if len(positions) else None)
        pd.testing.assert_frame_equal(rows, index.iloc[positions])  # the labels kept: positions in the full index
        assert got_images.dtype == images.dtype == got_masks.dtype and row_names == got_names == names
        np.testing.assert_array_equal(got_images, images[positions])
        np.testing.assert_array_equal(got_masks, masks[positions])
    # only the shards holding asked-for rows are read: shard-002 may go missing for rows of the first two
    (tmp_path / "shard-002.safetensors").unlink()
    np.testing.assert_array_equal(load_rows(shards, test, index)[1], images[test])
