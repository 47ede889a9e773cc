"""Tests for medsynth.metrics: CT windows, FD/KID through torch-fidelity with a pipeline encoder,
Inception availability (no download), per-window / per-plane FD tables, and MONAI mask metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsynth.metrics import (
    INCEPTION_EXTRACTOR,
    INCEPTION_WEIGHTS_FILE,
    apply_window,
    central_slices,
    frechet_metrics,
    inception_fid,
    inception_weights,
    mask_metrics,
    mean_over_channels,
    model_to_hu,
    per_plane_windowed_fd,
    per_window_fd,
    register_module_extractor,
    to_uint8_rgb,
    unregister_module_extractor,
    windowed,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HU_RANGE = [-1024, 1024]
WINDOWS = {"lung": [-600, 1500], "vessel": [100, 700], "soft_tissue": [50, 350], "bone": [300, 2000]}

# ------------------------------------------------------------------------------------------ windows


def test_model_to_hu_maps_ends():
    x = np.array([-1.0, 0.0, 1.0])
    assert model_to_hu(x, HU_RANGE).tolist() == [-1024.0, 0.0, 1024.0]
    assert model_to_hu(torch.tensor([-1.0, 1.0]), [-1000, 3000]).tolist() == [-1000.0, 3000.0]


@pytest.mark.parametrize("as_torch", [False, True])
def test_apply_window_ends_and_clip(as_torch):
    level, width = -600.0, 1500.0  # lung: [-1350, 150]
    hu = np.array([-2000.0, -1350.0, -600.0, 150.0, 1000.0])
    y = apply_window(torch.tensor(hu) if as_torch else hu, level, width)
    assert isinstance(y, torch.Tensor) == as_torch
    np.testing.assert_allclose(np.asarray(y), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    with pytest.raises(ValueError):
        apply_window(hu, level, 0.0)


def test_windowed_is_window_of_hu():
    x = torch.linspace(-1, 1, 101)
    expected = apply_window(model_to_hu(x, HU_RANGE), 50, 350)
    torch.testing.assert_close(windowed(x, HU_RANGE, 50, 350), expected)
    # soft tissue [-125, 225] HU -> model units -125/1024, 225/1024
    np.testing.assert_allclose(windowed(np.array([-125 / 1024, 225 / 1024]), HU_RANGE, 50, 350), [0, 1], atol=1e-6)


# ------------------------------------------------------------------------------------------ Fréchet / KID


def _encoder(seed: int = 0, scale: float = 4.0) -> nn.Module:
    """A small seeded, randomly initialised conv encoder (spatial output), weights scaled up."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


@pytest.fixture
def extractor():
    name = register_module_extractor("medsynth-test-encoder", _encoder())
    yield name
    unregister_module_extractor(name)


@pytest.fixture(scope="module")
def smooth_images() -> torch.Tensor:
    """64 smooth random 32x32 images in [0, 1] (bilinear upsampling of 8x8 noise), seeded."""
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(64, 1, 8, 8, generator=g), size=(32, 32), mode="bilinear", align_corners=False)
    return (x - x.amin()) / (x.amax() - x.amin())


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)


def test_to_uint8_rgb():
    x = torch.tensor([0.0, 0.5, 1.0, 1.7, -0.2]).reshape(5, 1, 1, 1)
    y = to_uint8_rgb(x)
    assert y.dtype == torch.uint8 and y.shape == (5, 3, 1, 1)
    assert y[:, 0, 0, 0].tolist() == [0, 128, 255, 255, 0]
    assert torch.equal(y[:, 0], y[:, 2])


def test_fd_and_kid_self_zero_and_grow_with_noise(extractor, smooth_images):
    x = smooth_images
    self_res = frechet_metrics(x, x, extractor)
    assert self_res["n_real"] == self_res["n_fake"] == 64
    assert abs(self_res["fd"]) < 1e-3
    noisy = [frechet_metrics(x, _noisy(x, s), extractor) for s in (0.1, 0.2, 0.4)]
    fds = [r["fd"] for r in noisy]
    kids = [r["kid_mean"] for r in noisy]
    print(f"\nFD self {self_res['fd']:.3g}, noise {fds}; KID self {self_res['kid_mean']:.3g}, noise {kids}")
    assert fds[0] > 0.05 and fds[0] < fds[1] < fds[2]
    assert kids[0] < kids[1] < kids[2]
    assert abs(self_res["kid_mean"]) < 0.25 * kids[0]  # identical sets: ~0 (unbiased estimator, full subsets)


