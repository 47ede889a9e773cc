"""Label maps -> condition masks: one binary channel per configured structure, and mask QC.

A condition channel names the structures it is made of by glob patterns over the segmenter's
structure names (``lungs`` or ``lung_*``), so one study config works with the classical
segmenter, TotalSegmentator or lungmask. A ``boundary`` channel (MedSyn2 Supp. 7.1.3, lung lobes)
is the union of the boundaries of each matched structure, dilated with a 3x3x3 cube. Channels are
stored binary; :func:`medsynth.io.trainsets.to_condition_values` maps them to [-0.5, 0.5] for the models (MedSyn2).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class ConditionSpec:
    """One condition channel: which structures, as a filled mask or a dilated boundary, and its QC limits."""

    name: str
    structures: tuple[str, ...]
    boundary: bool
    min_ml: float
    max_ml: float | None
    required: bool
    qc_modalities: tuple[str, ...] | None = None

    def checks(self, modality: str | None) -> bool:
        """Whether the mask QC (required, min_ml, max_ml) applies to a case of ``modality`` (``qc_modalities``)."""
        return self.qc_modalities is None or modality is None or str(modality) in self.qc_modalities

    @classmethod
    def from_config(cls, cfg: dict) -> "ConditionSpec":
        """Build from one entry of ``masks.conditions`` (keys left out take the schema's defaults)."""
        from medsynth.settings import section

        c = section("masks", {"conditions": [dict(cfg)]})["conditions"][0]
        return cls(name=c["name"], structures=tuple(c["structures"]), boundary=bool(c["boundary"]),
                   min_ml=float(c["min_ml"]), max_ml=None if c["max_ml"] is None else float(c["max_ml"]),
                   required=bool(c["required"]),
                   qc_modalities=None if c["qc_modalities"] is None else tuple(str(m) for m in c["qc_modalities"]))


@dataclass
class ConditionResult:
    """Binary channels (C, X, Y, Z), per-channel volumes in ml, and QC reasons (empty: passed)."""

    channels: np.ndarray
    names: list[str]
    volumes_ml: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def matching_ids(names: dict[int, str], patterns: tuple[str, ...]) -> list[int]:
    """Label ids whose structure name matches any of ``patterns`` (fnmatch globs)."""
    return sorted(i for i, n in names.items() if any(fnmatch.fnmatch(n, p) for p in patterns))


def lobe_boundaries(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Union of the boundaries of each structure in ``ids``, dilated with a 3x3x3 cube (MedSyn2 Supp. 7.1.3)."""
    out = np.zeros(labels.shape, bool)
    for i in ids:
        region = labels == i
        if region.any():
            out |= region & ~ndi.binary_erosion(region, structure=np.ones((3, 3, 3)), border_value=0)
    return ndi.binary_dilation(out, structure=np.ones((3, 3, 3)))


def condition_masks(labels: np.ndarray, names: dict[int, str], specs: list[ConditionSpec], voxel_ml: float,
                    modality: str | None = None) -> ConditionResult:
    """Channels for ``specs`` from one label map, with volume QC (empty required channel, volume out of range)
    where a channel checks cases of ``modality`` (:meth:`ConditionSpec.checks`)."""
    channels = np.zeros((len(specs), *labels.shape), np.uint8)
    result = ConditionResult(channels, [s.name for s in specs])
    for c, spec in enumerate(specs):
        ids = matching_ids(names, spec.structures)
        mask = lobe_boundaries(labels, ids) if spec.boundary else np.isin(labels, ids)
        channels[c] = mask
        volume = float(mask.sum()) * voxel_ml
        result.volumes_ml[spec.name] = volume
        if not spec.checks(modality):
            continue
        if mask.sum() == 0:
            if spec.required:
                result.reasons.append(f"empty mask: {spec.name}")
            continue
        if volume < spec.min_ml or (spec.max_ml is not None and volume > spec.max_ml):
            result.reasons.append(
                f"mask volume out of range: {spec.name} {volume:.1f} ml not in [{spec.min_ml:g}, {spec.max_ml if spec.max_ml is not None else 'inf'}]"
            )
    return result
