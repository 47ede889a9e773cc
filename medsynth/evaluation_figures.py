"""Figures of the evaluation stages: sample grids, the FD-vs-NFE curve, the training loss curves and the
violins of the downstream segmenters' per-slice scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medsynth.figures import save_figure, plt, radiological

__all__ = ["sample_grid", "sample_grid_from_files", "fd_vs_nfe", "loss_curves", "pick_conditions",
           "counterfactual_grid", "progressive_grid", "display_window", "downstream_violins"]


def _show(x: np.ndarray, modality: str, hu_range: Sequence[float], window: Sequence[float]) -> np.ndarray:
    """A [-1, 1] slice for display: the CT window in HU, min-max for MR."""
    if modality == "CT":
        lo, hi = float(hu_range[0]), float(hu_range[1])
        hu = (x + 1.0) / 2.0 * (hi - lo) + lo
        level, width = float(window[0]), float(window[1])
        return np.clip((hu - (level - width / 2)) / width, 0, 1)
    return np.clip((x + 1.0) / 2.0, 0, 1)


def pick_conditions(masks: np.ndarray, count: int) -> list[int]:
    """``count`` condition indices spread over the set, favouring slices with large masks."""
    area = masks.reshape(len(masks), -1).sum(axis=1)
    order = np.argsort(-area, kind="stable")[: max(count * 4, count)]
    chosen = sorted(order[np.linspace(0, len(order) - 1, num=min(count, len(order))).astype(int)])
    return [int(i) for i in chosen]


def _mask_rgb(masks: np.ndarray) -> np.ndarray:
    colours = plt.get_cmap("tab10")
    rgb = np.zeros((*masks.shape[1:], 3))
    for c in range(masks.shape[0]):
        rgb[masks[c] > 0] = colours(c % 10)[:3]
    return rgb


def sample_grid(real: np.ndarray, masks: np.ndarray, generated: Mapping[str, np.ndarray], modality: str,
                hu_range: Sequence[float], window: Sequence[float], names: Sequence[str], rows: Sequence[int],
                path: str | Path) -> Path:
    """Rows = conditions; columns = mask | real | one generated image per (model, sampler) label.

    Slices are shown as radiologists view them (the 2D slices keep the volumes' RAS x/y order).
    """
    labels = list(generated)
    ncols = 2 + len(labels)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols, 1.9 * len(rows) + 0.4), squeeze=False)
    for r, i in enumerate(rows):
        panels = [_mask_rgb(masks[i]), _show(real[i, 0], modality, hu_range, window)]
        panels += [_show(generated[k][i, 0], modality, hu_range, window) for k in labels]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            shown = radiological(panel) if panel.ndim == 2 else np.transpose(panel, (1, 0, 2))[::-1, ::-1]
            ax.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title((["mask", "real"] + labels)[c], fontsize=7)
    colours = plt.get_cmap("tab10")
    handles = [plt.Line2D([], [], color=colours(c % 10), linewidth=5, label=n) for c, n in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(names), fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.08)
    return save_figure(fig, path)


def fd_vs_nfe(metrics: Sequence[Mapping], path: str | Path) -> Path:
    """FD (self-trained encoder) against NFE, one line per sampler (MAISI-v2 steps ablation, ViCTr few-step);
    the adaptive dopri5 is its own point (``dopri5-auto``) beside the fixed-step ``dopri5`` line."""
    rows = [{"sampler": _line_label(m["sampling"]), "nfe": m["sampling"]["nfe"], "fd": m["fd_self"]["value"],
             "model": m["model"]} for m in metrics if m.get("fd_self", {}).get("value") is not None]
    table = pd.DataFrame(rows).sort_values(["sampler", "nfe"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for sampler, part in table.groupby("sampler", sort=True):
        style = "o" if len(part) == 1 else "o-"
        ax.plot(part["nfe"], part["fd"], style, label=sampler)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (solver evaluations of the guided field)")
    extractor = metrics[0]["fd_self"].get("extractor", "") if metrics else ""
    ax.set_ylabel("Frechet distance")
    models = sorted(set(table["model"])) if len(table) else []
    ax.set_title(f"FD vs NFE - {', '.join(models)}\n({extractor})", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _line_label(sampling: Mapping) -> str:
    """The sampler of a run summary, ``dopri5-auto`` for the adaptive dopri5 (no step count)."""
    adaptive = sampling["sampler"] == "dopri5" and sampling.get("steps") is None
    return "dopri5-auto" if adaptive else sampling["sampler"]


def loss_curves(curves: Mapping[str, str | Path], path: str | Path, smooth: int = 10) -> Path:
    """Training loss of each stage (``label -> loss_curve.csv``), running mean over ``smooth`` steps. A curve
    without rows (a stage run with ``steps: 0``, e.g. a frozen pretrained VAE) is absent, named in a note."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    absent = []
    for label, csv in curves.items():
        curve = pd.read_csv(csv)
        if curve.empty:
            absent.append(label)
            continue
        column = "loss" if "loss" in curve else ("total" if "total" in curve else curve.columns[-1])
        y = curve[column].rolling(smooth, min_periods=1).mean()
        x = curve["step"] if "step" in curve else np.arange(len(curve))
        ax.plot(x, y / max(float(y.iloc[0]), 1e-12), label=label, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss / first value (running mean of {smooth})")
    if ax.lines:
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if absent:
        ax.text(0.01, 0.01, f"not trained (no optimizer steps, e.g. a frozen VAE): {', '.join(absent)}",
                transform=ax.transAxes, fontsize=7, va="bottom")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def sample_grid_from_files(shards: Sequence[str], select: Mapping, generated: Mapping[str, str | Path],
                           intensity_cfg: Mapping, window_name: str, count: int, path: str | Path) -> Path:
    """:func:`sample_grid` of sampled sets (``label -> .safetensors``) beside the real slices of ``select``."""
    from medsynth.io.trainsets import load_rows, read_index, select_rows
    from medsynth.io.generated import load_generated

    index = read_index(shards)
    rows = select_rows(index, select)
    _, real, masks, names = load_rows(shards, rows, index)  # the tensors of the selected slices only
    cond = masks > 0
    sets = {label: load_generated(p)[0] for label, p in generated.items()}
    modality = str(index.iloc[rows[0]]["modality"]) if len(rows) else "CT"
    window = display_window(intensity_cfg, window_name)
    return sample_grid(real, cond, sets, modality, intensity_cfg["ct_hu_range"], window, names,
                       pick_conditions(cond, count), path)


def display_window(intensity_cfg: Mapping, window_name: str) -> Sequence[float]:
    """The CT display window ``figures.ct_window`` names (a key of ``intensity.windows``)."""
    windows = intensity_cfg["windows"]
    if window_name not in windows:
        raise ValueError(f"figures.ct_window = {window_name!r} is not a window of intensity.windows ({', '.join(windows)})")
    return windows[window_name]


def counterfactual_grid(real: np.ndarray, masks: np.ndarray, edits: Mapping[str, np.ndarray], modality: str,
                        hu_range: Sequence[float], window: Sequence[float], names: Sequence[str],
                        path: str | Path) -> Path:
    """ViCTr Fig. 3 / 8: rows = real slices; columns = mask | real | its counterfactual at each severity
    (``edits``: column label -> ``(N, 1, H, W)`` in [-1, 1], row ``i`` the edit of ``real[i]``)."""
    return sample_grid(real, masks, edits, modality, hu_range, window, names, list(range(len(real))), path)


def progressive_grid(stages: Sequence[np.ndarray], masks: np.ndarray, labels: Sequence[str], modality: str,
                     hu_range: Sequence[float], window: Sequence[float], names: Sequence[str],
                     real: np.ndarray, path: str | Path) -> Path:
    """MedSyn2 Fig. 5: rows = conditions; columns = the last stage's mask | the real slice | each stage's
    image (``stages[k]`` ``(N, 1, H, W)``, titled ``labels[k]``)."""
    if len(stages) != len(labels):
        raise ValueError(f"{len(stages)} stages but {len(labels)} labels")
    return sample_grid(real, masks, dict(zip(labels, stages)), modality, hu_range, window, names,
                       list(range(len(real))), path)


def downstream_violins(evaluations: Mapping[str, Mapping], path: str | Path, metric: str = "dice") -> Path:
    """ViCTr Fig. 7: per structure, one violin per downstream setting of its per-slice ``metric`` on the test
    slices whose reference holds the structure (``per_sample`` of each evaluation record). A structure no
    test slice holds has no violin; a record without per-slice values is an error naming the setting."""
    values: dict[str, dict[str, list[float]]] = {}
    for setting, record in evaluations.items():
        per = (record.get("per_sample") or {}).get(metric)
        if per is None:
            raise ValueError(f"downstream setting {setting!r}: its evaluation has no per-slice {metric!r} values")
        for channel, column in per.items():
            values.setdefault(channel, {})[setting] = [float(v) for v in column if v is not None]
    channels = [c for c in values if any(values[c].values())]
    settings = list(evaluations)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(channels) * max(1, len(settings)) / 2), 3.8))
    width = 0.8 / max(1, len(settings))
    colours = plt.get_cmap("tab10")
    for k, setting in enumerate(settings):
        spots = [(c, values[channel].get(setting, [])) for c, channel in enumerate(channels)]
        spots = [(c, v) for c, v in spots if v]
        if not spots:
            continue
        where = [c - 0.4 + width * (k + 0.5) for c, _ in spots]
        parts = ax.violinplot([v for _, v in spots], positions=where, widths=width * 0.9, showmedians=True)
        for body in parts["bodies"]:
            body.set_facecolor(colours(k % 10))
            body.set_alpha(0.6)
        ax.plot([], [], color=colours(k % 10), linewidth=6, alpha=0.6, label=setting)
    ax.set_xticks(range(len(channels)), channels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{metric} per test slice holding the structure")
    if metric in ("dice", "jaccard"):
        ax.set_ylim(-0.02, 1.02)
    ax.set_title("Downstream segmentation per setting (ViCTr Fig. 7)", fontsize=8)
    if not channels:
        ax.text(0.5, 0.5, "no test slice holds any structure", transform=ax.transAxes, ha="center")
    else:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)
