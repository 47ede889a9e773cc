"""Training sets: 2D axial slices and 3D volumes with paired condition masks, in safetensors shards.

One shard of cases -> one ``.safetensors`` file (tensors ``image`` float16 in [-1, 1], ``masks``
uint8 binary channels) and one index CSV (a row per sample: case, split, modality, slice, the
organs present, and every prompt field of the manifest). Masks are kept binary on disk; loaders
map them to [-0.5, 0.5] (the format: :mod:`medsynth.io.trainsets`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medsynth.io.trainsets import write_shard
from medsynth.preprocess.intensity import normalise


@dataclass(frozen=True)
class SliceOptions:
    """2D set: slice size in pixels, minimum in-field fraction of a slice, keep every n-th slice, and the
    slice-level held-out slabs (patient id -> first and last test slice) with the gap dropped around them."""

    size: int
    min_coverage: float
    every: int
    test_slabs: tuple[tuple[str, int, int], ...]
    slab_gap: int

    @classmethod
    def from_config(cls, cfg: dict | None = None) -> "SliceOptions":
        """Build from ``trainsets.slices`` (keys left out take the schema's defaults)."""
        from medsynth.settings import section

        c = section("trainsets", {"slices": dict(cfg or {})})["slices"]
        slabs = c["slabs"]
        test = tuple((str(p), int(a), int(b)) for p, (a, b) in sorted(slabs["test"].items()))
        for patient, first, last in test:
            if last < first:
                raise ValueError(f"trainsets.slices.slabs.test.{patient}: last slice {last} before first {first}")
        return cls(int(c["size"]), float(c["min_coverage"]), int(c["every"]), test, int(slabs["gap"]))

    def slice_split(self, patient_id: str, z: int, split: str) -> str | None:
        """The split of slice ``z`` of a patient whose patient-level split is ``split``: ``"test"`` inside the
        patient's test slab, ``None`` (dropped) within ``slab_gap`` slices of it, else ``"train"``; ``split``
        itself for a patient without a slab."""
        for patient, first, last in self.test_slabs:
            if patient == str(patient_id):
                if first <= z <= last:
                    return "test"
                return None if first - self.slab_gap <= z <= last + self.slab_gap else "train"
        return split


def _resize(volume: np.ndarray, size: tuple[int, ...], binary: bool) -> np.ndarray:
    """Resize a (C, *spatial) array: area/linear for images, area + threshold 0.5 for binary masks."""
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
    if tuple(t.shape[2:]) == tuple(size):
        out = t
    else:
        shrinking = all(s <= n for s, n in zip(size, t.shape[2:]))
        mode = "area" if shrinking or binary else ("bilinear" if len(size) == 2 else "trilinear")
        kwargs = {} if mode == "area" else {"align_corners": False}
        out = F.interpolate(t, size=size, mode=mode, **kwargs)
    out = out[0].numpy()
    return (out >= 0.5).astype(np.uint8) if binary else out


def axial_slices(image: np.ndarray, masks: np.ndarray, coverage: np.ndarray, options: SliceOptions):
    """Yield (z, image slice (1,S,S), masks (C,S,S)) for axial slices with enough in-field coverage.

    ``image`` is (X, Y, Z) in model units, ``masks`` (C, X, Y, Z) binary, ``coverage`` (X, Y, Z) in [0, 1].
    """
    size = (options.size, options.size)
    for z in range(0, image.shape[2], options.every):
        if coverage[:, :, z].mean() < options.min_coverage:
            continue
        img = _resize(image[None, :, :, z], size, binary=False)
        msk = _resize(masks[:, :, :, z], size, binary=True) if len(masks) else np.zeros((0, *size), np.uint8)
        yield z, img, msk


def centre_crop_or_pad(array: np.ndarray, size: tuple[int, ...], fill: float) -> np.ndarray:
    """Centre-crop or pad the trailing spatial axes of ``array`` to ``size``."""
    lead = array.ndim - len(size)
    out = np.full(array.shape[:lead] + tuple(size), fill, dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for n, s in zip(array.shape[lead:], size):
        if n >= s:
            start = (n - s) // 2
            src.append(slice(start, start + s))
            dst.append(slice(0, s))
        else:
            start = (s - n) // 2
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[tuple(dst)] = array[tuple(src)]
    return out


def volume_sample(image: np.ndarray, masks: np.ndarray, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size 3D sample: the whole study-grid volume resized to ``size`` (image (1,*size), masks (C,*size))."""
    img = _resize(image[None], size, binary=False)
    msk = _resize(masks, size, binary=True) if len(masks) else np.zeros((0, *size), np.uint8)
    return img, msk


#: the first columns of a training-set index (then the prompt fields, ``slice``, ``organs``, ``sample``)
TRAINSET_ID_COLUMNS = ("case_id", "patient_id", "dataset", "modality", "split", "normalisation")


def build_training_shard(masks_table: pd.DataFrame, registered: pd.DataFrame, manifest: pd.DataFrame,
                         condition_names: list[str], intensity_cfg: dict, slice_options: SliceOptions,
                         volume_size: tuple[int, int, int], out_2d: tuple[Path, Path], out_3d: tuple[Path, Path]) -> None:
    """2D slices and 3D volumes of one shard's accepted cases, each with masks and prompt fields (a one-slice
    case, a 2D picture, gives its one slice and no volume)."""
    prompts = manifest.set_index("case_id")
    # prompt fields and per-case labels (layout.labels_csv: abnormality_<name>, MedSyn2 Table 3)
    prompt_columns = [c for c in manifest.columns if c.startswith(("prompt_", "abnormality_"))]
    reg = registered.set_index("case_id")
    slices, volumes = [], []
    for case in masks_table[masks_table["status"] == "ok"].to_dict("records"):
        case_id = case["case_id"]
        hu = np.asarray(nib.load(reg.loc[case_id, "registered_path"]).dataobj, dtype=np.float32)
        coverage = np.asarray(nib.load(reg.loc[case_id, "coverage_path"]).dataobj, dtype=np.float32)
        image, params = normalise(hu, case["modality"], intensity_cfg)
        masks = np.moveaxis(np.asarray(nib.load(case["conditions_path"]).dataobj, dtype=np.uint8), -1, 0)
        base = {**{key: case[key] for key in TRAINSET_ID_COLUMNS[:-1]}, "normalisation": json.dumps(params)}
        base.update({c: prompts.loc[case_id, c] for c in prompt_columns})
        for z, img, msk in axial_slices(image, masks, coverage, slice_options):
            split = slice_options.slice_split(case["patient_id"], z, case["split"])
            if split is None:
                continue  # in the gap around a held-out slab
            present = [n for n, m in zip(condition_names, msk) if m.any()]
            slices.append((dict(base, split=split, slice=z, organs=json.dumps(present)), img, msk))
        if image.shape[2] == 1:
            continue  # a 2D picture: no 3D sample
        img3, msk3 = volume_sample(image, masks, volume_size)
        present = [n for n, m in zip(condition_names, msk3) if m.any()]
        volumes.append((dict(base, slice=-1, organs=json.dumps(present)), img3, msk3))
    columns = [*TRAINSET_ID_COLUMNS, *prompt_columns, "slice", "organs"]  # the header of a shard with no case
    write_shard(slices, condition_names, *out_2d, columns=columns)
    write_shard(volumes, condition_names, *out_3d, columns=columns)
