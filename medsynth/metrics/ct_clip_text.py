"""CT-CLIP's text encoder (``text_transformer`` + ``to_text_latent``; MedSyn2's T2I CLIP score and zero-shot
classification), loaded from the same ``CT-CLIP_v2.pt`` state dict as the image side (:mod:`.ct_clip`).

Facts from the published code (ibrahimethemhamamci/CT-CLIP, read, not copied):

* ``scripts/run_zero_shot.py``: ``text_encoder = BertModel.from_pretrained("microsoft/BiomedVLP-CXR-BERT-specialized")``
  (a plain transformers ``BertModel``, pooler included), ``resize_token_embeddings(len(tokenizer))``,
  ``BertTokenizer.from_pretrained(<same>, do_lower_case=True)``; ``CTCLIP(dim_text=768, dim_latent=512,
  extra_latent_projection=False, use_all_token_embeds=False)``.
* ``CT_CLIP/ct_clip/ct_clip.py`` (``CTCLIP.forward``): ``text_transformer(input_ids, attention_mask=...)``
  (no ``token_type_ids``), ``enc_text = output[0]`` (``last_hidden_state``), ``text_embeds = enc_text[:, 0, :]``
  (the [CLS] token), ``to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)``, ``l2norm``; the
  logits are ``einsum('b d, b d -> b', text_latents, image_latents) * temperature.exp()`` (``temperature``:
  a learned scalar of the state dict, initialised to 1).
* ``scripts/zero_shot.py``: text tokenised with ``padding="max_length", truncation=True, max_length=512``.
* ``scripts/data_inference_nii.py``: the report text is ``Findings_EN`` + ``Impressions_EN`` concatenated
  with no separator (a part equal to ``"Not given."`` becomes empty), then ``"``, ``'``, ``(`` and ``)`` are
  removed (:func:`ct_clip_report_text`). (Training, ``scripts/data.py``, used the findings alone.)
* CT-CLIP issue #47: the released ``CT-CLIP_v2.pt`` holds ``text_transformer.embeddings.position_ids`` (saved
  by an older transformers, where that buffer was persistent); it is checked to be ``arange`` and set aside.

The Bert sizes are read from the tensors (:meth:`CTClipTextConfig.from_state_dict`); the head count is not in
any tensor shape: it comes from ``heads=``, else the tokenizer folder's ``config.json`` (the ``cxr_bert``
registry folder has CXR-BERT's, 12 heads) when its ``hidden_size`` matches, else BERT's 64-wide heads
(``hidden // 64``: 768 -> 12). Activation (gelu) and ``layer_norm_eps`` (1e-12) are BERT's / CXR-BERT's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medsynth.io.state_dict import load_weights
from medsynth.metrics.clip_weights import CheckpointLayoutError, load_image_side

__all__ = ["CTClipTextConfig", "CTClipTextEncoder", "TEXT_UNUSED_PREFIXES", "ct_clip_report_text",
           "load_ct_clip_text", "text_encoder_status"]

T = "text_transformer."
POSITION_IDS = f"{T}embeddings.position_ids"
TEXT_UNUSED_PREFIXES = ("visual_transformer.", "to_visual_latent.", "to_visual_latent_extra.",
                        "to_text_latent_extra.", POSITION_IDS, f"{T}embeddings.token_type_ids")
"""Keys of ``CT-CLIP_v2.pt`` outside the text path (image side, CLOOB copies, persistent-buffer leftovers)."""
MAX_LENGTH = 512  # zero_shot.py's tokenizer max_length
SHAPE_KEYS = (f"{T}embeddings.word_embeddings.weight", f"{T}embeddings.position_embeddings.weight",
              f"{T}embeddings.token_type_embeddings.weight", f"{T}encoder.layer.0.intermediate.dense.weight",
              "to_text_latent.weight")


@dataclass(frozen=True)
class CTClipTextConfig:
    """The text tower's sizes (defaults: CXR-BERT-specialized inside ``CT-CLIP_v2.pt``)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dim_latent: int = 512
    pooler: bool = True

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], heads: int | None = None,
                        source: str = "checkpoint") -> CTClipTextConfig:
        """Sizes from the tensors; ``heads``: given, else ``hidden // 64`` (see the module docstring)."""
        missing = [k for k in SHAPE_KEYS if k not in state]
        if missing:
            raise CheckpointLayoutError(
                f"{source} has no CT-CLIP text side: missing {', '.join(missing)} (CT-CLIP_v2.pt holds the "
                f"CXR-BERT tower under {T!r} and to_text_latent.weight)")
        vocab, hidden = state[SHAPE_KEYS[0]].shape
        prefix = f"{T}encoder.layer."
        layers = len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})
        heads = heads or max(1, hidden // 64)
        if hidden % heads:
            raise CheckpointLayoutError(f"{source}: hidden size {hidden} is not divisible by {heads} heads")
        return cls(vocab_size=vocab, hidden_size=hidden, num_layers=layers, heads=heads,
                   intermediate_size=state[SHAPE_KEYS[3]].shape[0],
                   max_position_embeddings=state[SHAPE_KEYS[1]].shape[0],
                   type_vocab_size=state[SHAPE_KEYS[2]].shape[0], dim_latent=state[SHAPE_KEYS[4]].shape[0],
                   pooler=f"{T}pooler.dense.weight" in state)

    def bert_config(self):
        """The transformers ``BertConfig`` of these sizes (gelu, ``layer_norm_eps`` 1e-12: BERT's)."""
        from transformers import BertConfig

        return BertConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                          num_hidden_layers=self.num_layers, num_attention_heads=self.heads,
                          intermediate_size=self.intermediate_size, hidden_act="gelu",
                          max_position_embeddings=self.max_position_embeddings,
                          type_vocab_size=self.type_vocab_size, layer_norm_eps=1e-12)