def test_frechet_distance_agrees_with_monai_fidmetric_on_the_same_features(extractor, smooth_images):
    """The FD torch-fidelity computes equals MONAI's FIDMetric (an independent implementation: its own
    covariance and matrix square root) on the features the same extractor gives the same images."""
    from monai.metrics import FIDMetric

    from medsynth.metrics.features import MODULE_FEATURE, ModuleFeatureExtractor

    x, y = smooth_images, _noisy(smooth_images, 0.2)
    fd = frechet_metrics(x, y, extractor, kid=False)["fd"]
    features = ModuleFeatureExtractor(extractor, [MODULE_FEATURE])
    with torch.no_grad():
        fx, fy = (features(to_uint8_rgb(v))[0] for v in (x, y))
    monai_fd = float(FIDMetric()(fy, fx))
    print(f"\nFD torch-fidelity {fd:.6f}, MONAI FIDMetric {monai_fd:.6f}")
    assert fd > 0.05 and monai_fd == pytest.approx(fd, rel=1e-4)


def test_frechet_metrics_equal_torch_fidelitys_calculate_metrics(extractor, smooth_images):
    """One feature pass gives the FD and KID torch-fidelity's own entry point computes, and the features."""
    import torch_fidelity

    from medsynth.metrics.frechet import UInt8ImageDataset, frechet_distance

    x, y = smooth_images, _noisy(smooth_images, 0.2)
    ours = frechet_metrics(x, y, extractor, kid_subset_size=20, kid_subsets=10, return_features=True)
    theirs = torch_fidelity.calculate_metrics(input1=UInt8ImageDataset(x), input2=UInt8ImageDataset(y), fid=True,
                                              kid=True, feature_extractor=extractor, kid_subset_size=20,
                                              kid_subsets=10, cache=False, verbose=False, cuda=False,
                                              save_cpu_ram=True, rng_seed=2020)
    assert ours["fd"] == theirs[torch_fidelity.KEY_METRIC_FID] and ours["fd"] > 0.05
    assert ours["kid_mean"] == theirs[torch_fidelity.KEY_METRIC_KID_MEAN]
    assert ours["kid_std"] == theirs[torch_fidelity.KEY_METRIC_KID_STD]
    real_f, fake_f = ours["features"]
    assert real_f.shape[0] == fake_f.shape[0] == 64 and frechet_distance(real_f, fake_f) == ours["fd"]


def test_the_low_rank_frechet_distance_equals_the_covariance_one():
    """Fewer samples than feature dimensions (the bootstrap's case) and more: the same distance."""
    from medsynth.metrics.frechet import frechet_distance, frechet_distance_lowrank

    rng = np.random.default_rng(0)
    for n, d in ((30, 200), (80, 16)):
        a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.1
        b = rng.normal(0.3, 1.0, size=(n + 5, d))
        exact = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
        assert frechet_distance_lowrank(a, b) == pytest.approx(exact, rel=1e-6)  # eigvals of a rank-deficient product: ~1e-8


def test_extractor_reregistration_replaces_module_and_leaves_caller_module_alone(extractor, smooth_images):
    x, y = smooth_images, _noisy(smooth_images, 0.2)
    constant = _encoder(scale=0.0)  # all-zero weights: the same feature for every image
    assert register_module_extractor(extractor, constant) == extractor
    assert frechet_metrics(x, y, extractor, kid=False)["fd"] == pytest.approx(0.0, abs=1e-12)
    enc = _encoder()
    enc.train()
    register_module_extractor(extractor, enc)
    res = frechet_metrics(x, y, extractor, kid=False)
    assert res["fd"] > 0.05 and res["kid_mean"] is None
    # torch-fidelity's eval()/requires_grad_(False) went to a copy, not to the caller's encoder
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="already used"):
        register_module_extractor(INCEPTION_EXTRACTOR, enc)


