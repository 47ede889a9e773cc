"""MedDiff-FT inference tools (guided inpainting, stochastic masks, erosion, quality filter) and the
MAISI HU quality check with regeneration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsynth.metrics.windows import model_to_hu
from medsynth.sample.hu_qc import hu_check, organ_hu_bounds, organ_medians, regenerate_until_pass
from medsynth.sample.meddiff import erode_masks, guided_inpaint_euler, quality_filter, stochastic_masks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- guided inpainting


def _point_mass_field(c: torch.Tensor):
    """Exact rectified-flow velocity when the data distribution is the point mass at ``c``."""

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - c) / t.clamp_min(1e-4).view(-1, *([1] * (x.ndim - 1)))

    return field


def _inpaint_case():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 1, 12, 12, generator=g)
    known = torch.rand(2, 1, 12, 12, generator=g) * 2 - 1
    c = torch.full_like(known, 0.37)
    keep = torch.ones(1, 1, 12, 12)
    keep[..., 4:8, 3:9] = 0.0  # ROI
    return x1, known, c, keep


@pytest.mark.parametrize("schedule", ["static", "shrink"])
@pytest.mark.parametrize("noise", ["x1", "fresh"])
def test_guided_inpaint_keeps_outside_and_fills_roi(schedule, noise):
    x1, known, c, keep = _inpaint_case()
    gen = torch.Generator().manual_seed(3) if noise == "fresh" else None
    out = guided_inpaint_euler(_point_mass_field(c), x1, known, keep, steps=6, generator=gen, schedule=schedule)
    outside = keep.expand_as(out) > 0.5
    assert torch.equal(out[outside], known[outside])
    assert torch.allclose(out[~outside], c[~outside], atol=1e-5)


def test_guided_inpaint_shrink_differs_midway_and_validates():
    x1, known, c, keep = _inpaint_case()
    # a field that depends on the context outside the ROI, so the dilated early mask matters
    def field(x, t):
        return (x - x.mean(dim=(2, 3), keepdim=True)) / t.clamp_min(1e-4).view(-1, 1, 1, 1)

    a = guided_inpaint_euler(field, x1, known, keep, steps=4, schedule="static")
    b = guided_inpaint_euler(field, x1, known, keep, steps=4, schedule="shrink", max_dilate=3)
    roi = keep.expand_as(a) < 0.5
    assert torch.equal(a[~roi], b[~roi])
    assert not torch.allclose(a[roi], b[roi])
    with pytest.raises(ValueError):
        guided_inpaint_euler(field, x1, known, keep, steps=4, schedule="bogus")


# --------------------------------------------------------------------------- stochastic masks


def _real_masks() -> torch.Tensor:
    m = torch.zeros(4, 2, 24, 24)
    for i in range(4):
        m[i, 0, 4 + i : 12 + i, 5:13] = 1  # "liver"
        m[i, 1, 14:20, 10 + i : 16 + i] = 1  # "spleen"
    return m


def test_stochastic_masks_binary_shape_seeded_nonempty():
    real = _real_masks()
    a = stochastic_masks(real, 6, torch.Generator().manual_seed(1), max_shift=2, max_dilate=1)
    b = stochastic_masks(real, 6, torch.Generator().manual_seed(1), max_shift=2, max_dilate=1)
    c = stochastic_masks(real, 6, torch.Generator().manual_seed(2), max_shift=2, max_dilate=1)
    assert a.shape == (6, 2, 24, 24) and a.dtype == real.dtype
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a.flatten(2).sum(-1) > 0).all()  # every channel non-empty, as in every input


def test_stochastic_masks_without_perturbation_stay_within_union():
    real = _real_masks()
    out = stochastic_masks(real, 5, torch.Generator().manual_seed(4), max_union=3, p_perturb=0.0)
    union = real.amax(dim=0, keepdim=True)
    assert (out <= union).all()
    # each output contains at least one real mask entirely (the heaviest source)
    for o in out:
        assert any(bool((r <= o).all()) for r in real)


# --------------------------------------------------------------------------- erosion


def test_erode_square_5_to_3():
    m = torch.zeros(1, 1, 9, 9)
    m[0, 0, 2:7, 2:7] = 1
    e = erode_masks(m, iterations=1)
    expected = torch.zeros_like(m)
    expected[0, 0, 3:6, 3:6] = 1
    assert torch.equal(e, expected)
    assert erode_masks(m, iterations=3).sum() == 0
    vol = torch.zeros(1, 2, 7, 7, 7, dtype=torch.bool)
    vol[0, 1, 1:6, 1:6, 1:6] = True
    ev = erode_masks(vol)
    assert ev.dtype == torch.bool and ev[0, 1].sum() == 27 and ev[0, 0].sum() == 0


# --------------------------------------------------------------------------- quality filter


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_quality_filter_prefers_in_distribution(method):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 8, generator=g)
    inliers = torch.randn(10, 8, generator=g)
    outliers = torch.randn(5, 8, generator=g) + 8.0
    fake = torch.cat([inliers, outliers])
    keep, scores = quality_filter(real, fake, keep_fraction=10 / 15, method=method)
    assert scores.shape == (15,) and keep.dtype == torch.bool
    assert scores[:10].max() < scores[10:].min()
    assert int(keep.sum()) == 10 and keep[:10].all()
    keep_t, _ = quality_filter(real, fake, threshold=float(scores[:10].max()), method=method)
    assert torch.equal(keep_t, keep)
    keep_frac, _ = quality_filter(real, fake, keep_fraction=0.2, method=method)
    assert int(keep_frac.sum()) == 3


# --------------------------------------------------------------------------- MAISI HU check

NAMES = ["liver", "spleen", "bone"]
MEANS = {"liver": 60.0, "spleen": 45.0, "bone": 400.0}


def _ct(n: int, seed: int, shift_liver: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy model-space CT ``(n, 1, 16, 16)`` and masks; organ HU = MEANS + per-sample jitter."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 3, 16, 16)
    masks[:, 0, 2:8, 2:8] = 1
    masks[:, 1, 10:14, 2:6] = 1
    masks[:, 2, 9:15, 9:15] = 1
    masks[0, 1] = 0  # first sample has no spleen
    hu = torch.full((n, 1, 16, 16), -900.0) + 5 * torch.randn(n, 1, 16, 16, generator=g)
    for c, name in enumerate(NAMES):
        level = MEANS[name] + 10 * torch.randn(n, 1, 1, 1, generator=g) + (shift_liver if name == "liver" else 0)
        hu = torch.where(masks[:, c : c + 1] > 0, level + 5 * torch.randn(n, 1, 16, 16, generator=g), hu)
    return hu / 1024.0, masks  # model space for hu_range [-1024, 1024]


def test_hu_bounds_and_check():
    x_real, m_real = _ct(30, 0)
    hu_real = model_to_hu(x_real, [-1024, 1024])
    bounds = organ_hu_bounds(hu_real, m_real, NAMES, method="sigma", k=6.0)
    assert list(bounds) == NAMES
    lo, hi = bounds["liver"]
    assert lo < MEANS["liver"] < hi and hi - lo < 200

    x_ok, m_ok = _ct(4, 1)
    x_bad, m_bad = _ct(4, 2, shift_liver=500.0)
    passed, details = hu_check(model_to_hu(x_ok, [-1024, 1024]), m_ok, bounds)
    assert passed.all() and details[0]["organs"]["spleen"]["median"] is None
    passed_bad, details_bad = hu_check(model_to_hu(x_bad, [-1024, 1024]), m_bad, bounds, names=NAMES)
    assert not passed_bad.any() and all(d["failed"] == ["liver"] for d in details_bad)

    pct = organ_hu_bounds(hu_real, m_real, NAMES, method="percentile", percentiles=(5, 95))
    med = organ_medians(hu_real, m_real)[:, 0]
    assert pct["liver"] == pytest.approx((np.percentile(med, 5), np.percentile(med, 95)))
    assert pct["liver"][1] - pct["liver"][0] < hi - lo
    uni = organ_hu_bounds(hu_real, m_real, NAMES, method="union")
    assert uni["liver"][0] <= lo and uni["liver"][1] >= hi


def test_hu_bounds_skip_rare_organ():
    x, m = _ct(5, 3)
    m[1:, 1] = 0  # spleen present in a single sample only (sample 0 has none either)
    m[1, 1, 10:14, 2:6] = 1
    bounds = organ_hu_bounds(model_to_hu(x, [-1024, 1024]), m, NAMES)
    assert "spleen" not in bounds and set(bounds) == {"liver", "bone"}
    with pytest.raises(ValueError):
        hu_check(model_to_hu(x, [-1024, 1024]), m, bounds)  # 2 bounds for 3 channels, no names
    passed, _ = hu_check(model_to_hu(x, [-1024, 1024]), m, bounds, names=NAMES)
    assert passed.all()


def test_regenerate_until_pass():
    x_real, m_real = _ct(30, 0)
    bounds = organ_hu_bounds(model_to_hu(x_real, [-1024, 1024]), m_real, NAMES)
    x_good, masks = _ct(6, 5)
    x_shift, _ = _ct(6, 5, shift_liver=500.0)
    bad_first = torch.tensor([False, True, False, True, True, False])
    calls: list[tuple[list[int], int]] = []

    def generate(idx: torch.Tensor, attempt: int) -> torch.Tensor:
        calls.append((idx.tolist(), attempt))
        out = x_good[idx].clone()
        if attempt == 0:
            out[bad_first[idx]] = x_shift[idx][bad_first[idx]]
        return out

    def check(images: torch.Tensor, idx: torch.Tensor):
        return hu_check(model_to_hu(images, [-1024, 1024]), masks[idx], bounds, names=NAMES)

    images, passed, tries, rate = regenerate_until_pass(generate, check, 6, max_tries=3)
    assert rate == 1.0 and passed.all()
    assert tries.tolist() == [1, 2, 1, 2, 2, 1]
    assert calls == [([0, 1, 2, 3, 4, 5], 0), ([1, 3, 4], 1)]
    assert torch.equal(images, x_good)

    # never fixed: max_tries attempts each for the failures, rate reflects them
    def never(idx: torch.Tensor, attempt: int) -> torch.Tensor:
        out = x_good[idx].clone()
        out[bad_first[idx]] = x_shift[idx][bad_first[idx]]
        return out

    _, passed2, tries2, rate2 = regenerate_until_pass(never, check, 6, max_tries=3)
    assert tries2.tolist() == [1, 3, 1, 3, 3, 1]
    assert rate2 == pytest.approx(0.5) and passed2.tolist() == (~bad_first).tolist()


def test_reference_bounds_stream_the_shards_and_equal_the_bounds_of_all_slices(tmp_path):
    """Sampling's HU-check bounds come from the reference's per-slice organ medians, read shard by shard:
    the same bounds as from every reference slice at once; a reference that keeps nothing is an error."""
    from conftest import ct_slice_shard

    from medsynth.generator.quality import reference_bounds
    from medsynth.io.trainsets import load_slices

    names = ["soft", "lung", "bone", "contrast", "empty"]
    shards = [*ct_slice_shard(tmp_path / "a", names, n=14, size=32), *ct_slice_shard(tmp_path / "b", names, n=9, size=32)]
    qc = {"method": "union", "k": 3.0, "percentiles": [5.0, 95.0]}
    bounds, n = reference_bounds(shards, {"split": ["train"]}, (-1024, 1024), qc)
    _, images, masks, _ = load_slices(shards, {"split": ["train"]})
    expected = organ_hu_bounds(model_to_hu(images, (-1024.0, 1024.0)), masks > 0, names, method="union", k=3.0,
                               percentiles=(5.0, 95.0))
    assert n == len(images) == 20 and bounds == expected and set(bounds) == {"soft", "lung", "bone", "contrast"}
    with pytest.raises(ValueError, match="keeps no slice"):
        reference_bounds(shards, {"split": ["nothing"]}, (-1024, 1024), qc)
