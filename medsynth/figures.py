"""Figures of the preprocessing stages: registration overlays and mask overlays (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medsynth.fsutil import atomic_path  # noqa: E402
from medsynth.preprocess.intensity import hu_window  # noqa: E402


def display(volume: np.ndarray, modality: str, window: tuple[float, float]) -> np.ndarray:
    """Volume scaled to [0, 1] for display: a HU window for CT, 1st-99th percentile for MR."""
    if modality == "CT":
        return hu_window(volume, *window)
    lo, hi = np.percentile(volume, [1, 99])
    return np.clip((volume - lo) / max(hi - lo, 1e-6), 0, 1)


def radiological(plane: np.ndarray) -> np.ndarray:
    """A plane of a canonical (RAS) volume as radiologists view it: anterior/superior up, patient's right on the left."""
    return plane.T[::-1, ::-1]


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal planes of a canonical (RAS) volume through ``centre``, for imshow."""
    x, y, z = centre
    return [radiological(volume[:, :, z]), radiological(volume[:, y, :]), radiological(volume[x, :, :])]


def registration_overlay(rows: list[dict], path: str | Path) -> Path:
    """One row per case: template (grey) with the registered case (magenta) in three planes.

    ``rows``: dicts with ``case_id``, ``modality``, ``template`` and ``image`` (display arrays in [0, 1]).
    """
    if not rows:  # a study of 2D pictures only: nothing is registered
        fig, ax = plt.subplots(figsize=(6, 1))
        ax.text(0.5, 0.5, "no registered volumes (2D pictures are not registered)", ha="center", va="center")
        ax.set_axis_off()
        return save_figure(fig, path)
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        centre = tuple(int(n) // 2 for n in row["template"].shape)
        for c, (t, m) in enumerate(zip(_planes(row["template"], centre), _planes(row["image"], centre))):
            rgb = np.stack([np.maximum(t, m), t, np.maximum(t, m)], axis=-1)  # magenta where the case is brighter
            axes[r, c].imshow(rgb, interpolation="nearest")
            axes[r, c].set_axis_off()
        axes[r, 0].set_title(f"{row['case_id']} ({row['modality']}) over template", fontsize=8, loc="left")
    return save_figure(fig, path)


def mask_overlay(rows: list[dict], names: list[str], path: str | Path) -> Path:
    """One panel per case: the axial slice with the most mask voxels, channels as coloured contours/fills.

    ``rows``: dicts with ``case_id``, ``image`` (display array X,Y,Z) and ``masks`` (X,Y,Z,C binary).
    """
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4.4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        z = int(np.argmax(row["masks"].sum(axis=(0, 1, 3)))) if row["masks"].size else row["image"].shape[2] // 2
        ax.imshow(radiological(row["image"][:, :, z]), cmap="gray", interpolation="nearest")
        for c, name in enumerate(names):
            plane = radiological(row["masks"][:, :, z, c])
            if plane.any():
                overlay = np.zeros((*plane.shape, 4))
                overlay[plane > 0] = (*colours(c % 10)[:3], 0.45)
                ax.imshow(overlay, interpolation="nearest")
                ax.plot([], [], color=colours(c % 10), label=name, linewidth=6)
        ax.set_title(f"{row['case_id']} z={z}", fontsize=8)
        ax.legend(loc="lower right", fontsize=6, framealpha=0.6)
        ax.set_axis_off()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
