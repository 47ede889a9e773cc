"""What the ``readers`` config section means once the study is known: the model and run shown, the windows,
the pathology channels of a per-pathology draw."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["kit_source", "answers_folder", "kit_windows", "pathology_channels"]


def kit_source(readers: Mapping, models: Sequence[str], default_variants: Sequence[str],
               default_run: str) -> tuple[str, str]:
    """``(model, run)`` whose generated slices the kit shows: config ``readers.model`` / ``readers.run``,
    else the first default stage-2 variant (``stage1`` when there is none) and ``sampling.default_run``."""
    model = readers.get("model") or next(iter(default_variants), "stage1")
    if model not in models:
        raise ValueError(f"readers.model = {model!r} is not a model of this study ({', '.join(models)})")
    return str(model), str(readers.get("run") or default_run)


def answers_folder(readers: Mapping, results: str | Path) -> str:
    """Folder of the answer files (config ``readers.answers``, else ``<results>/readers/answers``)."""
    return str(readers.get("answers") or f"{results}/readers/answers").rstrip("/")


def kit_windows(names: Sequence[str], windows: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """The CT windows offered (``names``, a subset of ``intensity.windows``; empty = all of them, in order)."""
    chosen = list(names) or list(windows)
    unknown = [n for n in chosen if n not in windows]
    if unknown:
        raise ValueError(f"readers.windows {unknown} are not windows of intensity.windows ({', '.join(windows)})")
    if not chosen:
        raise ValueError("the kit needs at least one CT window (intensity.windows is empty)")
    return {n: (float(windows[n][0]), float(windows[n][1])) for n in chosen}


def pathology_channels(pathologies: Sequence[str], names: Sequence[str]) -> dict[str, int]:
    """``readers.pathologies`` as pathology -> channel index in the generated set's condition channels ``names``
    (in the config's order); an unknown name is an error naming the channels there are."""
    unknown = [p for p in pathologies if p not in names]
    if unknown:
        raise ValueError(f"readers.pathologies {unknown} are not condition channels of the generated set "
                         f"({', '.join(names)})")
    return {str(p): list(names).index(p) for p in pathologies}
