"""Tiny checkpoint folders with the real repository layout of each ViCTr backbone's pipeline.

Each ``make_tiny_<name>(folder)`` writes what the Hugging Face repository of that registry entry holds
(``model_index.json``, ``unet/`` or ``transformer/``, ``vae/``, every ``text_encoder*/`` and
``tokenizer*/`` folder, ``scheduler/``, plus a file a fine-tuning run does not fetch), made with the real
diffusers / transformers classes at tiny sizes, and returns every file (repo path -> bytes) for the Hub
stand-in. Tokenizers: CLIP's BPE over the 256 byte symbols (no merges) and a T5 unigram model over
printable characters (``tokenizer.json``, as the SD3 / Flux repositories ship T5's tokenizer).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

#: CLIP text width of the tiny pipelines (SD 1.5, SDXL, Flux); SD3's two CLIPs are half as wide
TEXT_DIM = 32


def clip_tokenizer():
    """A CLIP BPE tokenizer over the 256 byte symbols (and their word-final forms), CLIP's special tokens."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    """A T5 tokenizer (unigram, Metaspace, ``</s>`` appended; pad 0, eos 1, unk 2) over printable characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    return T5Tokenizer(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def _clip(folder: Path, tokenizer, hidden: int = TEXT_DIM, projection: int | None = None) -> None:
    """A 2-layer CLIP text encoder (with a text projection when ``projection`` is given)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = tokenizer.get_vocab()
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            projection_dim=projection or hidden, bos_token_id=vocab["<|startoftext|>"],
                            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).save_pretrained(folder)


def _t5(folder: Path, tokenizer, d_model: int = TEXT_DIM) -> None:
    """A 2-layer T5 encoder (T5 v1.1's gated-gelu feed-forward, as T5-XXL)."""
    from transformers import T5Config, T5EncoderModel

    T5EncoderModel(T5Config(vocab_size=len(tokenizer.get_vocab()), d_model=d_model, d_kv=8, d_ff=2 * d_model,
                            num_layers=2, num_heads=2, feed_forward_proj="gated-gelu", pad_token_id=0,
                            eos_token_id=1)).save_pretrained(folder)


def _vae(folder: Path, latent_channels: int = 4, flow: bool = False) -> None:
    """A KL VAE, 4x downsampling (32 px -> 8 px latents); ``flow``: SD3 / Flux's (16 channels, shift, no quant convs)."""
    from diffusers import AutoencoderKL

    extra = {"shift_factor": 0.0609, "scaling_factor": 1.5305, "use_quant_conv": False,
             "use_post_quant_conv": False} if flow else {}
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(16, 32, 32),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=1, norm_num_groups=8, sample_size=32, **extra).save_pretrained(folder)


def _index(folder: Path, pipeline: str, parts: dict) -> None:
    import diffusers

    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline,
                                                         "_diffusers_version": diffusers.__version__, **parts}))


def _files(folder: Path) -> dict[str, bytes]:
    (folder / "README.md").write_text(f"# tiny stand-in of {folder.name}\n")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _unet(folder: Path, cross_attention_dim: int, **extra) -> None:
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32),
                         layers_per_block=1, norm_num_groups=8, cross_attention_dim=cross_attention_dim,
                         attention_head_dim=8, **extra).save_pretrained(folder)


