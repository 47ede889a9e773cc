"""Rule ``reader_kit``: the blinded kit folder readers get, and the key kept apart from it.

The kit folder holds ``index.html`` (:mod:`medsynth.readers.page`), ``images/<case>_<window>.png`` and
``images/<case>_mask.png`` (:mod:`medsynth.readers.images`) and ``cases.csv`` (the case ids, nothing
else). The key (``key.csv``, one row per case) says what each case is: real or synthetic, the model and
sampling run of a synthetic case, the source slice (case id, patient, slice) and condition set, the
prompt, the row of the generated set and the draw's seed; with ``readers.pathologies`` also the pathology
each case was drawn for (``pathology``, after ``truth``). Hand out the kit folder only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medsynth.fsutil import atomic_dir, write_csv_atomic
from medsynth.io.generated import load_generated
from medsynth.io.trainsets import load_rows, read_index
from medsynth.readers.draw import draw_by_pathology, draw_cases, kit_id
from medsynth.readers.images import FULL_RANGE, MASK_COLOURS, display_values, write_grey_png, write_mask_png
from medsynth.readers.page import render_page
from medsynth.readers.settings import kit_windows, pathology_channels
from medsynth.settings import section

__all__ = ["KEY_COLUMNS", "PATHOLOGY", "build_kit", "draw_for", "key_columns", "real_slices_of"]

log = logging.getLogger(__name__)

#: columns of ``key.csv`` (a per-pathology draw adds ``pathology`` after ``truth``)
KEY_COLUMNS = ("kit_id", "case_id", "truth", "model", "run", "conditions", "source_case_id", "patient_id",
               "source_slice", "modality", "prompt", "sample", "seed")
PATHOLOGY = "pathology"


def key_columns(key: pd.DataFrame) -> list[str]:
    """The columns of ``key.csv`` in their order: :data:`KEY_COLUMNS`, with ``pathology`` after ``truth`` when
    the key has it (a per-pathology draw)."""
    columns = list(KEY_COLUMNS)
    if PATHOLOGY in key:
        columns.insert(columns.index("truth") + 1, PATHOLOGY)
    return columns


def draw_for(masks: np.ndarray, names: Sequence[str], readers: Mapping) -> pd.DataFrame:
    """The draw config ``readers`` asks for: per pathology (``readers.pathologies``, channels of ``names``)
    or, with none, one draw over every condition (:func:`~medsynth.readers.draw.draw_cases`)."""
    n_real, n_synthetic, seed = int(readers["real"]), int(readers["synthetic"]), int(readers["seed"])
    pathologies = list(readers.get("pathologies") or [])
    if pathologies:
        return draw_by_pathology(masks, pathology_channels(pathologies, names), n_real, n_synthetic, seed)
    return draw_cases(masks, n_real, n_synthetic, seed, bool(readers["require_mask"]))


def _slice_key(case_id, slice_no) -> tuple[str, str]:
    return str(case_id), str(int(float(slice_no)))


def real_slices_of(generated_index: pd.DataFrame, shards: Sequence[str | Path]) -> np.ndarray:
    """The real slices ``(N, 1, H, W)`` in [-1, 1] each row of a generated set was conditioned on (by case and slice);
    only those slices' tensors are read."""
    index = read_index(shards)
    position = {_slice_key(c, s): i for i, (c, s) in enumerate(zip(index["case_id"], index["slice"]))}
    rows = []
    for c, s in zip(generated_index["case_id"], generated_index["slice"]):
        key = _slice_key(c, s)
        if key not in position:
            raise ValueError(f"generated slice of case {key[0]} slice {key[1]} has no real slice in the training-set shards")
        rows.append(position[key])
    return load_rows(shards, np.asarray(rows, dtype=int), index)[1]


def _windows_of(modality: str, windows: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float] | None]:
    return dict(windows) if modality == "CT" else {FULL_RANGE: None}


