"""load_rows / iter_slices read only the rows asked for (safetensors slices), bit for bit what the whole-shard
reads gave: the reference implementations below are the former code (``load_file`` of a whole shard, then
fancy indexing), kept here to compare against."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from conftest import ct_slice_shard
from medsynth.io.trainsets import (iter_slices, join_slices, load_rows, load_shard, load_slices, read_index,
                                   read_stored_rows, select_rows, shard_condition_names, to_condition_values,
                                   write_shard)

NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """Three slice shards of 14, 9 and 4 samples (distinct stems, one folder) and an empty fourth."""
    root = tmp_path_factory.mktemp("load_rows")
    for stem, n in (("shard-000", 14), ("shard-001", 9), ("shard-002", 4)):
        ct_slice_shard(root / stem, NAMES, n=n, size=16)
        for ext in ("safetensors", "csv"):
            shutil.move(root / stem / f"shard-000.{ext}", root / f"{stem}.{ext}")
    write_shard([], NAMES, root / "shard-003.safetensors", root / "shard-003.csv")
    return sorted(str(p) for p in root.glob("shard-*.*"))


def reference_load_rows(shards, positions, index=None):
    """The former load_rows: each shard holding asked-for rows loaded whole, then its rows picked."""
    index = read_index(shards) if index is None else index
    rows = index.iloc[np.asarray(positions, dtype=np.int64).reshape(-1)]
    paths: dict[str, list[str]] = {}
    for path in sorted(str(p) for p in shards if str(p).endswith(".safetensors")):
        paths.setdefault(Path(path).stem, []).append(path)
    shard_of, samples = rows["shard"].astype(str).to_numpy(), rows["sample"].to_numpy()
    first = str(index["shard"].iloc[0])
    images = masks = None
    for stem in sorted(set(shard_of), key=lambda s: paths.get(s, [""])[0]):
        where = np.flatnonzero(shard_of == stem)
        data = load_file(paths[stem][0])
        image = data["image"][samples[where]].astype(np.float32)
        mask = to_condition_values(data["masks"][samples[where]])
        if images is None:
            images = np.empty((len(rows), *image.shape[1:]), np.float32)
            masks = np.empty((len(rows), *mask.shape[1:]), np.float32)
        images[where], masks[where] = image, mask
    if images is None:
        with safe_open(paths[first][0], framework="np") as fh:
            shapes = {k: fh.get_slice(k).get_shape() for k in ("image", "masks")}
        images = np.zeros((0, *shapes["image"][1:]), np.float32)
        masks = np.zeros((0, *shapes["masks"][1:]), np.float32)
    return rows, images, masks, shard_condition_names(paths[first][0])


def reference_iter_slices(shards, select=None):
    """The former iter_slices: each shard with selected rows loaded whole (load_shard), then its rows picked."""
    from medsynth.io.trainsets import shard_indexes

    for path, index, names in shard_indexes(shards):
        index = index.iloc[select_rows(index, select)]
        if not len(index):
            continue
        data = load_shard(path)
        samples = index["sample"].to_numpy()
        yield (index.reset_index(drop=True).assign(shard=Path(path).stem), data["image"][samples],
               data["masks"][samples], names)


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def assert_same_slices(got, want) -> None:
    pd.testing.assert_frame_equal(got[0], want[0], check_exact=True)
    assert_identical(got[1], want[1])
    assert_identical(got[2], want[2])
    assert got[3] == want[3]


POSITIONS = [
    [20, 3, 13, 14, 3, 0],  # unsorted, repeated, across the 000 | 001 boundary
    [26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # reversed
    [23, 23, 23, 5, 7, 9, 11, 24, 26, 14, 15, 16, 2],  # three shards, runs and gaps
    [-1, 0, -27, 5],  # iloc's negative positions
    list(range(27)),
    [8],
    [],
]


@pytest.mark.parametrize("positions", POSITIONS)
def test_load_rows_is_the_whole_shard_read_picked(shards, positions):
    index = read_index(shards)
    for given in (index, None):
        got = load_rows(shards, np.asarray(positions, dtype=int), given)
        want = reference_load_rows(shards, np.asarray(positions, dtype=int), given)
        assert_same_slices(got, want)
    assert_same_slices(load_rows(shards, positions, index), reference_load_rows(shards, positions, index))  # a list


def test_load_rows_random_positions(shards):
    index = read_index(shards)
    rng = np.random.default_rng(3)
    for _ in range(5):
        positions = rng.integers(0, len(index), int(rng.integers(1, 60)))
        assert_same_slices(load_rows(shards, positions, index), reference_load_rows(shards, positions, index))


@pytest.mark.parametrize("select", [None, {"split": ["test"]}, {"modality": ["CT"]}, {"split": ["val"]}])
def test_iter_and_load_slices_are_the_whole_shard_read_picked(shards, select):
    got, want = list(iter_slices(shards, select)), list(reference_iter_slices(shards, select))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same_slices(g, w)
    joined = join_slices(iter(got))
    if not want:
        assert joined is None
        with pytest.raises(ValueError, match="no slices in the training-set shards kept by select"):
            load_slices(shards, select)
        return
    assert_same_slices(load_slices(shards, select), joined)
    ref = (pd.concat([p[0] for p in want], ignore_index=True), np.concatenate([p[1] for p in want]),
           np.concatenate([p[2] for p in want]), want[0][3])
    assert_same_slices(joined, ref)


def test_read_stored_rows_is_fancy_indexing_of_the_stored_tensor(shards):
    path = shards[0] if shards[0].endswith(".safetensors") else shards[1]
    stored = load_file(path)
    with safe_open(path, framework="np") as fh:
        for key in ("image", "masks"):
            view = fh.get_slice(key)
            for samples in ([3, 1, 1, 13, 0, 2], [0, 1, 2], [13], [-1, -14, 4], list(range(13, -1, -1))):
                assert_identical(read_stored_rows(view, samples), stored[key][samples])
            assert_identical(read_stored_rows(view, []), stored[key][np.array([], int)])
            for bad in ([14], [-15], [2, 14]):
                with pytest.raises(IndexError):
                    read_stored_rows(view, bad)


def test_no_whole_shard_is_loaded(shards, monkeypatch):
    """load_rows / iter_slices never load a whole shard file (``load_file``); they slice the stored tensors."""
    import medsynth.io.trainsets as trainsets

    want_rows = reference_load_rows(shards, [20, 3, 13])
    want_parts = list(reference_iter_slices(shards, {"split": ["test"]}))

    def refuse(*args, **kwargs):
        raise AssertionError("a whole shard was loaded")

    monkeypatch.setattr(trainsets, "load_file", refuse)
    assert_same_slices(load_rows(shards, [20, 3, 13]), want_rows)
    for got, want in zip(iter_slices(shards, {"split": ["test"]}), want_parts, strict=True):
        assert_same_slices(got, want)
