"""The schema (``config/schema.yaml``) as the one home of every default, for code called outside a workflow.

The workflow validates the whole study config (``Snakefile``: ``validate(config, "config/schema.yaml")``),
which fills in every default, so a rule's task hands the package complete sections. A caller of a stage
function outside the workflow (a notebook, the tests) may pass only the keys it changes: the function
completes its section with :func:`section`, so the defaults it trains with are the schema's, never a
second set written in the code.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SCHEMA", "check_frozen_vae", "section"]

#: the study config's JSON schema (YAML)
SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


def section(name: str, values: Mapping | None = None) -> dict:
    """Config section ``name`` with ``values`` and every default of the schema filled in (validated:
    an unknown key or a wrong type raises). A complete section comes back unchanged."""
    from snakemake.utils import validate

    config = {"study": "section-defaults", "datasets": ["example"], name: copy.deepcopy(dict(values or {}))}
    validate(config, str(SCHEMA))
    return config[name]


def check_frozen_vae(cfg: Mapping, name: str = "vae") -> None:
    """Refuse ``steps: 0`` (frozen: the pretrained VAE as released, no tuning) without ``model.pretrained``:
    a frozen random VAE is meaningless. ``cfg``: config section ``name`` (``vae`` or ``volumes.vae``); the study
    (:class:`medsynth.study.Study`) calls this when the workflow reads the config, :func:`medsynth.vae.models.vae_section` when a stage
    does. The schema cannot say it in words."""
    model = cfg.get("model") or {}
    if cfg.get("steps") == 0 and not model.get("pretrained"):
        raise ValueError(
            f"{name}.steps: 0 freezes the VAE (used as released, no tuning), but {name}.model.pretrained is "
            f"{model.get('pretrained')!r}: a frozen randomly initialised VAE is meaningless; set "
            f"{name}.model.pretrained to the released weights (e.g. a registry model) or {name}.steps >= 1")
