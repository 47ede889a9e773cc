"""ShardDataset: a training set read on demand from its shards, item for item the in-memory fit set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ct_slice_shard
from medsynth.io.shard_dataset import ShardDataset
from medsynth.io.trainsets import load_slices
from medsynth.vae.stage import _mask_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["soft", "lung", "bone", "contrast", "empty"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """Two slice shards of the same stem in two folders: 10 + 7 train, 2 + 1 test slices."""
    root = tmp_path_factory.mktemp("shards")
    first, second = ct_slice_shard(root / "a", NAMES, n=12), ct_slice_shard(root / "b", NAMES, n=8)
    index = pd.read_csv(second[1])
    index.assign(case_id=index["case_id"] + "_b", patient_id="q").to_csv(second[1], index=False)
    return first + second


def _fit(shards: list[str], masks: bool) -> np.ndarray:
    """The fit set as run_vae held it in memory before: the train images (+ their non-empty mask channels)."""
    _, images, mask, _ = load_slices(shards, {"split": ["train"]})
    return np.concatenate([images, _mask_images(mask)]) if masks else images


@pytest.mark.parametrize("read_bytes", [1, 2**30])  # one sample per read / everything in one read
def test_get_batch_equals_the_in_memory_fit_set(shards, read_bytes):
    for masks in (False, True):
        want = _fit(shards, masks)
        data = ShardDataset(shards, {"split": ["train"]}, include_masks=masks, read_bytes=read_bytes)
        assert len(data) == len(want) and data.n_images == 17 and data.item_shape == want.shape[1:]
        assert len(data.index) == 17 and data.condition_names == NAMES
        # across the shards' boundary (items 9 | 10), repeated and unordered, images and masks mixed
        for idx in ([9, 10], [16, 0, 10, 9, 9, 3, 3], list(range(len(want)))[::-1],
                    np.random.default_rng(1).integers(0, len(want), 40).tolist()):
            got = data.get_batch(idx)["image"]
            assert got.dtype == torch.float32 and got.is_contiguous() and got.device.type == "cpu"
            assert torch.equal(got, torch.as_tensor(want[idx]))  # bit for bit what TensorDictDataset returns
        assert torch.equal(data[len(want) - 1]["image"], torch.as_tensor(want[-1]))
        assert torch.equal(torch.cat(list(data.blocks())), torch.as_tensor(want))
        assert torch.equal(torch.cat(list(data.blocks(0, data.n_images))), torch.as_tensor(want[:17]))
        with pytest.raises(IndexError):
            data.get_batch([len(want)])


def test_mask_items_are_the_non_empty_channels_sample_major(shards):
    """With include_masks the items after the images are (sample, channel) pairs in the order of _mask_images:
    sample-major, channel-minor; the channel left empty by every slice ('empty') is never an item."""
    _, images, masks, _ = load_slices(shards, {"split": ["train"]})
    data = ShardDataset(shards, {"split": ["train"]}, include_masks=True)
    full = (masks > 0).reshape(len(masks), len(NAMES), -1).any(axis=2)
    pairs = [(s, c) for s in range(len(masks)) for c in range(len(NAMES)) if full[s, c]]
    assert len(data) == len(images) + len(pairs) and not full[:, NAMES.index("empty")].any()
    got = data.get_batch(range(len(images), len(data)))["image"].numpy()
    want = np.stack([masks[s, c][None] for s, c in pairs])
    assert np.array_equal(got, want) and set(np.unique(got)) <= {-0.5, 0.5}


def test_select_and_an_empty_selection(shards):
    test = ShardDataset(shards, {"split": ["test"]})
    _, images, _, _ = load_slices(shards, {"split": ["test"]})
    assert len(test) == 3 and torch.equal(test.get_batch([2, 0, 1])["image"], torch.as_tensor(images[[2, 0, 1]]))
    with pytest.raises(ValueError, match="no slices"):
        ShardDataset(shards, {"split": ["val"]})


def test_the_dataset_pickles_without_its_open_files(shards):
    import pickle

    data = ShardDataset(shards, {"split": ["train"]}, include_masks=True)
    data.get_batch([0, 12])
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy.get_batch([5, 30])["image"], data.get_batch([5, 30])["image"])
    data.close()
    assert torch.equal(copy.get_batch([5, 30])["image"], data.get_batch([5, 30])["image"])


def test_tuning_on_the_dataset_equals_tuning_on_the_array(shards, tmp_path):
    """tune_vae on a ShardDataset: the same fingerprint (the fit set's bytes streamed in order), weights, curve
    and statistics as on the in-memory array, bit for bit."""
    from medsynth.vae import TINY_VAE_CONFIGS, build_autoencoder, tune_vae

    cfg = {"steps": 2, "batch_size": 4, "seed": 3, "patch_size": 16, "checkpoint_every": 0, "progress": False}
    runs = {}
    for name, images in (("array", _fit(shards, True)), ("shards", ShardDataset(shards, {"split": ["train"]},
                                                                                 include_masks=True, read_bytes=5000))):
        torch.manual_seed(0)
        model = build_autoencoder(TINY_VAE_CONFIGS["2d"])
        summary = tune_vae(model, images, cfg, tmp_path / name)
        state = json.loads((tmp_path / name / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
        runs[name] = (model.state_dict(), summary["latent_stats"], state["config"]["fingerprint"],
                      (tmp_path / name / "loss_curve.csv").read_text())
    (a, stats_a, print_a, curve_a), (b, stats_b, print_b, curve_b) = runs["array"], runs["shards"]
    assert print_a == print_b and stats_a == stats_b and curve_a == curve_b
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_fingerprint_streams_the_same_digest_as_the_array(shards):
    import hashlib

    from medsynth.vae.tune import _fingerprint

    cfg = {"steps": 3, "seed": 1}
    want = _fit(shards, True)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode() + want.tobytes()).hexdigest()
    for read_bytes in (1, 4096, 2**30):
        assert _fingerprint(cfg, ShardDataset(shards, {"split": ["train"]}, include_masks=True,
                                              read_bytes=read_bytes)) == digest
    assert _fingerprint(cfg, torch.as_tensor(want)) == digest


def test_file_handles_stay_bounded(shards, monkeypatch):
    import medsynth.io.shard_dataset as module

    monkeypatch.setattr(module, "OPEN_FILES", 1)
    data = ShardDataset(shards, {"split": ["train"]}, include_masks=True)
    want = _fit(shards, True)
    idx = [0, 16, 1, 15, 40, 2]
    assert torch.equal(data.get_batch(idx)["image"], torch.as_tensor(want[idx])) and len(data._handles) == 1
    assert Path(next(iter(data._handles))).suffix == ".safetensors"
