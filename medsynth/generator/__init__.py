"""Glue of the generative core (ViCTr Sec. 3.3 staged training) for the workflow's rules.

* :mod:`.data` - training-set shards -> VAE latents (z-normalised), condition masks at latent size and
  compound text prompts (embedded once per unique prompt); the graded-severity prompt of the target task.
* :mod:`.conditioning` - the prompts' token table: MedSyn2's report conditioning (pre-prompt and report
  encoded separately, concatenated), the no-mask prompt variants of mask dropout, grades from metadata.
* :mod:`.objective` / :mod:`.step` - the training objective (one main term plus extra terms) and
  :class:`GeneratorStep`, the loop's ``loss_step``.
* :mod:`.stages` - one entry function per rule: :func:`run_base`, :func:`run_stage1`,
  :func:`run_stage2` (variant = a named override set of the ``stage2`` config section).
"""

from __future__ import annotations

from medsynth.lazy import lazy_exports

#: public name -> submodule; loaded on first use, so that importing one submodule (e.g. ``medsynth.generator.data``) does
#: not import the others' dependencies (peft, accelerate, transformers)
_EXPORTS = {
    "LatentData": "data",
    "build_latent_data": "data",
    "load_slices": "data",
    "select_rows": "data",
    "severity_fractions": "data",
    "severity_grades": "data",
    "slice_prompts": "data",
    "GeneratorStep": "step",
    "run_base": "stages",
    "run_stage1": "stages",
    "run_stage2": "stages",
    "variant_config": "stages",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
