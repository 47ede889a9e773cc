"""lungmask (Hofmanninger et al.) behind the ``Segmenter`` interface, offline only.

Models (label ids as documented by lungmask): ``R231`` and ``R231CovidWeb`` give 1 right lung,
2 left lung; ``LTRCLobes`` gives 1 left upper, 2 left lower, 3 right upper, 4 right middle,
5 right lower lobe. ``fillmodel="R231"`` with ``model="LTRCLobes"`` is lungmask's LTRCLobes_R231
fusion (lobe labels, gaps filled from R231).

Weights: ``modelpath`` (config key ``masks.segmenters[].lungmask.modelpath``) is a state-dict file
(``fillmodel_path`` likewise for the fill model); without it the file lungmask would download
through torch.hub is looked up in torch's hub cache, ``torch.hub.get_dir()/checkpoints/<file name
of lungmask's URL>`` (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``),
and passed to lungmask as a path, so lungmask never reaches for the network. A missing file raises
``WeightsUnavailable``.

Geometry: lungmask works slice by slice on a SimpleITK image: it reorients to LPS
(``sitk.DICOMOrient``), runs on the (z, y, x) array, orients the mask back to the input orientation
and returns a numpy array in SimpleITK order (z, y, x). The canonical (RAS) nibabel input is
converted with ``medsynth.io.volume.nifti_to_sitk`` and the result transposed back to (x, y, z), so
the label map lies on the input grid. Intensities must be HU (lungmask clips to [-1024, 600]).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import nibabel as nib
import numpy as np

from medsynth.masks.types import Segmentation, WeightsUnavailable

CONFIG_KEY = "masks.segmenters[].lungmask.modelpath"
FILL_CONFIG_KEY = "masks.segmenters[].lungmask.fillmodel_path"
LUNG_LABELS = {1: "lung_right", 2: "lung_left"}
LOBE_LABELS = {1: "lung_upper_lobe_left", 2: "lung_lower_lobe_left", 3: "lung_upper_lobe_right",
               4: "lung_middle_lobe_right", 5: "lung_lower_lobe_right"}
MODEL_LABELS = {"R231": LUNG_LABELS, "R231CovidWeb": LUNG_LABELS, "LTRCLobes": LOBE_LABELS}


def model_url(model: str) -> str:
    """The URL lungmask downloads ``model``'s weights from (``lungmask.mask.MODEL_URLS``)."""
    from lungmask.mask import MODEL_URLS

    return MODEL_URLS[model][0]


def hub_cache_path(model: str) -> Path:
    """Where torch.hub (and so lungmask) caches ``model``'s weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(model_url(model)).path)


def _resolve(model: str, path: str | os.PathLike | None, key: str) -> str:
    if path is not None and str(path) != "":
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsUnavailable(
                f"lungmask weights for {model} not found at {p} (config key {key}). The file is the state dict "
                f"lungmask downloads from {model_url(model)}.")
        return str(p)
    cached = hub_cache_path(model)
    if cached.is_file():
        return str(cached)
    raise WeightsUnavailable(
        f"lungmask weights for {model} are not on this machine: no {key} in the config and no {cached} in "
        f"torch's hub cache (set by the env var TORCH_HOME: $TORCH_HOME/hub/checkpoints). lungmask downloads "
        f"them from {model_url(model)}; fetch that file on a machine with internet and set {key} to it, or put "
        f"it in $TORCH_HOME/hub/checkpoints/. Nothing is downloaded from here.")


class LungmaskSegmenter:
    """lungmask's ``LMInferer`` on a canonical CT (HU); see the module docstring.

    Args:
        model: ``R231`` (default), ``LTRCLobes`` or ``R231CovidWeb``; decides the label names.
        modelpath: state-dict file of ``model`` (else torch's hub cache).
        device: ``cpu`` (forces CPU), anything else lets lungmask take CUDA/MPS when present.
        batch_size: slices per forward pass.
        fillmodel: optional second model whose lung voxels fill the gaps of ``model`` (``R231``).
        fillmodel_path: state-dict file of ``fillmodel`` (else torch's hub cache).
        volume_postprocessing: lungmask's connected-component clean-up (default on).
    """

    name = "lungmask"

    def __init__(self, model: str = "R231", modelpath: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int = 20, fillmodel: str | None = None, fillmodel_path: str | os.PathLike | None = None,
                 volume_postprocessing: bool = True):
        if model not in MODEL_LABELS:
            raise ValueError(f"unknown lungmask model {model!r} (masks.segmenters[].lungmask.model): "
                             f"{', '.join(MODEL_LABELS)}")
        if fillmodel is not None and fillmodel not in MODEL_LABELS:
            raise ValueError(f"unknown lungmask fillmodel {fillmodel!r}: {', '.join(MODEL_LABELS)}")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.modelpath = modelpath
        self.device = str(device)
        self.batch_size = int(batch_size)
        self.fillmodel = fillmodel
        self.fillmodel_path = fillmodel_path
        self.volume_postprocessing = bool(volume_postprocessing)
        self._inferer = None

    @property
    def names(self) -> dict[int, str]:
        return dict(MODEL_LABELS[self.model])

    def inferer(self):
        """lungmask's LMInferer, built once, always from local files."""
        if self._inferer is None:
            weights = _resolve(self.model, self.modelpath, CONFIG_KEY)
            fill_weights = _resolve(self.fillmodel, self.fillmodel_path, FILL_CONFIG_KEY) if self.fillmodel else None
            from lungmask import LMInferer

            inferer = LMInferer(modelname=self.model, modelpath=weights, fillmodel=self.fillmodel,
                                fillmodel_path=fill_weights, force_cpu=self.device == "cpu",
                                batch_size=self.batch_size, volume_postprocessing=self.volume_postprocessing,
                                tqdm_disable=True)
            n_out = inferer.model.last.out_channels
            if n_out != len(MODEL_LABELS[self.model]) + 1:
                raise ValueError(f"lungmask weights {weights} have {n_out} output classes; model {self.model} "
                                 f"needs {len(MODEL_LABELS[self.model]) + 1}")
            self._inferer = inferer
        return self._inferer

    def segment(self, image: nib.Nifti1Image, modality: str) -> Segmentation:
        """Lung (or lobe) label map of a canonical CT in HU, on the input grid."""
        if str(modality).upper() != "CT":
            raise ValueError(f"lungmask handles CT only (got {modality})")
        if len(image.shape) != 3:
            raise ValueError(f"expected a 3D image, got shape {image.shape}")
        from medsynth.io.volume import nifti_to_sitk

        hu = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine)  # scaled values, HU
        mask_zyx = self.inferer().apply(nifti_to_sitk(hu))
        labels = np.ascontiguousarray(np.asarray(mask_zyx, dtype=np.uint8).transpose(2, 1, 0))
        if labels.shape != image.shape:
            raise RuntimeError(f"lungmask returned shape {labels.shape} for input {image.shape}")
        return Segmentation(nib.Nifti1Image(labels, image.affine), self.names)
