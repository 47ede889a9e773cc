"""MedDiff-FT's mean Dice gain over its benchmark studies (table meddiff_ft_mean): built from each study's
meddiff_ft table, on request only. Values by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from medsynth.study import Study
from medsynth.tables.meddiff_mean import benchmark_tables, meddiff_mean
from medsynth.tables.registry import TABLES, built_tables, table_names

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper_reported"


def _study_table(path: Path, real: float, full: float, low: float, high: float) -> Path:
    pd.DataFrame([{"setting": "real", "mDSC (%)": real, "gain over real (points)": ""},
                  {"setting": "real_synth-meddiff_ft", "mDSC (%)": real + 0.5, "gain over real (points)": 0.5},
                  {"setting": "real_synth_mgf-meddiff_ft", "mDSC (%)": full, "gain over real (points)": full - real,
                   "gain over real (points) CI low": low, "gain over real (points) CI high": high}]).to_csv(path, index=False)
    return path


def test_the_mean_of_the_benchmarks_full_pipeline_gains(tmp_path):
    tables = {"isic2018": _study_table(tmp_path / "a.csv", 80.0, 82.0, 1.0, 3.0),
              "ph2": _study_table(tmp_path / "b.csv", 90.0, 89.0, -2.0, 0.5)}
    table = meddiff_mean(tables, "meddiff_ft", PAPER)
    assert list(table["benchmark study"]) == ["isic2018", "ph2", "mean over 2"]
    assert table["Dice gain (points)"].tolist() == pytest.approx([2.0, -1.0, 0.5])  # (2 - 1) / 2
    assert table["Dice gain CI low"].tolist()[:2] == [1.0, -2.0]
    assert table["paper mean Dice gain (%)"].iloc[-1] == 1.0
    with pytest.raises(ValueError, match="real_synth_mgf-other"):
        meddiff_mean(tables, "other", PAPER)


def test_the_benchmarks_lie_beside_the_study_and_the_table_is_built_on_request_only():
    assert benchmark_tables("results/meddiff_ft", ["meddiff_ft", "meddiff_ft_ph2"]) == {
        "meddiff_ft": "results/meddiff_ft/tables/meddiff_ft.csv",
        "meddiff_ft_ph2": "results/meddiff_ft_ph2/tables/meddiff_ft.csv"}
    assert TABLES["meddiff_ft_mean"].on_request

    def study(build, benchmarks):
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        config["tables"] = {"build": build, "meddiff_benchmarks": benchmarks}
        validate(config, str(REPO / "config" / "schema.yaml"))
        return Study(config, REPO)

    assert "meddiff_ft_mean" not in built_tables(study(["meddiff"], ["meddiff_ft"]))
    assert "meddiff_ft_mean" not in built_tables(study(["all"], ["meddiff_ft"]))
    assert "meddiff_ft_mean" in built_tables(study(["meddiff_ft_mean"], ["meddiff_ft"]))
    assert "meddiff_ft_mean" not in table_names(study(["all"], []))  # no benchmarks: no such table
