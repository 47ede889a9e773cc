"""Fitting slices to a downstream task defined on other data (MedSyn2 Table 5: SemiSeg's GGO).

MedSyn2 trains its Table 5 segmenter on SemiSeg's 8-bit CT pictures and one mask class (ground-glass
opacity), while its generator samples HU slices under every condition channel. Two pure functions bring
the synthetic slices (and the real ones) to that task:

* :func:`task_config`: the downstream section as a task sees it (config ``downstream.tasks.<task>``: its
  keys over the section's);
* :func:`keep_channels`: the label channels the segmenter learns and is scored on (config
  ``downstream.channels``), by name;
* :func:`window_to_unit`: a CT slice in the model's [-1, 1] (``intensity.ct_hu_range``) re-windowed the
  way a picture was exported: clipped to the HU window that filled the picture's 8-bit range, then that
  window mapped to [-1, 1] (the picture's own normalisation of its full range, ``intensity.picture_range``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["keep_channels", "task_config", "window_to_unit"]


def task_config(cfg: Mapping, task: str | None) -> dict:
    """Config ``downstream`` with task ``task``'s keys over the section's (None: the section as it is); an
    unknown task is a ValueError naming the configured ones."""
    cfg = dict(cfg)
    if task is None:
        return cfg
    tasks = cfg.get("tasks") or {}
    if task not in tasks:
        raise ValueError(f"no downstream task {task!r} (downstream.tasks: {sorted(tasks)})")
    return {**cfg, **{k: v for k, v in tasks[task].items() if k != "settings"}}


def keep_channels(masks: np.ndarray, names: Sequence[str], channels: Sequence[str] | None
                  ) -> tuple[np.ndarray, list[str]]:
    """``masks`` (N, C, H, W) reduced to ``channels`` in their order (None: all), with their names; a
    channel not among ``names`` is a ValueError naming those there are."""
    names = [str(n) for n in names]
    if channels is None:
        return masks, names
    missing = [c for c in channels if c not in names]
    if missing:
        raise ValueError(f"downstream.channels {missing} are not condition channels of the slices ({names})")
    if not channels:
        raise ValueError("downstream.channels is empty: name at least one condition channel (or null for all)")
    picks = [names.index(c) for c in channels]
    return masks[:, picks], [names[i] for i in picks]


def window_to_unit(images: np.ndarray, source_range: Sequence[float], window: Sequence[float]) -> np.ndarray:
    """Slices in [-1, 1] over ``source_range`` (HU: ``intensity.ct_hu_range``) re-windowed to ``window``
    (HU, low < high): ``2 (clip(hu, low, high) - low) / (high - low) - 1`` (float32). A window reaching
    beyond the source range keeps only what the source holds (the clipped source saturates first)."""
    lo_s, hi_s = (float(v) for v in source_range)
    lo, hi = (float(v) for v in window)
    if not hi_s > lo_s:
        raise ValueError(f"source range {list(source_range)} must rise")
    if not hi > lo:
        raise ValueError(f"downstream.synthetic_window {list(window)} must rise (low < high, HU)")
    hu = (np.asarray(images, dtype=np.float32) + 1.0) / 2.0 * (hi_s - lo_s) + lo_s
    return (2.0 * (np.clip(hu, lo, hi) - lo) / (hi - lo) - 1.0).astype(np.float32)
