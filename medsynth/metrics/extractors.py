"""The feature extractors of the FD / FID / CLIP-score columns, and whether each can run here.

Every distance column names the extractor that made it. A pretrained extractor reads its registry
model's local folder (``config/models.yaml``, fetched by the weights rule); when the weights are not
there its cells say ``"unavailable: <reason>"`` and no other network stands in under its name.

| name | weights (registry model / file) | input | papers |
|---|---|---|---|
| ``inception`` | inception_v3_fid / weights-inception-2015-12-05-6726825d.pth | 2D slices | ViCTr FID |
| ``radimagenet_resnet50`` | radimagenet_resnet50 / RadImageNet-ResNet50_notop.pth | 2D slices (2.5D) | MedSyn2, MAISI-v2 FID |
| ``m3d_clip`` | m3d_clip | 3D volumes | ViCTr MFID |
| ``ct_clip`` | ct_clip / models/CT-CLIP-Related/CT-CLIP_v2.pt | 3D volumes | MedSyn2 CLIP score |
| ``pillar0`` | pillar0 | 3D volumes | MedSyn2 CLIP score |
| ``self_trained`` | the study's own downstream encoder | 2D slices | every study (always available) |

The 3D CLIP extractors are built from this package's modules with the published key names and loaded
strictly (:mod:`.m3d_clip`, :mod:`.ct_clip`); no remote code runs. ``pillar0`` has no loader yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medsynth.io.state_dict import load_weights
from medsynth.weights.local import WeightsMissing, model_files

__all__ = ["EXTRACTORS", "ExtractorSpec", "extractor_from_file", "extractor_status", "load_extractor"]


@dataclass(frozen=True)
class ExtractorSpec:
    """One feature extractor: its registry model and file, its input, and whether this build can load it."""

    name: str
    title: str
    model: str | None = None  # registry model holding the weights (None: nothing to fetch)
    file: str | None = None  # the weights file inside the model folder (None: the folder)
    spatial_dims: int = 2
    loader: bool = False  # whether load_extractor builds it in this version
    required: tuple[str, ...] = ()  # files a folder extractor needs inside the model folder


EXTRACTORS: dict[str, ExtractorSpec] = {s.name: s for s in (
    ExtractorSpec("inception", "InceptionV3 (torch-fidelity, FID)", "inception_v3_fid",
                  "weights-inception-2015-12-05-6726825d.pth", loader=True),
    ExtractorSpec("radimagenet_resnet50", "RadImageNet ResNet-50", "radimagenet_resnet50",
                  "RadImageNet-ResNet50_notop.pth", loader=True),
    ExtractorSpec("m3d_clip", "M3D-CLIP image encoder", "m3d_clip", None, spatial_dims=3, loader=True,
                  required=("config.json",)),
    ExtractorSpec("ct_clip", "CT-CLIP image encoder", "ct_clip", "models/CT-CLIP-Related/CT-CLIP_v2.pt",
                  spatial_dims=3, loader=True),
    ExtractorSpec("pillar0", "Pillar-0 image encoder", "pillar0", None, spatial_dims=3),
    ExtractorSpec("self_trained", "the study's self-trained downstream encoder", loader=True),
)}


def _weights(spec: ExtractorSpec, weights_dir: str | Path) -> Path:
    folder = model_files(spec.model, weights_dir)
    path = folder / spec.file if spec.file else folder
    for needed in [path, *(path / name for name in spec.required)]:
        if not needed.exists():
            raise WeightsMissing(f"{spec.model}: {needed} is not among the fetched files")
    return path


def extractor_status(name: str, weights_dir: str | Path) -> str:
    """``"ok"``, or ``"unavailable: <reason>"`` (the text of the cells the extractor would have filled)."""
    spec = EXTRACTORS.get(name)
    if spec is None:
        raise ValueError(f"unknown feature extractor {name!r} (known: {', '.join(EXTRACTORS)})")
    if not spec.loader:
        return f"unavailable: the {name} extractor is registered but this version has no loader for it yet"
    if spec.model is None:
        return "ok"
    try:
        _weights(spec, weights_dir)
    except WeightsMissing as missing:
        return f"unavailable: {missing}"
    return "ok"


def load_extractor(name: str, weights_dir: str | Path) -> nn.Module:
    """The extractor network in eval mode, from the weights folder only (``WeightsMissing`` names the fix)."""
    status = extractor_status(name, weights_dir)
    if status != "ok":
        raise WeightsMissing(status.removeprefix("unavailable: "))
    return extractor_from_file(name, _weights(EXTRACTORS[name], weights_dir))


def extractor_from_file(name: str, path: str | Path) -> nn.Module:
    """The extractor network in eval mode from its weights file (the registry file of :data:`EXTRACTORS`).

    ``m3d_clip`` reads the model folder (``config.json`` + weights, :mod:`.m3d_clip`); ``m3d_clip`` and
    ``ct_clip`` (:mod:`.ct_clip`) map ``[N, 1, X, Y, Z]`` RAS+ HU volumes to ``[N, D]`` CLIP image embeddings.
    """
    if name == "radimagenet_resnet50":
        from medsynth.metrics.radimagenet import RadImageNetResNet50

        net = RadImageNetResNet50()
        net.load_state_dict(load_weights(path), strict=True)
        return net.eval().requires_grad_(False)
    if name == "inception":
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                           feature_extractor_weights_path=str(path)).eval()
    if name == "m3d_clip":
        from medsynth.metrics.m3d_clip import load_m3d_clip

        return load_m3d_clip(path)
    if name == "ct_clip":
        from medsynth.metrics.ct_clip import load_ct_clip

        return load_ct_clip(path)
    if name == "self_trained":
        raise ValueError(f"{name}: built by the evaluation stage (the study's downstream encoder), not from weights")
    raise ValueError(f"{name}: no loader for this extractor yet")
