"""ViCTr Fig. 7: the per-slice Dice behind a downstream record and its violins per structure and setting."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medsynth.evaluation.downstream_run import per_sample
from medsynth.evaluation_figures import downstream_violins


def test_per_sample_keeps_each_test_slice_with_null_where_the_reference_lacks_the_channel():
    index = pd.DataFrame({"case_id": ["a", "a", "b"], "slice": [3, 4, 9]})
    values = {"dice": np.array([[0.5, math.nan], [1.0, 0.25], [math.nan, 0.0]])}
    record = per_sample(index, values, ["liver", "spleen"])
    assert record == {"case_id": ["a", "a", "b"], "slice": [3, 4, 9],
                      "dice": {"liver": [0.5, 1.0, None], "spleen": [None, 0.25, 0.0]}}


def test_violins_per_structure_and_setting(tmp_path):
    records = {"real": {"per_sample": {"dice": {"liver": [0.5, 0.9, None], "spleen": [None, None, None]}}},
               "real_synth-victr": {"per_sample": {"dice": {"liver": [0.7, 0.8, 0.95], "spleen": [None, 0.4, 0.6]}}}}
    out = downstream_violins(records, tmp_path / "violins.png")
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="'real'.*no per-slice 'dice'"):
        downstream_violins({"real": {"mdsc": 0.5}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
