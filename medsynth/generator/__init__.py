"""Glue of the generative core (ViCTr Sec. 3.3 staged training) for the workflow's rules.

* :mod:`.data` - training-set shards -> VAE latents (z-normalised), condition masks at latent size and
  compound text prompts (embedded once per unique prompt); the graded-severity prompt of the target task.
* :mod:`.objective` / :mod:`.step` - the training objective (one main term plus extra terms) and
  :class:`GeneratorStep`, the loop's ``loss_step``.
* :mod:`.stages` - one entry function per rule: :func:`run_base`, :func:`run_stage1`,
  :func:`run_stage2` (variant = a named override set of the ``stage2`` config section).
"""

from .data import (
    LatentData,
    build_latent_data,
    load_slices,
    select_rows,
    severity_fractions,
    severity_grades,
    slice_prompts,
)
from .step import GeneratorStep
from .stages import run_base, run_stage1, run_stage2, variant_config

__all__ = [
    "GeneratorStep",
    "LatentData",
    "build_latent_data",
    "load_slices",
    "run_base",
    "run_stage1",
    "run_stage2",
    "select_rows",
    "severity_fractions",
    "severity_grades",
    "slice_prompts",
    "variant_config",
]
