"""Elastic Weight Consolidation for ViCTr stage 1 (Sec. 3.3: "crucial layers are selectively unfrozen
based on elastic weight consolidation").

Three pieces:

* :func:`fisher_diagonal` - the diagonal empirical Fisher information of the *base* generator on its
  *own* data (``F_i = E_batch[(dL/dtheta_i)^2]``).
* :func:`select_layers` - which layers stage 1 unfreezes: the groups (modules by default) with the
  highest **mean** Fisher. See its docstring for the reading of ViCTr's one-sentence description.
* :func:`ewc_penalty` - ``lam / 2 * sum_i F_i (theta_i - theta*_i)^2`` (Kirkpatrick et al. 2017), which
  keeps the unfrozen layers near the base weights ``theta*`` while they adapt.

:func:`anchor_parameters`, :func:`unfreeze` and :func:`save_ewc` / :func:`load_ewc` are the glue: take the
base weights, set ``requires_grad`` for the selected groups, and keep Fisher + anchor next to a run so
that a resumed run uses exactly the same penalty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "Granularity",
    "unwrap_model",
    "fisher_diagonal",
    "group_name",
    "group_scores",
    "select_layers",
    "unfreeze",
    "anchor_parameters",
    "ewc_penalty",
    "save_ewc",
    "load_ewc",
]

Granularity = Literal["parameter", "module", "block"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    parameter_names: Iterable[str] | None = None,
    eval_mode: bool = True,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over ``batches`` of the squared gradient of ``loss_fn(model, batch)``.

    ``loss_fn`` returns a scalar loss for one batch (for a flow model: the rectified-flow loss with its
    own seeded ``t``/noise draws, so that the estimate is reproducible). One backward pass per batch;
    ``F_i = (1/B) sum_b (dL_b/dtheta_i)^2``. With batches of one sample this is the textbook per-sample
    empirical Fisher; with larger batches it is the (cheaper, smaller-variance-weighted) mini-batch
    version - both are non-negative and rank parameters the same way in expectation up to a
    per-batch-size factor, which is all :func:`select_layers` and :func:`ewc_penalty` need.

    Returned tensors are float32 on the CPU, keyed by parameter name (wrappers stripped), for every
    parameter in ``parameter_names`` (default: all parameters). The model's ``requires_grad`` flags,
    gradients and train/eval mode are restored afterwards; ``eval_mode`` disables dropout during the
    estimate (Fisher of the deterministic network).
    """
    model = unwrap_model(model)
    named = dict(model.named_parameters())
    names = list(named) if parameter_names is None else list(parameter_names)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise KeyError(f"unknown parameter names: {unknown[:5]}")
    saved_flags = {n: p.requires_grad for n, p in named.items()}
    saved_grads = {n: p.grad for n, p in named.items()}
    was_training = model.training
    wanted = set(names)
    for n, p in named.items():
        p.requires_grad_(n in wanted)
        p.grad = None
    fisher = {n: torch.zeros_like(named[n], dtype=torch.float32, device="cpu") for n in names}
    count = 0
    try:
        if eval_mode:
            model.eval()
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    fisher[n] += g.detach().float().pow(2).cpu()
            count += 1
    finally:
        model.train(was_training)
        for n, p in named.items():
            p.requires_grad_(saved_flags[n])
            p.grad = saved_grads[n]
    if count == 0:
        raise ValueError("fisher_diagonal needs at least one batch")
    return {n: f / count for n, f in fisher.items()}


def group_name(parameter_name: str, granularity: Granularity = "module", block_depth: int = 2) -> str:
    """The group a parameter belongs to.

    * ``"parameter"``: the parameter itself (``down_blocks.0.resnets.0.conv1.weight``).
    * ``"module"``: the module that owns it (``down_blocks.0.resnets.0.conv1``) - a conv, linear or
      norm layer.
    * ``"block"``: the first ``block_depth`` name components (``down_blocks.0`` for depth 2), i.e. a
      coarse architectural block.
    """
    if granularity == "parameter":
        return parameter_name
    parts = parameter_name.split(".")
    if granularity == "module":
        return ".".join(parts[:-1]) if len(parts) > 1 else parameter_name
    if granularity == "block":
        return ".".join(parts[: min(block_depth, max(len(parts) - 1, 1))])
    raise ValueError(f"unknown granularity {granularity!r}")


def group_scores(
    fisher: Mapping[str, torch.Tensor], granularity: Granularity = "module", block_depth: int = 2
) -> dict[str, float]:
    """Mean Fisher per group: ``sum of F over the group's elements / number of elements``."""
    sums: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name, f in fisher.items():
        g = group_name(name, granularity, block_depth)
        sums[g] = sums.get(g, 0.0) + float(f.double().sum())
        sizes[g] = sizes.get(g, 0) + f.numel()
    return {g: sums[g] / max(sizes[g], 1) for g in sums}


