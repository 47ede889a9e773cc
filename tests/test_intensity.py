"""HU clipping/scaling, radiology windows and MR percentile normalisation, with their inverses."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.preprocess.intensity import (PercentileScale, denormalise, hu_to_unit, hu_window, normalise, unit_to_hu,
                                           unit_window)

WINDOWS = {"lung": (-600, 1500), "vessel": (100, 700), "soft_tissue": (50, 350), "bone": (300, 2000)}


@pytest.mark.parametrize("name", WINDOWS)
def test_window_edges_map_to_range_ends(name):
    level, width = WINDOWS[name]
    lo, hi = level - width / 2, level + width / 2
    out = hu_window(np.array([lo - 100, lo, level, hi, hi + 100]), level, width)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_hu_scaling_edges_and_inverse(ct_small):
    np.testing.assert_allclose(hu_to_unit(np.array([-2000, -1024, 0, 1024, 3000])), [-1, -1, 0, 1, 1], atol=1e-6)
    hu = np.asarray(ct_small.dataobj).astype(np.float32)
    back = unit_to_hu(hu_to_unit(hu))
    inside = (hu >= -1024) & (hu <= 1024)
    np.testing.assert_allclose(back[inside], hu[inside], atol=1e-3)
    assert back.max() <= 1024 and back.min() >= -1024


def test_window_of_model_units_equals_window_of_hu():
    hu = np.linspace(-1024, 1024, 101, dtype=np.float32)
    np.testing.assert_allclose(unit_window(hu_to_unit(hu), 50, 350), hu_window(hu, 50, 350), atol=1e-5)


def test_mr_percentile_normalisation_round_trips(mr_lps):
    data = np.asarray(mr_lps.dataobj).astype(np.float32)
    x, params = normalise(data, "MR", {"mr_percentiles": [0.0, 99.5]})
    assert x.min() == -1.0 and x.max() == 1.0
    inside = data <= params["high"]
    np.testing.assert_allclose(denormalise(x, params)[inside], data[inside], rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="empty range"):
        PercentileScale.fit(np.ones(10))


def test_ct_normalise_records_its_inverse():
    x, params = normalise(np.array([-1024.0, 0.0, 1024.0]), "CT", {"ct_hu_range": [-1000, 1000]})
    np.testing.assert_allclose(denormalise(x, params), [-1000, 0, 1000], atol=1e-3)