class CTClipTextEncoder(nn.Module):
    """CTCLIP's ``text_transformer`` (``BertModel``), ``to_text_latent``, ``temperature``: texts -> ``[N, latent]``."""

    def __init__(self, cfg: CTClipTextConfig | None = None, tokenizer=None) -> None:
        super().__init__()
        from transformers import BertModel

        self.config = cfg or CTClipTextConfig()
        self.text_transformer = BertModel(self.config.bert_config(), add_pooling_layer=self.config.pooler)
        self.to_text_latent = nn.Linear(self.config.hidden_size, self.config.dim_latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.tokenizer = tokenizer

    @property
    def feature_dim(self) -> int:
        """Length of one text embedding."""
        return self.config.dim_latent

    @property
    def max_length(self) -> int:
        """Tokens per text: CT-CLIP's 512, or fewer when the position table is shorter."""
        return min(MAX_LENGTH, self.config.max_position_embeddings)

    @property
    def logit_scale(self) -> float:
        """``temperature.exp()``: CTCLIP's factor on the cosine similarities before the zero-shot softmax."""
        return float(self.temperature.detach().exp())

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` as ``zero_shot.py`` makes them (padded to ``max_length``)."""
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer: load the encoder with load_ct_clip_text(checkpoint, tokenizer_dir)")
        enc = self.tokenizer(list(texts), return_tensors="pt", padding="max_length", truncation=True,
                             max_length=self.max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def embed_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[CLS] of ``last_hidden_state``, projected, L2-normalised: ``[N, dim_latent]``."""
        hidden = self.text_transformer(input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.to_text_latent(hidden[:, 0]), dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """Texts -> unit-norm CT-CLIP text embeddings ``[N, dim_latent]`` (no gradients, on the weights' device)."""
        device = self.to_text_latent.weight.device
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), int(batch_size)):
                tok = self.tokenize(texts[i:i + int(batch_size)])
                out.append(self.embed_tokens(tok["input_ids"].to(device), tok["attention_mask"].to(device)))
        if not out:
            return torch.zeros(0, self.feature_dim, device=device)
        return torch.cat(out)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(texts)


def ct_clip_report_text(findings: str | None, impressions: str | None) -> str:
    """The report text CT-CLIP's inference dataset builds (``data_inference_nii.py``, module docstring)."""
    parts = ["" if str(p) == "Not given." else str(p) for p in (findings, impressions) if p is not None]
    text = "".join(parts)
    for char in "\"'()":
        text = text.replace(char, "")
    return text


def _heads_from_folder(tokenizer_dir: Path, hidden: int) -> int | None:
    path = tokenizer_dir / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    if cfg.get("hidden_size", hidden) != hidden or not cfg.get("num_attention_heads"):
        return None
    return int(cfg["num_attention_heads"])


def load_tokenizer(tokenizer_dir: str | Path):
    """CT-CLIP's ``BertTokenizer(do_lower_case=True)`` from a local folder (CXR-BERT's ``vocab.txt``); no download."""
    from transformers import BertTokenizer

    folder = Path(tokenizer_dir)
    if not (folder / "vocab.txt").is_file():
        raise FileNotFoundError(f"{folder} has no vocab.txt: it is not the CXR-BERT tokenizer folder "
                                "(registry model cxr_bert)")
    return BertTokenizer.from_pretrained(str(folder), do_lower_case=True, local_files_only=True)


def load_ct_clip_text(checkpoint_path: str | Path, tokenizer_dir: str | Path,
                      heads: int | None = None) -> CTClipTextEncoder:
    """The text encoder in eval mode from ``CT-CLIP_v2.pt`` (safe loading, strict) and the tokenizer folder.

    Raises :class:`~.clip_weights.CheckpointLayoutError` naming the missing / unexpected text keys.
    """
    source = str(checkpoint_path)
    state = load_weights(checkpoint_path)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if SHAPE_KEYS[0] in state:
        heads = heads or _heads_from_folder(Path(tokenizer_dir), state[SHAPE_KEYS[0]].shape[1])
    cfg = CTClipTextConfig.from_state_dict(state, heads, source)
    if POSITION_IDS in state:
        ids = state[POSITION_IDS].reshape(-1)
        if not torch.equal(ids.long(), torch.arange(len(ids))):
            raise CheckpointLayoutError(f"{source}: {POSITION_IDS} is not 0..{len(ids) - 1}")
    tokenizer = load_tokenizer(tokenizer_dir)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens, the checkpoint's "
                         f"embedding table {cfg.vocab_size} rows: not CT-CLIP's tokenizer")
    net = CTClipTextEncoder(cfg, tokenizer)
    load_image_side(net, state, unused=TEXT_UNUSED_PREFIXES, source=source)  # strict, text side only
    return net.eval().requires_grad_(False)


def text_encoder_status(checkpoint_path: str | Path | None, tokenizer_dir: str | Path | None,
                        key: str = "metrics.ct_clip_pretrained_path",
                        tokenizer_key: str = "metrics.ct_clip_tokenizer_path") -> str:
    """``"ok"`` or ``"unavailable: <reason>"`` for the CT-CLIP text side (checkpoint file + tokenizer folder)."""
    if checkpoint_path is None:
        return f"unavailable: {key} is not set (registry model ct_clip: models/CT-CLIP-Related/CT-CLIP_v2.pt)"
    if not Path(checkpoint_path).is_file():
        return f"unavailable: {key} = {str(checkpoint_path)!r} is not a file (fetch registry model ct_clip)"
    if tokenizer_dir is None:
        return f"unavailable: {tokenizer_key} is not set (the CXR-BERT tokenizer folder: registry model cxr_bert)"
    if not (Path(tokenizer_dir) / "vocab.txt").is_file():
        return (f"unavailable: {tokenizer_key} = {str(tokenizer_dir)!r} has no vocab.txt "
                "(fetch registry model cxr_bert)")
    return "ok"