def test_frechet_input_checks(extractor, smooth_images):
    with pytest.raises(ValueError, match="at least 2"):
        frechet_metrics(smooth_images[:1], smooth_images, extractor)
    with pytest.raises(ValueError, match="kid_subset_size"):
        frechet_metrics(smooth_images[:10], smooth_images, extractor, kid_subset_size=20)
    res = frechet_metrics(smooth_images[:10], smooth_images, extractor, kid_subset_size=5)
    assert res["n_real"] == 10 and res["n_fake"] == 64 and res["kid_std"] > 0


# ------------------------------------------------------------------------------------------ Inception


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_inception_fid_unavailable_without_weights(empty_hub, monkeypatch, smooth_images):
    import torch_fidelity

    def _no_call(**kwargs):
        raise AssertionError("torch-fidelity must not be called without Inception weights")

    monkeypatch.setattr(torch_fidelity, "calculate_metrics", _no_call)
    monkeypatch.setattr(torch_fidelity.utils, "create_feature_extractor", _no_call)
    res = inception_fid(smooth_images, smooth_images, None)
    assert res["fid"] is None and res["kid_mean"] is None
    assert res["status"].startswith("unavailable: no Inception weights")
    assert INCEPTION_WEIGHTS_FILE in res["status"] and str(empty_hub / "checkpoints") in res["status"]
    missing = inception_fid(smooth_images, smooth_images, str(empty_hub / "nope.pth"))
    assert missing["fid"] is None and missing["status"].startswith("unavailable: no Inception weights")
    rows = per_window_fd(smooth_images * 2 - 1, smooth_images * 2 - 1, HU_RANGE, {"lung": [-600, 1500]},
                         INCEPTION_EXTRACTOR)
    assert [r["fd"] for r in rows] == [None, None]
    assert all(r["status"].startswith("unavailable") for r in rows)


def test_inception_weights_found_locally(empty_hub, tmp_path):
    assert INCEPTION_WEIGHTS_FILE == "weights-inception-2015-12-05-6726825d.pth"
    configured = tmp_path / "inception.pth"
    configured.write_bytes(b"x")
    assert inception_weights(str(configured)) == (str(configured), "ok")
    (empty_hub / "checkpoints").mkdir()
    cached = empty_hub / "checkpoints" / INCEPTION_WEIGHTS_FILE
    cached.write_bytes(b"x")
    assert inception_weights(None) == (str(cached), "ok")


# ------------------------------------------------------------------------------------------ tables


def test_per_window_fd_rows(extractor, smooth_images):
    real = smooth_images * 2 - 1  # model units
    fake = _noisy(smooth_images, 0.2) * 2 - 1
    rows = per_window_fd(real, fake, HU_RANGE, WINDOWS, extractor, kid_subset_size=32, kid_subsets=10)
    assert [r["window"] for r in rows] == [*WINDOWS, "mean"]
    assert all(r["status"] == "ok" for r in rows)
    assert (rows[0]["level"], rows[0]["width"]) == (-600.0, 1500.0)
    assert rows[-1]["fd"] == pytest.approx(np.mean([r["fd"] for r in rows[:-1]]))
    assert rows[-1]["kid_mean"] == pytest.approx(np.mean([r["kid_mean"] for r in rows[:-1]]))
    assert all(r["fd"] > 0 for r in rows)
    same = per_window_fd(real, real, HU_RANGE, WINDOWS, extractor, kid=False)
    assert all(abs(r["fd"]) < 1e-3 for r in same)


def test_central_slices_axes():
    vol = torch.arange(16, dtype=torch.float32).reshape(1, 1, 1, 1, 16).expand(2, 1, 4, 6, 16)
    axial = central_slices(vol, 4, 0.4)  # round(6.4) = 6 central slices along z: 5..10
    assert axial.shape == (12, 1, 4, 6)
    assert axial[:6, 0, 0, 0].tolist() == [5, 6, 7, 8, 9, 10]
    sagittal = central_slices(vol, 2, 0.4)  # x has 4 slices -> round(1.6) = 2; planes are (Y, Z)
    assert sagittal.shape == (4, 1, 6, 16)
    coronal = central_slices(vol, 3, 0.5)  # planes are (X, Z)
    assert coronal.shape == (6, 1, 4, 16)


