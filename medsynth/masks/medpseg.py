"""MEDPSeg (Carmo et al., MICLab-Unicamp/medpseg, MIT) behind the ``Segmenter`` interface, offline only.

Labels (upstream's merged ``<ID>_all_segmentations`` ids): 1 lung (healthy parenchyma), 2 ground-glass
opacity, 3 consolidation, 4 airway, 5 pulmonary artery. The whole lung is 1 | 2 | 3 (plus the airway
and artery voxels inside it). Where structures overlap the later one wins, as upstream paints them:
pulmonary artery over airway over GGO / consolidation over lung (GGO and consolidation never overlap).

Weights: ``checkpoint`` (config key ``masks.segmenters[].medpseg.checkpoint``) is
``poly_medseg_25d_fix.ckpt`` from the release zip :data:`WEIGHTS_URL` (unzip it; the other two files
are not used). Nothing is downloaded; a missing file raises ``WeightsUnavailable``. The file is a
PyTorch Lightning pickle; it is read with torch's ``weights_only`` loader, allowing besides tensors and
plain containers only ``argparse.Namespace``, ``torch.torch_version.TorchVersion`` and Lightning's
``AttributeDict`` (read as a plain dict, so Lightning need not be installed). Anything else is refused
with ``UnsafeWeightsFile`` before it is called. The network topology (``expand_bifpn``,
``deep_supervision``) comes from the checkpoint's ``hyper_parameters`` when they name it, else from its
keys where they tell (see :func:`network_options`), else from the options; the weights load strictly.

Recipe (medpseg 4.x ``pipeline`` / ``PolySegmentationPipeline``):

* Geometry. Upstream reads with SimpleITK, takes the (z, y, x) array and flips every axis whose
  direction cosine is negative, i.e. it feeds an LPS array: column -> patient left, row -> posterior
  (bed at the bottom, radiological view), slice index -> superior. A canonical nibabel image is RAS
  (i -> right, j -> anterior, k -> superior; SimpleITK direction diag(-1, -1, 1)), so the array is
  ``data[::-1, ::-1, :].transpose(2, 1, 0)``. Here that is done with nibabel's orientation tools, so
  any axis-aligned input is first brought to L, P, S (upstream only flips, never permutes axes); the
  label map is mapped back to the input grid the same way.
* Intensity: clip to [-1024, 600] HU, scale to [0, 1] (volumes spanning < 100 HU are refused).
* Each axial slice is resized to 512 x 512 (bilinear, ``align_corners=False``: upstream's trilinear
  resize keeping the slice count, which is the same thing slice by slice).
* 2.5D input: channels = slices z-1, z, z+1 (inferior, centre, superior); at the first / last slice
  the missing neighbour is the edge slice itself (upstream clamps the index).
* Softmax per head; outputs back to the input's in-plane size with nearest neighbour (upstream resizes
  the probabilities; the thresholds and argmax below are pointwise, so they are taken first here and
  the label maps resized - the same voxels).
* lung = P(lung) + P(GGO) + P(consolidation) > 0.5, keeping the 2 largest 3D components
  (26-connectivity, as cc3d's default); GGO / consolidation = main argmax 2 / 3 inside that lung;
  airway / artery = channel 1 of their heads > 0.5 (not restricted to the lung, no clean-up: upstream's
  default ``post=False``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from medsynth.io.state_dict import UnsafeWeightsFile, load_weights
from medsynth.masks.types import Segmentation, WeightsUnavailable

__all__ = ["CONFIG_KEY", "LABELS", "WEIGHTS_URL", "MedPSegSegmenter", "network_options", "read_checkpoint"]

CONFIG_KEY = "masks.segmenters[].medpseg.checkpoint"
WEIGHTS_URL = "https://github.com/MICLab-Unicamp/medpseg/releases/download/v4.0.0/data_poly.zip"
CHECKPOINT_NAME = "poly_medseg_25d_fix.ckpt"
LABELS = {1: "lung", 2: "ground_glass_opacity", 3: "consolidation", 4: "airway", 5: "pulmonary_artery"}
HU_WINDOW = (-1024.0, 600.0)
SLICE_SIZE = 512
#: Where Lightning's AttributeDict (a dict subclass holding the hyper-parameters) has lived.
ATTRIBUTE_DICT_PATHS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
)
_LPS = axcodes2ornt(("L", "P", "S"))


def _plain(obj) -> dict:
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    return dict(obj) if isinstance(obj, dict) else {}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """The network's state dict (prefix stripped) and the hyper-parameters of a MEDPSeg Lightning checkpoint.

    Never runs code from the pickle: torch's ``weights_only`` loader with only the globals listed in the
    module docstring added; any other global raises :class:`UnsafeWeightsFile` naming it.
    """
    from torch.torch_version import TorchVersion

    from medsynth.masks.medpseg_net import strip_checkpoint_prefix

    allowed = [argparse.Namespace, TorchVersion, *((dict, name) for name in ATTRIBUTE_DICT_PATHS)]
    try:
        ckpt = load_weights(path, allowed)
    except UnsafeWeightsFile as err:
        raise UnsafeWeightsFile(f"{err} A MEDPSeg checkpoint needs no other global: get {CHECKPOINT_NAME} from "
                                f"{WEIGHTS_URL}.") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); expected {CHECKPOINT_NAME}")
    hparams = _plain(ckpt.get("hyper_parameters"))
    if set(hparams) == {"hparams"}:  # save_hyperparameters(namespace) stored under its argument's name
        hparams = _plain(hparams["hparams"])
    if any(k.startswith("model.learnable_norm_module.") for k in ckpt["state_dict"]):
        hparams.setdefault("learnable_norm", True)  # MEDSeg's own input normalisation, outside the network
    state = strip_checkpoint_prefix(ckpt["state_dict"])
    if not state:
        raise ValueError(f"{path} holds no MEDPSeg network weights (no key under 'model.model.')")
    return state, hparams


def network_options(hparams: dict, expansion: str, deep_supervision: bool, state: dict | None = None) -> dict:
    """``MedPSegNet`` options: the checkpoint's ``expand_bifpn`` / ``deep_supervision`` where it names them.

    Otherwise the (stripped) ``state`` keys decide where they can: ``ds_*`` heads mean deep supervision,
    ``expand_conv`` keys mean the ``conv`` expansion. ``upsample`` and ``upsample_sum`` have the same keys,
    so without ``expand_bifpn`` only the ``expansion`` option tells them apart.
    """
    if hparams.get("learnable_norm"):
        raise ValueError("MEDPSeg checkpoint uses learnable_norm (the network normalises its own input): "
                         "not supported, use the released poly_medseg_25d_fix.ckpt")
    if hparams.get("compound_coef", 4) != 4:
        raise ValueError(f"MEDPSeg checkpoint has compound_coef={hparams['compound_coef']} "
                         "(only the EfficientNet-B4 network, compound_coef 4, is re-implemented)")
    if hparams.get("large"):
        raise ValueError("MEDPSeg checkpoint is the 'large' variant (double width and depth): not supported")
    if state is not None and "deep_supervision" not in hparams:
        deep_supervision = any(".ds_" in k for k in state)
    if state is not None and "expand_bifpn" not in hparams and "expand_conv.0.weight" in state:
        expansion = "conv"
    return {"expansion": str(hparams.get("expand_bifpn", expansion)),
            "deep_supervision": bool(hparams.get("deep_supervision", deep_supervision))}


def _largest_components(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """The ``keep`` largest 26-connected components of ``mask``."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= keep:
        return labels > 0
    counts = np.bincount(labels.ravel())[1:]
    kept = np.argsort(-counts, kind="stable")[:keep] + 1
    return np.isin(labels, kept)


