"""Name lists of the study, each defined once (torch-free: the workflow reads them at DAG time).

The schema's patterns of these names (``sampling.default_run``, ``downstream.settings``, ...) are
checked against these lists by ``tests/test_names.py``.
"""

from __future__ import annotations

__all__ = [
    "FLOW_SAMPLERS",
    "DIFFUSION_SAMPLERS",
    "SAMPLERS",
    "DOWNSTREAM_COMPOSITIONS",
    "MEDDIFF_KINDS",
    "DOWNSTREAM_KINDS",
    "TASK_SEPARATOR",
    "parse_setting",
    "run_pattern",
]

#: ODE samplers of the flow / Tweedie generators (``<sampler>-<steps>``; dopri5 also adaptive: ``dopri5-auto``)
FLOW_SAMPLERS: tuple[str, ...] = ("euler", "heun", "dopri5", "tweedie")
#: Schedulers of the DDPM-objective generators (``ddpm-<steps>``, ``ddim-<steps>``)
DIFFUSION_SAMPLERS: tuple[str, ...] = ("ddpm", "ddim")
SAMPLERS: tuple[str, ...] = FLOW_SAMPLERS + DIFFUSION_SAMPLERS

#: How a downstream training set is composed from real and synthetic slices
DOWNSTREAM_COMPOSITIONS: tuple[str, ...] = ("real", "real_aug", "real_synth", "synth_only")
#: MedDiff-FT settings: synthetic slices from stochastic masks (mg), + feature-space filter and label
#: erosion (mgf), from the guiding-mask (inpainting) condition set (gm); each composes as real_synth
MEDDIFF_KINDS: tuple[str, ...] = ("real_synth_mg", "real_synth_mgf", "real_synth_gm")
#: Every downstream setting kind; a kind with synthetic data is written ``<kind>-<model>``
DOWNSTREAM_KINDS: tuple[str, ...] = DOWNSTREAM_COMPOSITIONS + MEDDIFF_KINDS
#: A downstream setting of a task (config ``downstream.tasks``) is written ``<task>.<setting>``
TASK_SEPARATOR = "."


def parse_setting(setting: str) -> tuple[str | None, str, str | None]:
    """``(task, kind, model)`` of a downstream setting ``[<task>.]<kind>[-<model>]`` (None where absent):
    ``semiseg.real_synth-medsyn2`` -> ``("semiseg", "real_synth", "medsyn2")``, ``real`` -> ``(None, "real", None)``."""
    task, sep, rest = setting.partition(TASK_SEPARATOR)
    if not sep:
        task, rest = None, setting
    kind, _, model = rest.partition("-")
    return task, kind, model or None


def run_pattern() -> str:
    """Regular expression of a sampling run name: ``<sampler>-<steps>`` (``dopri5-50``: fixed steps) or
    ``dopri5-auto`` (adaptive)."""
    return rf"({'|'.join(SAMPLERS)})-\d+|dopri5-auto"
