"""Export of the training slices as an nnU-Net raw dataset (see :mod:`medsynth.downstream.nnunet`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .params import INTENSITY_OFFSET, dataset_folder_name



def encode_labels(labels: np.ndarray) -> np.ndarray:
    """Multi-label binary ``(..., C, H, W)`` -> integer map ``(..., H, W)``: ``c + 1`` where channel ``c`` is set.

    Later channels overwrite earlier ones where they overlap; 0 is background.
    """
    y = np.asarray(labels)
    out = np.zeros(y.shape[:-3] + y.shape[-2:], dtype=np.uint8)
    for c in range(y.shape[-3]):
        out[y[..., c, :, :] > 0.5] = c + 1
    return out


def label_names(n: int, names: Sequence[str] | None) -> list[str]:
    """The label names of ``n`` channels: ``names`` when given, else ``class{c}``."""
    if names is None:
        return [f"class{c}" for c in range(n)]
    names = [str(s) for s in names]
    if len(names) != n or len(set(names)) != n or "background" in names:
        raise ValueError(f"need {n} distinct label names other than 'background', got {names}")
    return names


def export_dataset(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, raw_root: str | Path,
                   dataset_id: int = 901, dataset_name: str = "medsynth",
                   names: Sequence[str] | None = None) -> Path:
    """Write slices ``(N, 1, H, W)`` in [-1, 1] and binary labels ``(N, C, H, W)`` as an nnU-Net raw dataset.

    Returns ``raw_root/Dataset{id:03d}_{name}`` (see module docstring for the layout and encodings). The
    dataset is written to a ``.tmp`` folder and renamed, so a complete folder is never partial.
    """
    import SimpleITK as sitk

    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 4 or x.shape[1] != 1 or y.ndim != 4 or len(x) != len(y) or x.shape[2:] != y.shape[2:]:
        raise ValueError(f"need images (N, 1, H, W) and labels (N, C, H, W), got {x.shape} and {y.shape}")
    channel_names = label_names(y.shape[1], names)
    final = Path(raw_root) / dataset_folder_name({"dataset_id": dataset_id, "dataset_name": dataset_name})
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir(parents=True)
    seg = encode_labels(y)
    for i in range(len(x)):
        img = sitk.GetImageFromArray(x[i, 0] + np.float32(INTENSITY_OFFSET))
        lab = sitk.GetImageFromArray(seg[i])
        for im in (img, lab):
            im.SetSpacing((1.0, 1.0))
        sitk.WriteImage(img, str(tmp / "imagesTr" / f"case_{i:05d}_0000.nii.gz"))
        sitk.WriteImage(lab, str(tmp / "labelsTr" / f"case_{i:05d}.nii.gz"))
    dataset_json = {
        "name": str(dataset_name),
        "description": "medsynth downstream slices: image = x + 2 for x in [-1, 1]; label c+1 = mask channel c "
                       "(later channel wins on overlap)",
        "channel_names": {"0": "zscore"},
        "labels": {"background": 0, **{n: c + 1 for c, n in enumerate(channel_names)}},
        "numTraining": int(len(x)),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
    }
    (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final