def select_layers(
    fisher: Mapping[str, torch.Tensor],
    top_fraction: float | None = None,
    top_k: int | None = None,
    granularity: Granularity = "module",
    *,
    block_depth: int = 2,
    largest: bool = True,
) -> list[str]:
    """Names of the groups stage 1 unfreezes, highest mean Fisher first.

    Reading of ViCTr (Sec. 3.3 says only "crucial layers are selectively unfrozen based on elastic
    weight consolidation"): the base generator's Fisher on its own data measures how strongly each
    parameter's loss depends on it; the *crucial* layers are those with the highest Fisher, so they are
    the ones that are unfrozen - and because they are crucial, :func:`ewc_penalty` with the same Fisher
    anchors them to the base weights while they adapt (the large-F parameters get the stiffest springs).
    All other layers stay frozen. Groups are ranked by the **mean** Fisher over their elements, not the
    sum, so that a layer is not chosen merely for being big. The opposite reading (unfreeze the
    *least* important layers, i.e. free capacity) is available with ``largest=False``.

    Exactly one of ``top_fraction`` (fraction of the groups, rounded up, at least one) or ``top_k``
    (number of groups) must be given. ``granularity`` is ``"module"`` (default: leaf conv/linear/norm
    layers), ``"parameter"`` or ``"block"`` (first ``block_depth`` name components). Ties are broken by
    name so the choice is deterministic.
    """
    if (top_fraction is None) == (top_k is None):
        raise ValueError("give exactly one of top_fraction or top_k")
    scores = group_scores(fisher, granularity, block_depth)
    if not scores:
        return []
    if top_fraction is not None:
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        k = max(1, math.ceil(top_fraction * len(scores)))
    else:
        if top_k is None or top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(int(top_k), len(scores))
    sign = -1.0 if largest else 1.0
    ranked = sorted(scores, key=lambda g: (sign * scores[g], g))
    return ranked[:k]


def _in_group(parameter_name: str, group: str) -> bool:
    return parameter_name == group or parameter_name.startswith(group + ".")


def unfreeze(model: nn.Module, selected: Iterable[str]) -> list[str]:
    """Set ``requires_grad`` True for parameters inside the selected groups, False elsewhere.

    ``selected`` holds names from :func:`select_layers` (any granularity: a parameter name or a module /
    block prefix). Returns the names of the trainable parameters.
    """
    groups = list(selected)
    trainable = []
    for name, p in unwrap_model(model).named_parameters():
        on = any(_in_group(name, g) for g in groups)
        p.requires_grad_(on)
        if on:
            trainable.append(name)
    return trainable


def anchor_parameters(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Detached copies ``theta*`` of the (base) parameters, by name (default: all)."""
    named = dict(unwrap_model(model).named_parameters())
    keys = list(named) if names is None else list(names)
    return {n: named[n].detach().clone() for n in keys}


def ewc_penalty(
    model: nn.Module,
    anchor_params: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
    lam: float,
) -> torch.Tensor:
    """``lam / 2 * sum_i F_i (theta_i - theta*_i)^2`` over the parameters present in both ``anchor_params``
    and ``fisher`` (differentiable in the model's parameters).

    Exactly zero at the anchor; quadratic in the displacement. Anchor/Fisher tensors are moved to each
    parameter's device and dtype on the fly.
    """
    named = dict(unwrap_model(model).named_parameters())
    total: torch.Tensor | None = None
    for name, theta_star in anchor_params.items():
        if name not in fisher:
            continue
        if name not in named:
            raise KeyError(f"anchor parameter {name!r} not in model")
        p = named[name]
        f = fisher[name].to(device=p.device, dtype=p.dtype)
        term = (f * (p - theta_star.to(device=p.device, dtype=p.dtype)).pow(2)).sum()
        total = term if total is None else total + term
    if total is None:
        some = next(iter(named.values()), None)
        device = some.device if some is not None else "cpu"
        return torch.zeros((), device=device)
    return 0.5 * lam * total


def save_ewc(path: str | Path, fisher: Mapping[str, torch.Tensor], anchor_params: Mapping[str, torch.Tensor],
             selected: Iterable[str] = ()) -> None:
    """Store Fisher, anchor and the selected group names in one safetensors file."""
    from safetensors.torch import save_file

    tensors = {f"fisher/{k}": v.detach().cpu().contiguous() for k, v in fisher.items()}
    tensors.update({f"anchor/{k}": v.detach().cpu().contiguous() for k, v in anchor_params.items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"selected": "\n".join(selected)})


def load_ewc(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Inverse of :func:`save_ewc`: ``(fisher, anchor_params, selected)``."""
    from safetensors import safe_open

    fisher, anchor = {}, {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for key in fh.keys():
            kind, name = key.split("/", 1)
            (fisher if kind == "fisher" else anchor)[name] = fh.get_tensor(key)
    selected = [s for s in meta.get("selected", "").split("\n") if s]
    return fisher, anchor, selected