def merge_labels(lung_fg: np.ndarray, argmax: np.ndarray, airway: np.ndarray, artery: np.ndarray) -> np.ndarray:
    """Upstream's merged label map from the per-voxel maps (any array order): see the module docstring."""
    lung = _largest_components(lung_fg.astype(bool))
    poly = np.where(lung, argmax, 0)
    merged = lung.astype(np.int16) + (poly == 2) + 2 * (poly == 3).astype(np.int16)
    merged[airway.astype(bool)] = 4
    merged[artery.astype(bool)] = 5
    return merged.astype(np.int16)


class MedPSegSegmenter:
    """MEDPSeg on a canonical CT in HU; see the module docstring.

    Args:
        checkpoint: path of ``poly_medseg_25d_fix.ckpt`` (required; from :data:`WEIGHTS_URL`).
        device: torch device of the forward pass (``cpu`` default, ``cuda`` / ``cuda:1`` ...).
        batch_size: slices per forward pass (each a 3 x 512 x 512 input).
        expansion: ``MedPSegNet`` expansion (``upsample``, ``upsample_sum`` or ``conv``), used only when the
            checkpoint's ``hyper_parameters`` do not name ``expand_bifpn`` and it has no ``expand_conv`` keys.
        deep_supervision: build the deep-supervision heads; a fallback only: the checkpoint's
            ``hyper_parameters``, else whether it holds ``ds_*`` keys, decide.
    """

    name = "medpseg"

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 4,
                 expansion: str = "upsample", deep_supervision: bool = True):
        if int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1 (masks.segmenters[].medpseg.batch_size)")
        self.checkpoint = checkpoint
        self.device = str(device)
        self.batch_size = int(batch_size)
        self.expansion = str(expansion)
        self.deep_supervision = bool(deep_supervision)
        self._net = None

    @property
    def names(self) -> dict[int, str]:
        return dict(LABELS)

    def _checkpoint_path(self) -> Path:
        if self.checkpoint is None or str(self.checkpoint) == "":
            raise WeightsUnavailable(
                f"MEDPSeg weights are not configured: set {CONFIG_KEY} to {CHECKPOINT_NAME}, one of the files of "
                f"the release zip {WEIGHTS_URL} (fetch and unzip it on a machine with internet; only that file is "
                f"needed). Nothing is downloaded from here.")
        path = Path(self.checkpoint).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(
                f"MEDPSeg weights not found at {path} (config key {CONFIG_KEY}). The file is {CHECKPOINT_NAME} from "
                f"the release zip {WEIGHTS_URL}; nothing is downloaded from here.")
        return path

    def network(self):
        """The ``MedPSegNet`` with the checkpoint's weights (strict), in eval mode on ``device``; built once."""
        if self._net is None:
            from medsynth.masks.medpseg_net import MedPSegNet

            path = self._checkpoint_path()
            state, hparams = read_checkpoint(path)
            options = network_options(hparams, self.expansion, self.deep_supervision, state)
            net = MedPSegNet(**options)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise ValueError(
                    f"{path} does not fit the MEDPSeg network built with {options} (from the checkpoint's "
                    f"hyper_parameters where named, else the keys and masks.segmenters[].medpseg.expansion): "
                    f"{str(err).splitlines()[1] if len(str(err).splitlines()) > 1 else err}") from None
            self._net = net.eval().to(self.device)
        return self._net

    def predict_lps(self, volume) -> tuple[np.ndarray, ...]:
        """Per-voxel maps of a (z, y, x) LPS volume in HU, on its own grid.

        Returns uint8 arrays (lung foreground, main argmax, airway, artery), before any clean-up.
        """
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        net = self.network()
        device = torch.device(self.device)
        lo_hu, hi_hu = HU_WINDOW
        vol = (torch.as_tensor(volume, dtype=torch.float32).clamp(lo_hu, hi_hu) - lo_hu) / (hi_hu - lo_hu)
        n_z, rows, cols = vol.shape
        maps = torch.zeros((4, n_z, rows, cols), dtype=torch.uint8)
        bar = tqdm(total=n_z, desc="medpseg", unit="slice", disable=not sys.stderr.isatty())
        with torch.inference_mode():
            for start in range(0, n_z, self.batch_size):
                stop = min(start + self.batch_size, n_z)
                lo, hi = max(start - 1, 0), min(stop + 1, n_z)
                block = vol[lo:hi].to(device)
                if (rows, cols) != (SLICE_SIZE, SLICE_SIZE):
                    block = F.interpolate(block[:, None], size=(SLICE_SIZE, SLICE_SIZE), mode="bilinear",
                                          align_corners=False)[:, 0]
                index = [[max(z - 1, 0) - lo, z - lo, min(z + 1, n_z - 1) - lo] for z in range(start, stop)]
                out = net(block[torch.as_tensor(index, device=device)])
                main = torch.softmax(out["main"].float(), dim=1)
                packed = torch.stack([(main[:, 1:].sum(dim=1) > 0.5).float(), main.argmax(dim=1).float(),
                                      (torch.softmax(out["atm"].float(), dim=1)[:, 1] > 0.5).float(),
                                      (torch.softmax(out["vessel"].float(), dim=1)[:, 1] > 0.5).float()], dim=1)
                if (rows, cols) != (SLICE_SIZE, SLICE_SIZE):
                    packed = F.interpolate(packed, size=(rows, cols), mode="nearest")
                maps[:, start:stop] = packed.to("cpu", torch.uint8).transpose(0, 1)
                bar.update(stop - start)
        bar.close()
        return tuple(m.numpy() for m in maps)

    def segment(self, image: nib.Nifti1Image, modality: str) -> Segmentation:
        """Lung / GGO / consolidation / airway / artery label map (int16) of a CT in HU, on the input grid."""
        if str(modality).upper() != "CT":
            raise ValueError(f"MEDPSeg handles CT only (got {modality})")
        if len(image.shape) != 3:
            raise ValueError(f"expected a 3D image, got shape {image.shape}")
        data = np.asarray(image.dataobj, dtype=np.float32)  # scaled values, HU
        if float(data.max()) - float(data.min()) < 100:
            raise ValueError(f"MEDPSeg needs HU intensities; this image spans only [{data.min()}, {data.max()}]")
        to_lps = ornt_transform(io_orientation(image.affine), _LPS)
        lps = apply_orientation(data, to_lps)  # (x -> L, y -> P, z -> S)
        maps = self.predict_lps(np.ascontiguousarray(lps.transpose(2, 1, 0)))
        merged_lps = merge_labels(*maps).transpose(2, 1, 0)
        labels = np.ascontiguousarray(apply_orientation(merged_lps, ornt_transform(_LPS, io_orientation(image.affine))))
        if labels.shape != image.shape:
            raise RuntimeError(f"MEDPSeg label map has shape {labels.shape} for input {image.shape}")
        return Segmentation(nib.Nifti1Image(labels.astype(np.int16), image.affine), self.names)
