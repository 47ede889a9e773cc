"""Replicates of a model: the same training and sampling recipe under another seed (config ``replicates``).

Replicate ``k`` of model ``victr`` is the model ``victr@k`` (``k = 1 .. replicates - 1``); replicate 0 is
the model itself, so ``replicates: 1`` changes no name, seed or file. A replicate re-runs the model's
own training (its stage-2 variant or architecture; the VAE, base and stage-1 models are shared) and its
sampling, with every seed of its training and sampling sections derived from the configured one and ``k``. Torch-free:
the workflow names replicates at DAG time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from medsynth.seeds import derive_seed

__all__ = ["SEPARATOR", "replicate_name", "replicate_names", "replicate_seed", "split_replicate", "with_replicate_seed"]

SEPARATOR = "@"
_NAME = re.compile(rf"^(?P<model>.+){SEPARATOR}(?P<k>[1-9]\d*)$")


def replicate_name(model: str, k: int) -> str:
    """Name of replicate ``k`` of ``model`` (``model`` itself for ``k = 0``)."""
    return model if k == 0 else f"{model}{SEPARATOR}{k}"


def replicate_names(model: str, count: int) -> list[str]:
    """The names of ``count`` replicates of ``model``, replicate 0 (``model``) first."""
    return [replicate_name(model, k) for k in range(max(1, int(count)))]


def split_replicate(name: str) -> tuple[str, int]:
    """``("victr", 2)`` for ``"victr@2"``; ``(name, 0)`` for a name without a replicate index."""
    m = _NAME.match(name)
    return (m["model"], int(m["k"])) if m else (name, 0)


def replicate_seed(seed: int, k: int) -> int:
    """Seed of replicate ``k``: ``seed`` itself for replicate 0, else an independent stream of it."""
    return int(seed) if k == 0 else derive_seed(int(seed), "replicate", int(k))


def with_replicate_seed(section: Mapping, k: int, nested: bool = True) -> dict:
    """``section`` (a training or sampling config) with its ``seed`` - and with ``nested``, every ``seed`` in
    it, e.g. a variant's ``reflow.seed`` - replaced by replicate ``k``'s; unchanged for ``k = 0``."""
    out = {}
    for key, value in section.items():
        if isinstance(value, Mapping) and nested:
            out[key] = with_replicate_seed(value, k)
        elif key == "seed" and value is not None and k:
            out[key] = replicate_seed(value, k)
        else:
            out[key] = value
    return out
