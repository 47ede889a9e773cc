"""Config values that name a registry model: ``pretrained: sd15`` (or ``maisi_vae/models/autoencoder_v1.pt``).

Any ``pretrained`` (or ``*_pretrained_path``, or a segmenter's weights key: TotalSegmentator's
``weights_dir``, lungmask's ``modelpath`` / ``fillmodel_path``, MedPSeg's ``checkpoint``) value anywhere in the config whose first
path segment is a model of the registry, and which is not an existing path, stands for that model's local folder (or a
file inside it). :func:`resolve_pretrained` replaces those values by the folder, so that every consumer
reads local files only, and reports which models each top-level section uses: the rules take their
inventories as inputs, so the weights rule runs first and provenance reaches the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsynth.weights.local import files_path

__all__ = ["is_pretrained_key", "resolve_pretrained"]


#: the segmenters' own names for their weights (``masks.segmenters[].<backend>``)
SEGMENTER_WEIGHT_KEYS = ("weights_dir", "modelpath", "fillmodel_path", "checkpoint")


def is_pretrained_key(key: str) -> bool:
    """Whether a config key holds pretrained weights (``pretrained``, ``perceptual_pretrained_path``,
    ``weights_dir`` of a segmenter...)."""
    return key == "pretrained" or key.endswith("_pretrained_path") or key in SEGMENTER_WEIGHT_KEYS


def _reference(value: Any, registry: dict, base_dir: Path) -> tuple[str, str] | None:
    if not isinstance(value, str) or not value or Path(value).is_absolute() or (base_dir / value).exists():
        return None
    name, _, rest = value.partition("/")
    return (name, rest) if name in registry else None


def resolve_pretrained(config: dict, registry: dict[str, dict], weights_dir: str | Path,
                       base_dir: str | Path = ".") -> dict[str, list[str]]:
    """Replace registry references by local paths, in place; top-level section -> model names it uses."""
    used: dict[str, set[str]] = {}

    def walk(node: Any, section: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            ref = _reference(value, registry, Path(base_dir)) if isinstance(key, str) and is_pretrained_key(key) else None
            if ref is not None:
                name, rest = ref
                folder = files_path(weights_dir, name)
                node[key] = str(folder / rest) if rest else str(folder)
                used.setdefault(section, set()).add(name)
            else:
                walk(value, section)

    for section, value in config.items():
        walk(value, section)
    return {section: sorted(names) for section, names in used.items()}
