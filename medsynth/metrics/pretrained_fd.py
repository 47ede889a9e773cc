"""Frechet distances on a pretrained extractor's features, following its recipe (:mod:`.recipes`).

:func:`pretrained_fd` scores 2D slice sets, :func:`pretrained_fd_volumes` volumes (2.5D: the central
slices of each plane, one FD per plane, their mean). The weights file comes from the config
(``metrics.<extractor>_pretrained_path``, a registry reference the workflow resolves to the local
file); when it is not set or not there the value is ``None`` and the status says
``"unavailable: <reason>"``, and no other network's number stands in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medsynth.metrics.extractors import EXTRACTORS, extractor_from_file
from medsynth.metrics.features import register_module_extractor, unregister_module_extractor
from medsynth.metrics.frechet import (
    PLANE_LABELS,
    PLANES,
    central_slices,
    frechet_distance_lowrank,
    frechet_metrics,
    per_plane_windowed_fd,
    per_window_fd,
)
from medsynth.metrics.recipes import FDRecipe, RecipeEncoder, recipe_unit_images

__all__ = ["clip_fd_slices", "clip_fd_volumes", "pretrained_fd", "pretrained_fd_volumes", "pretrained_windowed_fd",
           "weights_status"]

#: the input each whole-volume CLIP extractor is given (its loader applies the authors' preprocessing)
CLIP_INPUTS = {
    "m3d_clip": "whole volumes in HU, min-max per volume, foreground crop, resized to 32 x 256 x 256 (M3D-CLIP's)",
    "m3d_clip_slices": "each 2D slice repeated along z into a 32-slice slab (ViCTr is silent on how it feeds 2D "
                       "slices to the 3D M3D-CLIP), then M3D-CLIP's min-max, foreground crop and 32 x 256 x 256 resize",
    "ct_clip": "whole volumes in HU clipped to [-1000, 1000] / 1000, resampled to 0.75 x 0.75 x 1.5 mm, "
               "cropped / padded to 480 x 480 x 240 (CT-CLIP's)",
}


def weights_status(name: str, path: str | Path | None, key: str) -> str:
    """``"ok"`` or the ``"unavailable: <reason>"`` text of an extractor whose weights file is ``path``
    (config key ``key``)."""
    spec = EXTRACTORS[name]
    if path is None:
        return (f"unavailable: {key} is not set (set it to {spec.model}/{spec.file}: the weights rule fetches "
                f"registry model {spec.model})")
    if spec.file is None:  # a model folder (M3D-CLIP: config.json + weights)
        missing = [f for f in spec.required if not (Path(path) / f).is_file()]
        if not Path(path).is_dir() or missing:
            return (f"unavailable: {key} = {str(path)!r} is not {spec.model}'s model folder (missing "
                    f"{', '.join(missing) or 'the folder'}; fetch registry model {spec.model})")
    elif not Path(path).is_file():
        return f"unavailable: {key} = {str(path)!r} is not a file (fetch registry model {spec.model})"
    if not spec.loader:
        return f"unavailable: the {name} extractor is registered but this version has no loader for it yet"
    return "ok"


def _entry(name: str, recipe: FDRecipe, status: str, value: float | None = None, **extra) -> dict:
    return {"value": value, "status": status, "extractor": EXTRACTORS[name].title, "recipe": recipe.record(),
            **extra}


def _fd(name: str, net, recipe: FDRecipe, real01: torch.Tensor, fake01: torch.Tensor, **kw) -> dict:
    ext = register_module_extractor(f"medsynth-{name}", RecipeEncoder(net, recipe))
    try:
        return frechet_metrics(real01, fake01, ext, kid=False, **kw)
    finally:
        unregister_module_extractor(ext)


def pretrained_fd(name: str, path: str | Path | None, key: str, real: np.ndarray | torch.Tensor,
                  fake: np.ndarray | torch.Tensor, recipe: FDRecipe, hu_range: Sequence[float] | None,
                  **kw) -> dict:
    """FD of two ``[N, 1, H, W]`` model-unit slice sets on extractor ``name``: ``{"value", "status",
    "extractor", "recipe", "n_real", "n_fake"}``; ``kw`` go to :func:`~.frechet.frechet_metrics`."""
    status = weights_status(name, path, key)
    if status != "ok":
        return _entry(name, recipe, status)
    net = extractor_from_file(name, path)
    r01 = recipe_unit_images(torch.as_tensor(real), recipe, hu_range)
    f01 = recipe_unit_images(torch.as_tensor(fake), recipe, hu_range)
    res = _fd(name, net, recipe, r01, f01, **kw)
    return _entry(name, recipe, "ok", float(res["fd"]), n_real=res["n_real"], n_fake=res["n_fake"])


def pretrained_fd_volumes(name: str, path: str | Path | None, key: str, real: np.ndarray | torch.Tensor,
                          fake: np.ndarray | torch.Tensor, recipe: FDRecipe, hu_range: Sequence[float] | None,
                          **kw) -> dict:
    """2.5D FD of two ``[N, 1, X, Y, Z]`` model-unit volume sets: per plane (XY, YZ, ZX), the
    central ``recipe.central_fraction`` of the slices of every volume (one min-max group per volume and
    plane for ``scaling: minmax``); ``value`` is the mean over the planes, ``per_plane`` each."""
    status = weights_status(name, path, key)
    if status != "ok":
        return _entry(name, recipe, status, per_plane={})
    net = extractor_from_file(name, path)
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    per_plane = {}
    for plane, axis in PLANES.items():
        sets = []
        for volumes in (real, fake):
            slices = central_slices(volumes, axis, recipe.central_fraction)
            groups = torch.arange(len(volumes)).repeat_interleave(len(slices) // len(volumes))
            sets.append(recipe_unit_images(slices, recipe, hu_range, groups))
        res = _fd(name, net, recipe, *sets, **kw)
        per_plane[PLANE_LABELS[plane]] = {"fd": float(res["fd"]), "n_real": res["n_real"], "n_fake": res["n_fake"]}
    value = float(np.mean([p["fd"] for p in per_plane.values()]))
    return _entry(name, recipe, "ok", value, per_plane=per_plane)


def pretrained_windowed_fd(name: str, path: str | Path | None, key: str, real: np.ndarray | torch.Tensor,
                           fake: np.ndarray | torch.Tensor, recipe: FDRecipe, hu_range: Sequence[float],
                           windows: dict, **kw) -> dict:
    """FD per CT window (MedSyn2 Table 1) on extractor ``name``: each window maps HU to [0, 1] (it
    replaces the recipe's ``hu_window`` / ``scaling``), the recipe's channel normalisation and resizing
    apply. 2D slice sets: rows per window (plane XY); volumes (``[N, 1, X, Y, Z]``): per window x plane
    on the central ``recipe.central_fraction`` (2.5D). ``{"status", "extractor", "recipe", "rows"}``."""
    status = weights_status(name, path, key)
    if status != "ok":
        return _entry(name, recipe, status, rows=[])
    ext = register_module_extractor(f"medsynth-{name}", RecipeEncoder(extractor_from_file(name, path), recipe))
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    try:
        if real.dim() == 5:
            rows = per_plane_windowed_fd(real, fake, tuple(hu_range), windows, ext, kid=False,
                                         central_fraction=recipe.central_fraction, **kw)
            rows = [{**r, "plane": PLANE_LABELS.get(r["plane"], r["plane"])} for r in rows]
        else:
            rows = [{**r, "plane": "XY"} for r in per_window_fd(real, fake, tuple(hu_range), windows, ext, kid=False,
                                                                **kw)]
    finally:
        unregister_module_extractor(ext)
    keep = ("window", "plane", "fd", "n_real", "n_fake", "status")
    return _entry(name, recipe, "ok", rows=[{k: r.get(k) for k in keep} for r in rows])


def clip_fd_volumes(name: str, path: str | Path | None, key: str, real: np.ndarray | torch.Tensor,
                    fake: np.ndarray | torch.Tensor, hu_range: Sequence[float] | None,
                    spacing: Sequence[float] | None = None, batch_size: int = 2,
                    device: torch.device | str = "cpu", input_name: str | None = None) -> dict:
    """FD of the whole-volume CLIP image embeddings (``m3d_clip``: ViCTr's MFID network; ``ct_clip``:
    MedSyn2's) of two ``[N, 1, X, Y, Z]`` model-unit CT volume sets (``hu_range``: the window the model
    units map back to HU; ``spacing``: voxel size in mm, for CT-CLIP's resampling). One embedding per
    volume, the Frechet distance of the two embedding sets (exact for fewer volumes than dimensions:
    :func:`~.frechet.frechet_distance_lowrank`). ``{"value", "status", "extractor", "input", "n_real",
    "n_fake"}``; "unavailable: <reason>" without weights, "not applicable" for fewer than 2 volumes and, for
    CT-CLIP, for MR (``hu_range`` None). M3D-CLIP takes MR in model units: its per-volume min-max makes the
    intensity scale irrelevant, and M3D-Data holds MR as well as CT. ``input_name``: the ``CLIP_INPUTS`` entry
    recorded (default ``name``)."""
    entry = {"value": None, "extractor": EXTRACTORS[name].title, "input": CLIP_INPUTS[input_name or name]}
    status = weights_status(name, path, key)
    if status != "ok":
        return {**entry, "status": status}
    if hu_range is None and name != "m3d_clip":
        return {**entry, "status": f"not applicable: {name} embeds CT volumes in HU, these are not CT"}
    if min(len(real), len(fake)) < 2:
        return {**entry, "status": f"not applicable: {len(real)} real / {len(fake)} generated volumes (needs 2 each)"}
    net = extractor_from_file(name, path).to(device)
    lo, hi = (float(hu_range[0]), float(hu_range[1])) if hu_range is not None else (-1.0, 1.0)  # MR: model units

    def embed(volumes: torch.Tensor) -> np.ndarray:
        out = []
        for i in range(0, len(volumes), int(batch_size)):
            hu = (volumes[i:i + int(batch_size)].float() + 1.0) / 2.0 * (hi - lo) + lo
            with torch.no_grad():
                feats = net(hu, tuple(spacing)) if name == "ct_clip" and spacing else net(hu)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out)

    real_f, fake_f = embed(torch.as_tensor(real)), embed(torch.as_tensor(fake))
    return {**entry, "status": "ok", "value": frechet_distance_lowrank(real_f, fake_f), "n_real": len(real_f),
            "n_fake": len(fake_f)}


#: slab depth of :func:`clip_fd_slices`: M3D-CLIP's 32 input slices, so its resize leaves z untouched
SLAB_DEPTH = 32


def clip_fd_slices(name: str, path: str | Path | None, key: str, real: np.ndarray | torch.Tensor,
                   fake: np.ndarray | torch.Tensor, hu_range: Sequence[float] | None, batch_size: int = 2,
                   device: torch.device | str = "cpu") -> dict:
    """ViCTr's MFID: :func:`clip_fd_volumes` of two ``[N, 1, H, W]`` model-unit slice sets on the whole-volume
    extractor ``name`` (M3D-CLIP). ViCTr scores 2D slices with M3D-CLIP, a 3D network, without saying how
    (silent); here each slice is repeated :data:`SLAB_DEPTH` times along z (a view, materialised one batch at
    a time), a slab M3D-CLIP's preprocessing then treats as a volume. The record's ``input`` says so."""
    slabs = [torch.as_tensor(x)[..., None].expand(*np.shape(x), SLAB_DEPTH) for x in (real, fake)]
    return clip_fd_volumes(name, path, key, *slabs, hu_range, batch_size=batch_size, device=device,
                           input_name=f"{name}_slices")
