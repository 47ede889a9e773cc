"""nnU-Net settings (``downstream.model.params`` of ``type: nnunetv2``), the constants of the adapter and its error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any




DEFAULT_NNUNET_PARAMS: dict[str, Any] = {
    "configuration": "2d",
    "fold": "all",
    "trainer": "nnUNetTrainer",
    "trainer_no_augmentation": "nnUNetTrainerNoDA",
    "device": "cpu",
    "plans": "nnUNetPlans",
    "planner": "ExperimentPlanner",
    "dataset_id": 901,
    "dataset_name": "medsynth",
    "num_processes": 1,
    "plans_overrides": {},
}
INTENSITY_OFFSET = 2.0  # written intensities x + 2 in [1, 3]: nothing is zero, so nnU-Net never crops
ZSCORE_EPS = 1e-8  # nnunetv2 ZScoreNormalization's eps (float32)
RECORD = "segmenter.json"  # = medsynth.downstream.model.CONFIG
MODEL_SUBDIR = "nnunet"
PREPROCESSED_MARKER = ".medsynth_preprocessed"
LOG_TAIL_LINES = 40


class NnUNetCommandError(RuntimeError):
    """An nnU-Net subprocess failed; the message names the command, its exit code and its last output lines."""


def nnunet_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` merged over :data:`DEFAULT_NNUNET_PARAMS` (unknown keys are an error)."""
    p = {**DEFAULT_NNUNET_PARAMS, **dict(params or {})}
    unknown = set(p) - set(DEFAULT_NNUNET_PARAMS)
    if unknown:
        raise ValueError(f"unknown nnunetv2 params {sorted(unknown)}; known: {sorted(DEFAULT_NNUNET_PARAMS)}")
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
