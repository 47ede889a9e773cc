"""Checkpoints of the training loop (``<checkpoints>/step-XXXXXX``, written by ``accelerator.save_state``),
the fingerprint that decides whether one may be resumed, and the saved final model."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from medsynth.fsutil import atomic_dir

__all__ = ["CHECKPOINT_PATTERN", "latest_checkpoint", "list_checkpoints", "run_fingerprint", "save_model"]

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{6,})$")


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints in the folder ``root`` (a run's ``checkpoints/``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
             and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint in ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def run_fingerprint(*settings: Any, files: Sequence[str | os.PathLike] = ()) -> str:
    """Identity of a training run's inputs: JSON of ``settings`` + (path, size, mtime) of every file.

    Used as :attr:`TrainConfig.fingerprint`: a checkpoint is resumed only by a run with the same
    fingerprint, so checkpoints left by a run with other settings or other input files (regenerated
    since) are never continued. Folders contribute every file below them.
    """
    import hashlib

    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(str(f) for f in files):
        path = Path(name)
        members = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
        for q in members:
            st = q.stat()
            h.update(f"{q}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _has_lora(model: nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def save_model(model: nn.Module, out_dir: str | Path, extra_files: Mapping[str, str] | None = None) -> Path:
    """Save a trained model to ``out_dir`` (a model with ``saved_module()`` saves that module instead).

    * model with LoRA adapters: the adapter only (``adapter_model.safetensors`` +
      ``adapter_config.json``, :func:`medsynth.train.lora.save_lora`); the base is the stage-1 model.
    * diffusers ``ModelMixin``: ``save_pretrained`` (safetensors + ``config.json``).
    * anything else: ``model.safetensors`` (state dict) + ``config.json`` (class and, when present, its
      ``config``).

    ``extra_files`` (name -> text) are written beside them. The files are written into a temporary
    folder renamed to ``out_dir`` when complete: a process killed while saving leaves no ``out_dir``.
    """
    out = Path(out_dir)
    if hasattr(model, "saved_module"):  # a container of several trained players (DMD): save the one it names
        model = model.saved_module()
    with atomic_dir(out) as tmp:
        _write_model(model, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out


def _write_model(model: nn.Module, out: Path) -> None:
    """The files of :func:`save_model` in ``out``."""
    if _has_lora(model):
        from medsynth.train.lora import save_lora

        save_lora(model, out)
        return
    try:
        from diffusers import ModelMixin
    except ImportError:  # pragma: no cover - diffusers is a dependency
        ModelMixin = ()  # type: ignore[assignment]
    if ModelMixin and isinstance(model, ModelMixin):
        model.save_pretrained(str(out), safe_serialization=True)
        return
    from safetensors.torch import save_model as st_save_model

    st_save_model(model, str(out / "model.safetensors"))
    cfg = getattr(model, "config", None)
    try:
        cfg_json = json.loads(json.dumps(dict(cfg) if cfg is not None else {}, default=str))
    except (TypeError, ValueError):
        cfg_json = {"repr": repr(cfg)}
    meta = {"class": f"{type(model).__module__}.{type(model).__qualname__}", "config": cfg_json}
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