def test_per_plane_windowed_fd_rows(extractor):
    g = torch.Generator().manual_seed(0)
    real = F.interpolate(torch.rand(8, 1, 4, 4, 4, generator=g), size=(16, 16, 16), mode="trilinear") * 2 - 1
    fake = (real + 0.3 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    windows = {"lung": WINDOWS["lung"], "soft_tissue": WINDOWS["soft_tissue"]}
    rows = per_plane_windowed_fd(real, fake, HU_RANGE, windows, extractor, kid_subset_size=16, kid_subsets=10)
    cells = [(r["window"], r["plane"]) for r in rows]
    assert cells == [(w, p) for w in windows for p in ("axial", "sagittal", "coronal")] + \
        [("lung", "mean"), ("soft_tissue", "mean"), ("mean", "mean")]
    assert all(r["n_real"] == r["n_fake"] == 8 * 6 for r in rows[:6])
    assert rows[6]["fd"] == pytest.approx(np.mean([r["fd"] for r in rows[:3]]))
    assert rows[-1]["fd"] == pytest.approx(np.mean([r["fd"] for r in rows[:6]]))
    assert all(r["status"] == "ok" and r["fd"] > 0 for r in rows)


# ------------------------------------------------------------------------------------------ masks


def _square(n: int = 2, size: int = 32, shift: int = 0) -> torch.Tensor:
    m = torch.zeros(n, 1, size, size)
    m[:, 0, 8:16, 8 + shift:16 + shift] = 1
    return m


def test_mask_metrics_perfect_and_empty():
    ref = torch.cat([_square(), torch.zeros(2, 1, 32, 32)], dim=1)
    out = mask_metrics(ref.clone(), ref, ["liver", "spleen"])
    liver = out["liver"]
    assert (liver["dice"], liver["jaccard"], liver["hd95"], liver["asd"]) == (1.0, 1.0, 0.0, 0.0)
    assert liver["status"] == "ok" and liver["n_reference"] == 2
    assert out["spleen"]["status"] == "empty" and math.isnan(out["spleen"]["dice"])


def test_mask_metrics_shifted_square_and_spacing():
    """8x8 square shifted 3 columns: overlap 8x5 -> Dice 80/128; boundary distances 0 x10, 1 x4, 2 x4, 3 x10."""
    pred, ref = _square(shift=3), _square()
    sq = mask_metrics(pred, ref, ["sq"])["sq"]
    assert sq["dice"] == pytest.approx(0.625)
    assert sq["jaccard"] == pytest.approx(40 / 88)
    assert sq["hd95"] == pytest.approx(3.0)
    assert sq["asd"] == pytest.approx(42 / 28)
    mm = mask_metrics(pred, ref, ["sq"], spacing=2.0)["sq"]
    assert mm["hd95"] == pytest.approx(6.0) and mm["asd"] == pytest.approx(3.0) and mm["dice"] == sq["dice"]
    aniso = mask_metrics(pred, ref, ["sq"], spacing=(1.0, 2.5))["sq"]  # shift is along the 2nd axis
    assert aniso["hd95"] == pytest.approx(7.5)
    with pytest.raises(ValueError, match="spacing"):
        mask_metrics(pred, ref, ["sq"], spacing=(1.0, 1.0, 1.0))


def test_mean_over_channels():
    ref = torch.cat([_square(), _square(), torch.zeros(2, 1, 32, 32)], dim=1)
    pred = torch.cat([_square(), _square(shift=3), torch.zeros(2, 1, 32, 32)], dim=1)
    res = mean_over_channels(mask_metrics(pred, ref, ["liver", "kidneys", "bone"]))
    assert res["status"] == "ok" and res["n_channels"] == 2 and res["channels"] == ["liver", "kidneys"]
    assert res["mDSC"] == pytest.approx((1.0 + 0.625) / 2)
    assert res["mHD95"] == pytest.approx(1.5)
    assert res["mASD"] == pytest.approx(0.75)
    empty = mean_over_channels(mask_metrics(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), ["x"]))
    assert empty["status"] == "empty" and math.isnan(empty["mDSC"])
