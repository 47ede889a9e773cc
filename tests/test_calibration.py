"""Calibration rows: the degradations are what they say, and the table puts references before models."""

from __future__ import annotations

import numpy as np
import pytest

from medsynth.evaluation.calibration import degrade
from medsynth.tables.calibration import calibration_table
from medsynth.tables.render import Measured


def _images(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, 0.5, (n, 1, size, size)), -1, 1).astype(np.float32)


def test_each_degradation_does_what_its_name_says():
    x = _images()
    rng = np.random.default_rng(1)
    blurred = degrade(x, {"kind": "blur", "sigma": 3}, rng)
    assert blurred.shape == x.shape and blurred.std() < 0.3 * x.std()  # white noise loses most of its variance
    assert abs(blurred.mean() - x.mean()) < 0.01  # a blur keeps the mean
    noisy = degrade(x * 0, {"kind": "noise", "sigma": 0.2}, rng)
    assert noisy.std() == pytest.approx(0.2, rel=0.05)
    assert np.array_equal(degrade(x, {"kind": "flip"}, rng), x[:, :, ::-1, :])
    uniform = degrade(x, {"kind": "uniform"}, rng)
    assert uniform.min() >= -1 and uniform.max() <= 1 and abs(uniform.std() - 2 / np.sqrt(12)) < 0.02
    with pytest.raises(ValueError, match="unknown kind 'sharpen'"):
        degrade(x, {"kind": "sharpen"}, rng)


def test_the_table_has_reference_rows_then_model_rows_with_intervals():
    boot = {"resamples": 10, "level": 0.95, "seed": 0, "unit": "patient (5 patients)", "units_digest": "d"}
    calibration = {"extractor": "enc", "rows": [
        {"name": "real", "what": "itself", "n": 8, "dice": 0.5},
        {"name": "blur_3px", "what": "blurred", "n": 8, "fd_self": 0.06, "dice": 0.4, "ssim": 0.5, "psnr": 20.0}],
        "estimates": {"real/dice": {"value": 0.5, "low": 0.4, "high": 0.6},
                      "blur_3px/fd_self": {"value": 0.06, "low": 0.05, "high": 0.07}},
        "bootstrap": boot}
    model = {"run": "euler-30", "n_generated": 8, "fd_self": {"value": 0.09}, "pairs": {"ssim": 0.2, "psnr": 15.0},
             "mask_fidelity": {"mean_generated_vs_gt": {"dice": 0.3}},
             "estimates": {"fd_self": {"value": 0.09, "low": 0.08, "high": 0.1}}, "bootstrap": boot}
    table = calibration_table(calibration, {"victr": model})
    assert list(table["kind"]) == ["reference", "reference", "model"]
    assert list(table["row"]) == ["real", "blur_3px", "victr (euler-30)"]
    real, blur, victr = (table.iloc[i] for i in range(3))
    assert isinstance(real["re-segmentation Dice (%)"], Measured) and real["re-segmentation Dice (%)"].low == 40.0
    assert real["FD (enc)"] == ""  # the held-out slices against themselves: no FD row
    assert blur["FD (enc)"] == Measured(0.06, 0.05, 0.07, blur["FD (enc)"].how)
    assert blur["re-segmentation Dice (%)"] == 40.0  # no interval in the record: the value alone
    assert victr["FD (enc)"].high == 0.1 and victr["SSIM"] == 0.2
