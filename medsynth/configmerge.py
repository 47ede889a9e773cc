"""Config override sets (variants, architectures): nested merges, without importing torch.

The Snakefile calls these while it builds the DAG, so this module stays light (stdlib only).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

__all__ = ["deep_merge", "extended_config", "variant_config"]


def deep_merge(base: Mapping, over: Mapping | None) -> dict:
    """``base`` with ``over`` merged in: nested mappings merge key by key, other values replace (copies)."""
    out = copy.deepcopy(dict(base))
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def variant_config(stage2_cfg: Mapping, variants: Mapping, variant: str) -> dict:
    """The ``stage2`` section with the variant's overrides merged in (nested keys merge, others replace)."""
    if variant not in variants:
        raise KeyError(f"variant {variant!r} is not in config `variants` ({sorted(variants)})")
    return deep_merge(stage2_cfg, variants[variant] or {})


def extended_config(path: str, basedir: str) -> str:
    """The file a study config ``extends`` (config key): absolute, or relative to the workflow folder ``basedir``;
    a ``FileNotFoundError`` names it when it is not there (snakemake would skip a missing config file silently)."""
    import os

    full = path if os.path.isabs(path) else os.path.join(basedir, path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"config key extends = {path!r}: no such file ({full}); give a path relative to "
                                f"the workflow folder {basedir}, an absolute path, or null")
    return full
