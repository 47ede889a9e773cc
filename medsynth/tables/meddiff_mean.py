"""MedDiff-FT's one published number, "+1.0 % mean Dice over five datasets", from the five benchmark studies.

Each benchmark is its own study (``meddiff_ft`` = ISIC 2018, ``meddiff_ft_<benchmark>`` the other four: one
generator per dataset, as the paper fine-tunes one per dataset), so the mean is a table over other studies'
outputs: each study's ``tables/meddiff_ft.csv``, named in config ``tables.meddiff_benchmarks``. It is built on
request only (``snakemake results/<study>/tables/meddiff_ft_mean.csv`` once the five studies have run), never
by default: a missing study's table is then snakemake's missing-input error naming it.

One row per benchmark (its real-only mDSC, the full pipeline's and the gain in Dice points with the paired
bootstrap interval of its own table) and a last row with the mean gain over the benchmarks beside the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from medsynth.names import parse_setting

from .paper import load_reported, reported

__all__ = ["GAIN", "benchmark_tables", "meddiff_mean"]

#: the gain column of the per-study table (medsynth.tables.builders.meddiff_ft)
GAIN = "gain over real (points)"
_DICE = "mDSC (%)"


def benchmark_tables(results: str | Path, benchmarks: list[str]) -> dict[str, str]:
    """Study name -> its ``tables/meddiff_ft.csv`` (``results``: this study's results folder; the others lie
    beside it, under the same results_dir)."""
    root = Path(results).parent
    return {name: str(root / name / "tables" / "meddiff_ft.csv") for name in benchmarks}


def _cell(row: pd.Series, column: str):
    value = row.get(column)
    return None if value is None or (isinstance(value, float) and value != value) else value


def meddiff_mean(tables: Mapping[str, str | Path], model: str, paper_dir: str | Path) -> pd.DataFrame:
    """The benchmarks' rows and their mean gain (module docstring). ``model``: the MedDiff-FT model whose
    ``real_synth_mgf-<model>`` row is the full pipeline (config ``tables.meddiff_model``); a table without that
    row or without ``real`` is a ValueError naming the study."""
    summary = load_reported(paper_dir, "meddiff_ft_summary")
    rows, gains = [], []
    for study, path in tables.items():
        table = pd.read_csv(path)
        kinds = {parse_setting(str(s))[1:]: i for i, s in enumerate(table["setting"])}
        full, real = kinds.get(("real_synth_mgf", model)), kinds.get(("real", None))
        if full is None or real is None:
            raise ValueError(f"{path} (study {study}): needs the rows real and real_synth_mgf-{model} "
                             f"(it has {list(table['setting'])})")
        gain = _cell(table.iloc[full], GAIN)
        if isinstance(gain, (int, float)):
            gains.append(float(gain))
        rows.append({"benchmark study": study, "real only mDSC (%)": _cell(table.iloc[real], _DICE),
                     "full pipeline mDSC (%)": _cell(table.iloc[full], _DICE), "Dice gain (points)": gain,
                     "Dice gain CI low": _cell(table.iloc[full], f"{GAIN} CI low"),
                     "Dice gain CI high": _cell(table.iloc[full], f"{GAIN} CI high"),
                     "paper mean Dice gain (%)": ""})
    mean = sum(gains) / len(gains) if gains and len(gains) == len(rows) else (
        f"not computed: {len(rows) - len(gains)} of {len(rows)} benchmarks have no gain")
    rows.append({"benchmark study": f"mean over {len(rows)}", "real only mDSC (%)": "",
                 "full pipeline mDSC (%)": "", "Dice gain (points)": mean, "Dice gain CI low": "",
                 "Dice gain CI high": "",
                 "paper mean Dice gain (%)": reported(summary, "value", item="mean_dice_gain_over_5_datasets_percent")})
    return pd.DataFrame(rows)
