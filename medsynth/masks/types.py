"""The types every segmenter backend shares: a segmentation, the backend protocol, missing weights.

Kept apart from :mod:`medsynth.masks.backend` (the factory that imports every backend) so that the
backends depend on these types only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import nibabel as nib

__all__ = ["WeightsUnavailable", "Segmentation", "Segmenter"]


class WeightsUnavailable(RuntimeError):
    """A backend's pretrained weights are not on this machine (the message says how to get them)."""


@dataclass
class Segmentation:
    """A label map on the input image's grid and what its label ids mean."""

    labels: nib.Nifti1Image
    names: dict[int, str]


class Segmenter(Protocol):
    """Anything that segments a canonical volume."""

    name: str

    def segment(self, image: nib.Nifti1Image, modality: str) -> Segmentation:
        """Label map of ``image`` (same shape and affine) and the id -> structure-name mapping."""
        ...
