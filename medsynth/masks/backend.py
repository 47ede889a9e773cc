"""One interface for every segmenter that makes pseudo-masks, and the factory that picks one from config.

A backend turns a canonical image into a label map on the same grid plus the mapping from label
id to structure name. Backends that need pretrained weights check for them first and raise
``WeightsUnavailable`` (naming the config key, the environment variable and the weights' source)
instead of reaching for the network.
"""

from __future__ import annotations

from medsynth.masks.types import Segmentation, Segmenter, WeightsUnavailable

__all__ = ["Segmentation", "Segmenter", "WeightsUnavailable", "make_segmenter"]


def make_segmenter(cfg: dict) -> Segmenter:
    """Build the backend named by ``cfg['backend']`` (classical, totalsegmentator, lungmask, medpseg)."""
    backend = cfg["backend"]  # required by the schema (masks.segmenters.<name>.backend)
    options = dict(cfg.get(backend) or {})
    if backend == "classical":
        from medsynth.masks.classical import ClassicalCTSegmenter

        return ClassicalCTSegmenter(**options)
    if backend == "totalsegmentator":
        from medsynth.masks.totalseg import TotalSegmentatorSegmenter

        return TotalSegmentatorSegmenter(**options)
    if backend == "lungmask":
        from medsynth.masks.lungmask_seg import LungmaskSegmenter

        return LungmaskSegmenter(**options)
    if backend == "medpseg":
        from medsynth.masks.medpseg import MedPSegSegmenter

        return MedPSegSegmenter(**options)
    raise ValueError(f"unknown segmenter backend {backend!r} (masks.segmenters[].backend): classical, totalsegmentator, "
                     "lungmask, medpseg")
