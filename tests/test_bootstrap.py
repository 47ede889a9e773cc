"""Bootstrap intervals (medsynth.stats): known answers, coverage, and the patient / block units."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsynth.stats import BootstrapSettings, bootstrap, bootstrap_means, percentile_interval, resampling_units


def _settings(resamples=400, min_units=5, block_slices=8, seed=3):
    return BootstrapSettings(resamples=resamples, level=0.95, seed=seed, min_units=min_units, block_slices=block_slices)


def _index(patients, slices_each):
    return pd.DataFrame({"patient_id": np.repeat([f"p{i}" for i in range(patients)], slices_each),
                         "case_id": np.repeat([f"c{i}" for i in range(patients)], slices_each),
                         "slice": np.tile(np.arange(slices_each), patients)})


def test_percentile_interval_of_known_replicates():
    reps = np.arange(1, 1001, dtype=float)  # quantiles of 1..1000 at 2.5 % and 97.5 %
    low, high = percentile_interval(reps, 0.95)
    assert low == pytest.approx(np.quantile(reps, 0.025)) and high == pytest.approx(np.quantile(reps, 0.975))
    assert low == pytest.approx(25.975) and high == pytest.approx(975.025)
    assert percentile_interval([1.0, None, float("nan"), None], 0.95) == (None, None)  # under half finite


def test_mean_of_a_constant_has_a_zero_width_interval():
    units = resampling_units(_index(6, 4), _settings())
    est = bootstrap_means(np.full(24, 2.5), units.draws(100, 0), 0.95)
    assert (est.value, est.low, est.high) == (2.5, 2.5, 2.5)


def test_coverage_of_the_mean_of_a_known_distribution():
    """95 % intervals of the mean of N(1, 2^2) samples cover 1 in about 95 % of repeated studies."""
    rng = np.random.default_rng(0)
    settings = _settings(resamples=300, min_units=2)
    covered = 0
    trials = 150
    for t in range(trials):
        values = rng.normal(1.0, 2.0, 60)
        units = resampling_units(_index(60, 1), settings)  # one slice per patient: iid units
        est = bootstrap_means(values, units.draws(settings.resamples, t), settings.level)
        covered += est.low <= 1.0 <= est.high
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_patients_not_slices_are_resampled_when_slices_are_correlated():
    """With a strong patient effect, slice-level intervals under-cover; patient-level ones do not."""
    rng = np.random.default_rng(1)
    settings = _settings(resamples=300, min_units=5)
    index = _index(12, 15)
    by_patient = by_slice = 0
    trials = 80
    for t in range(trials):
        values = np.repeat(rng.normal(0.0, 1.0, 12), 15) + rng.normal(0.0, 0.1, 12 * 15)
        patients = resampling_units(index, settings)
        slices = resampling_units(index.assign(patient_id=np.arange(len(index)).astype(str)), settings)
        p = bootstrap_means(values, patients.draws(settings.resamples, t), 0.95)
        s = bootstrap_means(values, slices.draws(settings.resamples, t), 0.95)
        by_patient += p.low <= 0.0 <= p.high
        by_slice += s.low <= 0.0 <= s.high
    assert patients.unit == "patient (12 patients)"
    assert by_patient / trials >= 0.85 and by_slice / trials <= 0.5, (by_patient, by_slice)


def test_few_patients_fall_back_to_blocks_of_consecutive_slices():
    index = _index(1, 20).sample(frac=1.0, random_state=0).reset_index(drop=True)  # rows out of slice order
    units = resampling_units(index, _settings(min_units=5, block_slices=8))
    assert units.n_units == 3 and "blocks of 8 consecutive slices (3 blocks of 1 patient" in units.unit
    for u in range(units.n_units):
        members = sorted(index["slice"].to_numpy()[units.labels == u])
        assert members == list(range(members[0], members[0] + len(members)))
    assert sorted(np.bincount(units.labels)) == [4, 8, 8]


def test_the_same_units_and_seed_give_the_same_resamples_so_runs_pair():
    index = _index(6, 5)
    a, b = resampling_units(index, _settings()), resampling_units(index.copy(), _settings())
    assert a.digest == b.digest
    assert all(np.array_equal(x, y) for x, y in zip(a.draws(20, 7), b.draws(20, 7)))
    assert not all(np.array_equal(x, y) for x, y in zip(a.draws(20, 7), a.draws(20, 8)))
    assert resampling_units(index.iloc[::-1].reset_index(drop=True), _settings()).digest != a.digest  # order
    assert resampling_units(index.assign(patient_id="p0"), _settings()).digest != a.digest  # grouping
    draw = a.draws(1, 0)[0]
    assert len(draw) == 30 and np.all(np.bincount(a.labels[draw], minlength=6) % 5 == 0)  # whole patients


def test_channel_means_skip_empty_channels_like_the_point_value():
    values = np.array([[1.0, np.nan], [0.5, np.nan], [0.0, 1.0]])
    est = bootstrap(lambda rows: float(np.nanmean(values[rows, 0])), 3, [np.array([0, 0, 0])], 0.95)
    assert est.value == pytest.approx(0.5) and est.replicates == (1.0,)
    means = bootstrap_means(values, [np.array([0, 1, 1])], 0.95)
    assert means.value == pytest.approx((0.5 + 1.0) / 2) and means.replicates == (pytest.approx(2 / 3),)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="resamples"):
        BootstrapSettings.from_config({"resamples": 1, "level": 0.95, "seed": 0, "min_units": 5, "block_slices": 8})


def test_one_unit_has_no_interval_rather_than_a_zero_width_one():
    units = resampling_units(_index(1, 4), _settings(min_units=5, block_slices=8))  # 4 slices: one block
    assert units.n_units == 1 and units.draws(100, 0) == []
    est = bootstrap_means(np.arange(4.0), units.draws(100, 0), 0.95)
    assert est.value == 1.5 and (est.low, est.high) == (None, None)


def test_the_vae_reconstruction_table_gets_intervals_per_target():
    import torch

    from medsynth.vae.stage import reconstruction_intervals

    index = _index(6, 3)
    values = {"image": {"ssim": np.linspace(0.5, 0.9, 18), "psnr": np.full(18, 20.0), "l1": np.full(18, 0.1)},
              "masks": {k: torch.ones(18, 2) for k in ("dice", "jaccard", "hd95", "asd")}}
    out = reconstruction_intervals(index, values, ["liver", "lungs"], {"bootstrap": {"resamples": 50}})
    assert out["image"]["psnr_low"] == out["image"]["psnr_high"] == 20.0
    assert out["image"]["ssim_low"] < 0.7 < out["image"]["ssim_high"]
    assert out["liver"]["dice_low"] == 1.0 and "50 resamples of the test patient (6 patients)" in out["lungs"]["interval"]
