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


#: completed sections by (name, the given values' canonical form): a validation reads and compiles the
#: schema (~0.2 s), and stage functions complete their sections on every call
_COMPLETED: dict[tuple[str, tuple], dict] = {}


def section(name: str, values: Mapping | None = None) -> dict:
    """Config section ``name`` with ``values`` and every default of the schema filled in (validated:
    an unknown key or a wrong type raises). A complete section comes back unchanged. Each call returns its
    own copy; the same values (types included) are not validated again in this process."""
    from snakemake.utils import validate

    given = copy.deepcopy(dict(values or {}))
    key = (name, _canonical(given))
    if key in _COMPLETED:
        return copy.deepcopy(_COMPLETED[key])
    config = {"study": "section-defaults", "datasets": ["example"], name: given}
    validate(config, str(SCHEMA))
    _COMPLETED[key] = copy.deepcopy(config[name])
    return config[name]


def _canonical(value) -> tuple:
    """A hashable form of a config value that keeps types (``{1: x}`` and ``{"1": x}``, ``1`` and ``1.0``
    and ``True`` differ) and ignores dict order."""
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((_canonical(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_canonical(v) for v in value))
    return (type(value).__name__, repr(value))


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
