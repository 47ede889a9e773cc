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

__all__ = ["SCHEMA", "section"]

#: the study config's JSON schema (YAML)
SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


def section(name: str, values: Mapping | None = None) -> dict:
    """Config section ``name`` with ``values`` and every default of the schema filled in (validated:
    an unknown key or a wrong type raises). A complete section comes back unchanged."""
    from snakemake.utils import validate

    config = {"study": "section-defaults", "datasets": ["example"], name: copy.deepcopy(dict(values or {}))}
    validate(config, str(SCHEMA))
    return config[name]