def make_tiny_sd15(folder: Path) -> dict[str, bytes]:
    """Stable Diffusion 1.5: UNet, CLIP-L, KL VAE (4 latent channels), PNDM scheduler."""
    from diffusers import PNDMScheduler

    torch.manual_seed(0)
    _unet(folder / "unet", TEXT_DIM)
    _vae(folder / "vae")
    tok = clip_tokenizer()
    tok.save_pretrained(folder / "tokenizer")
    _clip(folder / "text_encoder", tok)
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1, num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    _index(folder, "StableDiffusionPipeline", {
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    (folder / "v1-5-pruned-emaonly.safetensors").write_bytes(b"\0" * 4096)  # the single-file checkpoint
    return _files(folder)


def make_tiny_sdxl(folder: Path) -> dict[str, bytes]:
    """SDXL base: UNet with the text_time embedding (pooled CLIP-G + six micro conditions), CLIP-L and
    CLIP-G with projection (their penultimate states side by side), KL VAE, Euler scheduler."""
    from diffusers import EulerDiscreteScheduler

    torch.manual_seed(0)
    _unet(folder / "unet", 2 * TEXT_DIM, addition_embed_type="text_time", addition_time_embed_dim=8,
          projection_class_embeddings_input_dim=TEXT_DIM + 6 * 8)
    _vae(folder / "vae")
    for n in ("", "_2"):
        tok = clip_tokenizer()
        tok.save_pretrained(folder / f"tokenizer{n}")
        _clip(folder / f"text_encoder{n}", tok, projection=TEXT_DIM if n else None)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                           timestep_spacing="leading").save_pretrained(folder / "scheduler")
    _index(folder, "StableDiffusionXLPipeline", {
        "feature_extractor": [None, None], "image_encoder": [None, None], "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})
    (folder / "sd_xl_base_1.0.safetensors").write_bytes(b"\0" * 4096)
    return _files(folder)


def make_tiny_sd3(folder: Path) -> dict[str, bytes]:
    """SD3 medium: MMDiT transformer, CLIP-L and CLIP-G with projection (pooled side by side), T5, a 16-channel
    VAE, the flow-matching Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(0)
    half = TEXT_DIM // 2
    SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                          caption_projection_dim=16, pooled_projection_dim=2 * half,
                          pos_embed_max_size=16).save_pretrained(folder / "transformer")
    _vae(folder / "vae", 16, flow=True)
    for n in ("", "_2"):
        tok = clip_tokenizer()
        tok.save_pretrained(folder / f"tokenizer{n}")
        _clip(folder / f"text_encoder{n}", tok, hidden=half, projection=half)
    tok = t5_tokenizer()
    tok.save_pretrained(folder / "tokenizer_3")
    _t5(folder / "text_encoder_3", tok)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "scheduler")
    _index(folder, "StableDiffusion3Pipeline", {
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})
    (folder / "sd3_medium.safetensors").write_bytes(b"\0" * 4096)
    return _files(folder)


def make_tiny_pixart(folder: Path) -> dict[str, bytes]:
    """PixArt-alpha: DiT with cross-attention to T5 tokens and a learned-variance head (out 2 x 4 channels),
    T5, KL VAE, DPM-Solver scheduler."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    torch.manual_seed(0)
    PixArtTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2,
                             attention_head_dim=8, num_attention_heads=2, cross_attention_dim=16,
                             caption_channels=TEXT_DIM).save_pretrained(folder / "transformer")
    _vae(folder / "vae")
    tok = t5_tokenizer()
    tok.save_pretrained(folder / "tokenizer")
    _t5(folder / "text_encoder", tok)
    DPMSolverMultistepScheduler().save_pretrained(folder / "scheduler")
    _index(folder, "PixArtAlphaPipeline", {
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"], "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    return _files(folder)


def make_tiny_flux(folder: Path) -> dict[str, bytes]:
    """FLUX.1-dev: guidance-distilled transformer on 2x2-packed 16-channel latents, CLIP-L (pooled) and T5
    (tokens), a 16-channel VAE, the flow-matching Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(0)
    FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
                           guidance_embeds=True, axes_dims_rope=(4, 6, 6)).save_pretrained(folder / "transformer")
    _vae(folder / "vae", 16, flow=True)
    tok = clip_tokenizer()
    tok.save_pretrained(folder / "tokenizer")
    _clip(folder / "text_encoder", tok)
    tok = t5_tokenizer()
    tok.save_pretrained(folder / "tokenizer_2")
    _t5(folder / "text_encoder_2", tok)
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).save_pretrained(folder / "scheduler")
    _index(folder, "FluxPipeline", {
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    (folder / "flux1-dev.safetensors").write_bytes(b"\0" * 4096)
    return _files(folder)


#: registry name -> (builder, diffusers pipeline class)
TINY_PIPELINES = {
    "sd15": (make_tiny_sd15, "StableDiffusionPipeline"),
    "sdxl": (make_tiny_sdxl, "StableDiffusionXLPipeline"),
    "sd3": (make_tiny_sd3, "StableDiffusion3Pipeline"),
    "pixart_alpha": (make_tiny_pixart, "PixArtAlphaPipeline"),
    "flux": (make_tiny_flux, "FluxPipeline"),
}
