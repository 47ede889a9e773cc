"""nnU-Net settings (``downstream.model.params`` of ``type: nnunetv2``; defaults in the schema), the constants of
the adapter and its error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INTENSITY_OFFSET = 2.0  # written intensities x + 2 in [1, 3]: nothing is zero, so nnU-Net never crops
ZSCORE_EPS = 1e-8  # nnunetv2 ZScoreNormalization's eps (float32)
RECORD = "segmenter.json"  # = medsynth.downstream.model.CONFIG
MODEL_SUBDIR = "nnunet"
PREPROCESSED_MARKER = ".medsynth_preprocessed"
LOG_TAIL_LINES = 40


class NnUNetCommandError(RuntimeError):
    """An nnU-Net subprocess failed; the message names the command, its exit code and its last output lines."""


def default_nnunet_params() -> dict[str, Any]:
    """The schema's defaults of ``downstream.model.params`` for ``type: nnunetv2`` (config/schema.yaml is their
    one home); also :data:`DEFAULT_NNUNET_PARAMS`."""
    from medsynth.settings import section

    return section("downstream", {"model": {"type": "nnunetv2"}})["model"]["params"]


def __getattr__(name: str) -> Any:
    """``DEFAULT_NNUNET_PARAMS``: :func:`default_nnunet_params`, read from the schema when first asked for."""
    if name == "DEFAULT_NNUNET_PARAMS":
        return default_nnunet_params()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def nnunet_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` with the schema's defaults of those left out (:func:`default_nnunet_params`; unknown keys are
    an error), normalised: ``fold`` a string, ``dataset_id`` / ``num_processes`` integers."""
    from medsynth.settings import section

    given = dict(params or {})
    known = default_nnunet_params()
    unknown = set(given) - set(known)
    if unknown:
        raise ValueError(f"unknown nnunetv2 params {sorted(unknown)}; known: {sorted(known)}")
    p = dict(section("downstream", {"model": {"type": "nnunetv2", "params": given}})["model"]["params"])
    p["dataset_id"] = int(p["dataset_id"])
    if not 1 <= p["dataset_id"] <= 999:
        raise ValueError(f"nnunetv2 dataset_id must be in 1..999, got {p['dataset_id']}")
    p["fold"] = str(p["fold"])
    p["num_processes"] = int(p["num_processes"])
    p["plans_overrides"] = dict(p["plans_overrides"] or {})
    return p


def dataset_folder_name(params: Mapping[str, Any]) -> str:
    """``Dataset{id:03d}_{name}`` as nnU-Net names it."""
    return f"Dataset{int(params['dataset_id']):03d}_{params['dataset_name']}"
