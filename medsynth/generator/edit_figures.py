"""The edit figures of the report: counterfactual_grid.png (ViCTr Fig. 3 / 8) and progressive_grid.png
(MedSyn2 Fig. 5), sampled for a few real conditions through :func:`medsynth.generator.sampling.sample_condition_set`
with an ``edit`` / ``progressive`` condition set (:mod:`medsynth.generator.edits`)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["OPTION_KEYS", "counterfactual_figure", "progressive_figure"]

#: condition-set keys that are options, not index columns
OPTION_KEYS = ("stochastic_masks", "inpaint", "edit", "progressive")


def _chosen(shards: Sequence[str], select: Mapping, count: int):
    """The figure's real conditions: ``(select narrowed to them, [(case, slice)], real, masks, names, modality)``."""
    from medsynth.evaluation_figures import pick_conditions
    from medsynth.io.trainsets import load_rows, read_index, select_rows

    base = {k: v for k, v in select.items() if k not in OPTION_KEYS}
    index = read_index(shards)
    rows = select_rows(index, base)
    if not len(rows):
        raise ValueError(f"the figure's condition set {base} keeps no slice")
    _, real, masks, names = load_rows(shards, rows, index)
    chosen = pick_conditions(masks > 0, count)
    picked = index.iloc[rows[chosen]]
    pairs = list(zip(picked["case_id"].astype(str), picked["slice"].astype(str)))
    narrowed = {**base, "case_id": sorted({c for c, _ in pairs}), "slice": sorted({z for _, z in pairs})}
    return narrowed, pairs, real[chosen], masks[chosen] > 0, list(names), str(picked["modality"].iloc[0])


def _rows_of(index: pd.DataFrame, pairs: Sequence[tuple[str, str]], case: str = "case_id",
             slice_: str = "slice") -> list[int]:
    keys = list(zip(index[case].astype(str), index[slice_].astype(str)))
    return [keys.index(p) for p in pairs]


def _sample(args: Sequence, gen_cfg, model_cfg, sampling_cfg, run, select, tmp: Path, name: str, text_encoder):
    from medsynth.generator.sampling import sample_condition_set
    from medsynth.io.generated import load_generated

    outs = [tmp / f"{name}.{ext}" for ext in ("safetensors", "csv", "json")]
    sample_condition_set(*args, *outs, gen_cfg, model_cfg, sampling_cfg, run, select, text_encoder=text_encoder)
    images, masks, _ = load_generated(outs[0])
    return images, masks > 0, pd.read_csv(outs[1], dtype={"case_id": str, "source_case": str})


def counterfactual_figure(shards: Sequence[str], vae_dir, stats_path, model_dir, init_dir, gen_cfg: Mapping,
                          model_cfg: Mapping, sampling_cfg: Mapping, select: Mapping, cfg: Mapping,
                          intensity_cfg: Mapping, window_name: str, count: int, path: str | Path, *,
                          text_encoder=None) -> Path:
    """counterfactual_grid.png: ``count`` real slices of ``select`` edited to each of ``cfg["severities"]``
    (config ``figures.counterfactual``) at ``cfg["strength"]``."""
    from medsynth.evaluation_figures import counterfactual_grid, display_window

    narrowed, pairs, real, masks, names, modality = _chosen(shards, select, count)
    args = (shards, vae_dir, stats_path, model_dir, init_dir)
    edits, shown = {}, masks
    with tempfile.TemporaryDirectory() as tmp:
        for k, severity in enumerate(cfg["severities"]):
            edit = {"strength": float(cfg["strength"]), "severity": severity,
                    "add_channels": cfg.get("add_channels"), "remove_channels": cfg.get("remove_channels")}
            images, new_masks, index = _sample(args, gen_cfg, model_cfg, sampling_cfg, cfg["run"],
                                               {**narrowed, "edit": edit}, Path(tmp), f"s{k}", text_encoder)
            order = _rows_of(index, pairs, "source_case", "source_slice")
            edits[f"{severity} (s={float(cfg['strength']):g})"] = images[order]
            shown = new_masks[order]  # the edited condition (add / remove channels)
    return counterfactual_grid(real, shown, edits, modality, intensity_cfg["ct_hu_range"],
                               display_window(intensity_cfg, window_name), names, path)


def progressive_figure(shards: Sequence[str], vae_dir, stats_path, model_dir, init_dir, gen_cfg: Mapping,
                       model_cfg: Mapping, sampling_cfg: Mapping, select: Mapping, cfg: Mapping,
                       intensity_cfg: Mapping, window_name: str, count: int, path: str | Path, *,
                       text_encoder=None) -> Path:
    """progressive_grid.png: ``count`` conditions of ``select`` synthesised stage by stage (config
    ``figures.progressive``: ``stages``, ``strength``, ``run``)."""
    from medsynth.evaluation_figures import display_window, progressive_grid

    stages = [list(s) for s in cfg["stages"]]
    if not stages:
        raise ValueError("figures.progressive.stages is empty: name the condition channels of each stage")
    narrowed, pairs, real, _, names, modality = _chosen(shards, select, count)
    progressive = {"strength": float(cfg["strength"]), "stages": stages}
    with tempfile.TemporaryDirectory() as tmp:
        images, masks, index = _sample((shards, vae_dir, stats_path, model_dir, init_dir), gen_cfg, model_cfg,
                                       sampling_cfg, cfg["run"], {**narrowed, "progressive": progressive},
                                       Path(tmp), "progressive", text_encoder)
    per_stage, last = [], None
    for k in range(1, len(stages) + 1):
        part = index[index["stage"] == k]
        order = part.index.to_numpy()[_rows_of(part, pairs)]
        per_stage.append(images[order])
        last = masks[order]
    labels = [f"stage {k + 1}: " + ("+".join(s) if k == 0 else "+" + "+".join(c for c in s if c not in stages[k - 1]))
              for k, s in enumerate(stages)]
    return progressive_grid(per_stage, np.asarray(last), labels, modality, intensity_cfg["ct_hu_range"],
                            display_window(intensity_cfg, window_name), names, real, path)