def build_kit(shards: Sequence[str | Path], generated: str | Path, generated_index: str | Path, readers: Mapping,
              intensity: Mapping, model: str, run: str, kit_dir: str | Path, key_path: str | Path) -> pd.DataFrame:
    """Draw the cases (config ``readers``: ``real``, ``synthetic``, ``seed``, ``require_mask``, ``pathologies``;
    :func:`draw_for`) from the generated set ``generated`` (+ its index CSV) of ``model`` / ``run`` and the
    real slices of ``shards``; write the kit folder ``kit_dir`` (CT windows ``readers.windows`` of
    ``intensity.windows``) and the key ``key_path``. Returns the key."""
    readers, intensity = section("readers", readers), section("intensity", intensity)
    images, masks, names = load_generated(generated)
    if images.ndim != 4:
        raise ValueError(f"{generated}: the reader kit shows 2D slices, got images of shape {images.shape}")
    index = pd.read_csv(generated_index, dtype=str, keep_default_na=False)
    if len(index) != len(images):
        raise ValueError(f"{generated_index}: {len(index)} rows for {len(images)} generated images")
    draw = draw_for(masks, names, readers)
    real = real_slices_of(index.iloc[draw["sample"]], shards)
    if real.shape[1:] != images.shape[1:]:
        raise ValueError(f"real slices {real.shape[1:]} and generated images {images.shape[1:]} differ in size: "
                         "the size alone would tell readers which is which")
    windows = kit_windows(readers["windows"], intensity["windows"])
    rows = index.iloc[draw["sample"]].reset_index(drop=True)
    synthetic = (draw["truth"] == "synthetic").to_numpy()
    key = pd.DataFrame({
        "case_id": draw["case_id"], "truth": draw["truth"],
        "model": np.where(synthetic, model, ""), "run": np.where(synthetic, run, ""),
        "conditions": readers["conditions"], "source_case_id": rows["case_id"],
        "patient_id": rows.get("patient_id", ""), "source_slice": rows["slice"],
        "modality": rows.get("modality", "CT"), "prompt": rows.get("prompt", ""),
        "sample": draw["sample"], "seed": int(readers["seed"])})
    if PATHOLOGY in draw:
        key.insert(key.columns.get_loc("truth") + 1, PATHOLOGY, draw[PATHOLOGY])
    key.insert(0, "kit_id", kit_id(key))
    cases = []
    with atomic_dir(kit_dir) as tmp:
        (tmp / "images").mkdir()
        for i, case in key.iterrows():
            image = (images[case["sample"]] if synthetic[i] else real[i])[0]
            shown = []
            for name, window in _windows_of(case["modality"], windows).items():
                file = f"images/{case['case_id']}_{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}.png"
                write_grey_png(display_values(image, case["modality"], window, intensity["ct_hu_range"]), tmp / file)
                shown.append([name, file])
            write_mask_png(masks[case["sample"]], tmp / f"images/{case['case_id']}_mask.png")
            present = [n for n, m in zip(names, masks[case["sample"]]) if m.any()]
            cases.append({"id": case["case_id"], "prompt": case["prompt"], "images": shown,
                          "mask": f"images/{case['case_id']}_mask.png", "conditions": present})
        data = {"kit_id": key["kit_id"].iloc[0], "title": readers["title"], "display_size": int(readers["display_size"]),
                "windows": {n: list(w) for n, w in windows.items()}, "cases": cases,
                "conditions": [{"name": n, "colour": "#%02x%02x%02x" % MASK_COLOURS[c % len(MASK_COLOURS)]}
                               for c, n in enumerate(names)]}
        (tmp / "index.html").write_text(render_page(data), encoding="utf-8")
        key[["case_id"]].to_csv(tmp / "cases.csv", index=False)
        (tmp / "images").chmod(0o755)
        tmp.chmod(0o755)  # a folder to share: readable by the web server or colleague that shows it
    write_csv_atomic(key[key_columns(key)], key_path)
    log.info("reader kit %s: %d real + %d synthetic cases of %s %s (kit id %s); key %s", kit_dir,
             int((~synthetic).sum()), int(synthetic.sum()), model, run, key["kit_id"].iloc[0], key_path)
    if PATHOLOGY in key:
        per = key.groupby([PATHOLOGY, "truth"]).size().unstack(fill_value=0)
        log.info("cases per pathology (real / synthetic): %s",
                 "; ".join(f"{p} {r.get('real', 0)} / {r.get('synthetic', 0)}" for p, r in per.iterrows()))
    return key
