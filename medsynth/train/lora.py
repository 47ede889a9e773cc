"""LoRA adapters for ViCTr stage 2 (Sec. 3.3: "phi_adapt is augmented with LoRA modules within the
previously fine-tuned layers. These modules are the only trainable parameters").

Reading: the layers stage 1 unfroze (:func:`medsynth.train.ewc.select_layers`, any granularity) are
searched for the leaf modules that peft's LoRA can wrap - ``nn.Linear``, ``nn.Conv1d/2d/3d`` with
``groups == 1`` - and only those get adapters. Norm layers and biases that stage 1 may also have
unfrozen get no adapter and stay frozen in stage 2. Adapters are injected in place with
:func:`peft.inject_adapter_in_model`, so a diffusers ``ModelMixin`` stays a ``ModelMixin`` (same class,
same ``forward``); at initialisation ``B = 0`` so the adapted model computes exactly the base model.
The frozen ``phi_base`` of the paper is simply a separate copy of the stage-1 model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from medsynth.train.ewc import unwrap_model

__all__ = [
    "SUPPORTED_TYPES",
    "ADAPTER_WEIGHTS",
    "ADAPTER_CONFIG",
    "lora_targets",
    "add_lora",
    "lora_parameters",
    "lora_state_dict",
    "save_lora",
    "load_lora",
    "merge_lora",
]

SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups == 1


def _owner_prefix(name: str, modules: dict[str, nn.Module], params: set[str]) -> str:
    """A selected name may be a parameter (``conv.weight``): map it to its module (``conv``)."""
    if name in params and name not in modules:
        return name.rsplit(".", 1)[0] if "." in name else ""
    return name


def lora_targets(model: nn.Module, selected_module_names: Iterable[str]) -> list[str]:
    """Full names of the LoRA-capable leaf modules inside the selected layers, in model order.

    ``selected_module_names`` are parameter, module or block names (stage-1 selection); a module is
    inside a selection ``s`` if its name is ``s`` or starts with ``s + "."``.
    """
    model = unwrap_model(model)
    modules = dict(model.named_modules())
    params = {n for n, _ in model.named_parameters()}
    prefixes = [_owner_prefix(s, modules, params) for s in selected_module_names]
    out = []
    for name, module in modules.items():
        if not name or not _supported(module):
            continue
        if any(p == "" or name == p or name.startswith(p + ".") for p in prefixes):
            out.append(name)
    return out


def add_lora(
    model: nn.Module,
    targets: Iterable[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    *,
    adapter_name: str = "default",
    init_lora_weights: bool | str = True,
) -> nn.Module:
    """Inject LoRA (``W x + (alpha / rank) B A x``) into exactly the named modules; freeze everything else.

    ``targets`` are full module names (from :func:`lora_targets`); they are matched exactly (a
    ``^(...)$`` regex), never by suffix. The model is modified in place and returned; afterwards only
    ``lora_`` parameters have ``requires_grad``. The peft config is kept on ``model.medsynth_lora_config``.
    """
    names = list(targets)
    if not names:
        raise ValueError("no LoRA targets")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                        target_modules=pattern, init_lora_weights=init_lora_weights, bias="none")
    base = unwrap_model(model)
    inject_adapter_in_model(config, base, adapter_name=adapter_name)
    for name, p in base.named_parameters():
        p.requires_grad_("lora_" in name)
    base.medsynth_lora_config = {"adapter_name": adapter_name, "target_modules": names, "r": int(rank),
                                 "lora_alpha": float(alpha), "lora_dropout": float(dropout)}
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (names containing ``lora_``)."""
    return [p for n, p in unwrap_model(model).named_parameters() if "lora_" in n]


def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter weights only (peft key convention), on the CPU."""
    sd = get_peft_model_state_dict(unwrap_model(model), adapter_name=adapter_name)
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_lora(model: nn.Module, out_dir: str | Path, adapter_name: str = "default") -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (r, alpha, dropout, targets) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = unwrap_model(model)
    config = dict(getattr(base, "medsynth_lora_config", {}))
    config.setdefault("adapter_name", adapter_name)
    save_file(lora_state_dict(base, adapter_name), str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})  # one key: safetensors writes a metadata map in random order
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_lora(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Inject the adapter saved by :func:`save_lora` into a (base) model and load its weights."""
    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    add_lora(model, cfg["target_modules"], cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0),
             adapter_name=cfg.get("adapter_name", "default"))
    result = set_peft_model_state_dict(unwrap_model(model), load_file(str(adapter_dir / ADAPTER_WEIGHTS)),
                                       adapter_name=cfg.get("adapter_name", "default"))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise KeyError(f"unexpected adapter keys: {unexpected[:5]}")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W += scale * B A``) and remove the LoRA wrappers.

    Returns the same model object with plain ``nn.Linear`` / ``nn.Conv*`` layers again.
    """
    base = unwrap_model(model)
    wrapped = [(n, m) for n, m in base.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, module.get_base_layer())
    if hasattr(base, "medsynth_lora_config"):
        del base.medsynth_lora_config
    return model
