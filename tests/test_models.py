"""Backbones from config dicts, the uniform ``predict``, save/load round trips, and MedSyn2's DiT switches."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from tiny_backbones import TINY_CONFIGS, TINY_LATENT_CHANNELS, TINY_MASK_CHANNELS, TINY_TEXT_DIM

from medsynth.models.backbones import (
    BackbonePretrainedError,
    build_backbone,
    pack_latents,
    predict,
    spatial_dims,
    supports_text_mask,
    unpack_latents,
)
from medsynth.models.medsyn2_dit import GatedAttention, MedSyn2DiT

B, L = 2, 8


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised layers (adaLN-Zero, ControlNet outputs, ...) random weights so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def inputs(cfg: dict, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    spatial = (16, 16, 16) if spatial_dims(cfg) == 3 else (32, 32)
    z_t = torch.randn(B, TINY_LATENT_CHANNELS, *spatial, generator=g)
    z_m = torch.rand(B, TINY_MASK_CHANNELS, *spatial, generator=g) - 0.5
    text = torch.randn(B, L, TINY_TEXT_DIM, generator=g)
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[:, 5:] = False
    t = torch.tensor([0.3, 0.8])
    control = z_m if cfg["type"] == "maisi_unet3d" else None
    return z_t, z_m, t, text, keep, control


@pytest.fixture(scope="module")
def built() -> dict[str, torch.nn.Module]:
    models = {}
    for name, cfg in TINY_CONFIGS.items():
        torch.manual_seed(0)
        models[name] = randomize(build_backbone(copy.deepcopy(cfg)))
    return models


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_tiny_backbone_predict_shape_time_and_conditioning(name, built):
    cfg, model = TINY_CONFIGS[name], built[name]
    z_t, z_m, t, text, keep, control = inputs(cfg)
    with torch.no_grad():
        out = predict(model, z_t, t, text, keep, control, mask=z_m)  # warm-up
        start = time.perf_counter()
        out = predict(model, z_t, t, text, keep, control, mask=z_m)
        elapsed = time.perf_counter() - start
        # the same through an already concatenated input
        same = predict(model, torch.cat([z_t, z_m], 1), t, text, keep, control)
        other_text = predict(model, z_t, t, torch.randn_like(text), keep, control, mask=z_m)
        other_mask = predict(model, z_t, t, text, keep, control, mask=-z_m)
        other_t = predict(model, z_t, t.flip(0), text, keep, control, mask=z_m)
    assert out.shape == z_t.shape  # latent channels out, not latent + mask
    assert torch.isfinite(out).all() and out.abs().mean() > 0
    assert torch.equal(out, same)
    assert not torch.allclose(out, other_text), "text must condition the output"
    assert not torch.allclose(out, other_mask), "the mask channels must condition the output"
    assert not torch.allclose(out, other_t), "time must condition the output"
    assert elapsed < 1.0, f"{name}: tiny forward took {elapsed:.2f} s"
    if supports_text_mask(model):
        padded = text.clone()
        padded[:, 5:] = torch.randn(B, L - 5, TINY_TEXT_DIM)
        with torch.no_grad():
            assert torch.allclose(predict(model, z_t, t, padded, keep, control, mask=z_m), out, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_save_pretrained_round_trip(name, built, tmp_path):
    cfg, model = TINY_CONFIGS[name], built[name]
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = build_backbone({"type": cfg["type"], "pretrained": str(tmp_path)}).eval()
    assert type(loaded) is type(model)
    z_t, z_m, t, text, keep, control = inputs(cfg, seed=1)
    with torch.no_grad():
        assert torch.equal(predict(model, z_t, t, text, keep, control, mask=z_m),
                           predict(loaded, z_t, t, text, keep, control, mask=z_m))


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_pretrained_gets_zero_initialised_mask_channels(name, built, tmp_path):
    """A checkpoint without mask channels loads with params.in_channels = latent + mask; output unchanged."""
    cfg = copy.deepcopy(TINY_CONFIGS[name])
    params = cfg["params"]["unet_params"] if cfg["type"] == "maisi_unet3d" else cfg["params"]
    full = params["in_channels"]
    params["in_channels"] = full // (TINY_LATENT_CHANNELS + TINY_MASK_CHANNELS) * TINY_LATENT_CHANNELS
    torch.manual_seed(0)
    base = randomize(build_backbone(cfg))
    base.save_pretrained(tmp_path)
    params["in_channels"] = full
    widened = build_backbone({**cfg, "pretrained": str(tmp_path)}, key="model.backbone").eval()
    z_t, z_m, t, text, keep, control = inputs(cfg)
    with torch.no_grad():
        before = predict(base, z_t, t, text, keep, control)
        after = predict(widened, z_t, t, text, keep, control, mask=z_m)
    assert torch.allclose(before, after, atol=1e-5)
    cfg_key = widened.config.unet_params if cfg["type"] == "maisi_unet3d" else widened.config
    assert cfg_key["in_channels"] == full


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_pretrained_offline_failure_names_the_config_key(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"type": "sd3", "params": {}, "pretrained": "stabilityai/no-such-model-offline"}
    with pytest.raises(BackbonePretrainedError, match=r"model\.backbone\.pretrained = 'stabilityai/no-such-model-offline'"):
        build_backbone(cfg, key="model.backbone")


def test_pretrained_params_must_agree(built, tmp_path):
    built["sd3"].save_pretrained(tmp_path)
    cfg = {"type": "sd3", "params": {"num_layers": 3}, "pretrained": str(tmp_path)}
    with pytest.raises(BackbonePretrainedError, match=r"backbone\.params\.num_layers"):
        build_backbone(cfg)


def test_bad_type_and_params_are_reported():
    with pytest.raises(ValueError, match=r"backbone\.type = 'sdxl'"):
        build_backbone({"type": "sdxl"})
    with pytest.raises(ValueError, match=r"backbone\.params"):
        build_backbone({"type": "medsyn2_dit", "params": {"no_such_option": 1}})


def test_predict_rejects_wrong_channels_and_stray_control(built):
    cfg = TINY_CONFIGS["sd3"]
    z_t, z_m, t, text, keep, _ = inputs(cfg)
    with pytest.raises(ValueError, match="input channels"):
        predict(built["sd3"], z_t, t, text, keep)  # mask forgotten
    with pytest.raises(ValueError, match="control is only for maisi_unet3d"):
        predict(built["sd3"], z_t, t, text, keep, control=z_m, mask=z_m)


def test_flux_packing_round_trip():
    x = torch.randn(2, 3, 8, 6)
    packed = pack_latents(x)
    assert packed.shape == (2, 12, 12)
    assert torch.equal(packed[0, 0, :4], x[0, 0, :2, :2].reshape(-1))  # channel-major 2x2 patches
    assert torch.equal(unpack_latents(packed, 8, 6), x)


# --- MedSyn2 DiT ------------------------------------------------------------------------------------------
def dit(spatial: int, gated: bool, conv: bool, **kw) -> MedSyn2DiT:
    params = dict(TINY_CONFIGS["medsyn2_dit"]["params"], spatial_dims=spatial, gated_attention=gated,
                  depthwise_conv=conv, **kw)
    torch.manual_seed(0)
    return MedSyn2DiT(**params)


@pytest.mark.parametrize("spatial", [2, 3])
def test_dit_switches_change_parameters_and_run(spatial):
    counts = {}
    shape = (8, 16, 12) if spatial == 3 else (32, 24)  # non-square grids
    for gated in (True, False):
        for conv in (True, False):
            model = randomize(dit(spatial, gated, conv))
            counts[gated, conv] = sum(p.numel() for p in model.parameters())
            x = torch.randn(B, TINY_LATENT_CHANNELS + TINY_MASK_CHANNELS, *shape)
            with torch.no_grad():
                out = model(x, torch.rand(B), torch.randn(B, L, TINY_TEXT_DIM)).sample
            assert out.shape == (B, TINY_LATENT_CHANNELS, *shape) and torch.isfinite(out).all()
    hidden, depth = 48, 2
    assert counts[True, True] - counts[False, True] == depth * 2 * (hidden * hidden + hidden)  # W^G in MHSA + MHCA
    k = 27 if spatial == 3 else 9
    assert counts[True, True] - counts[True, False] == depth * (hidden * k + hidden + hidden * hidden + hidden)
    assert len(set(counts.values())) == 4


def test_gated_attention_with_open_gate_is_plain_attention():
    torch.manual_seed(0)
    gated = GatedAttention(32, 4, context_dim=20, gated=True)
    plain = GatedAttention(32, 4, context_dim=20, gated=False)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("to_gate")})
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 6, 20)
    keep = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(gated(x, ctx, keep), plain(x, ctx, keep))
        gated.to_gate.weight.zero_()
        gated.to_gate.bias.fill_(float("inf"))  # G -> +inf: sigma(G) = 1
        assert torch.equal(gated(x, ctx, keep), plain(x, ctx, keep))


def test_dit_with_open_gates_equals_ungated_dit():
    gated, plain = randomize(dit(3, True, True)), randomize(dit(3, False, True))
    state = gated.state_dict()
    plain.load_state_dict({k: v for k, v in state.items() if "to_gate" not in k})
    with torch.no_grad():
        for m in gated.modules():
            if isinstance(m, GatedAttention):
                m.to_gate.weight.zero_()
                m.to_gate.bias.fill_(float("inf"))
        x = torch.randn(B, 6, 8, 8, 8)
        text = torch.randn(B, L, TINY_TEXT_DIM)
        assert torch.equal(gated(x, 0.5, text).sample, plain(x, 0.5, text).sample)


def test_dit_config_is_validated_and_starts_at_zero():
    with pytest.raises(ValueError, match="prediction"):
        dit(3, True, True, prediction="epsilon")
    model = dit(2, True, True)
    with torch.no_grad():
        out = model(torch.randn(1, 6, 16, 16), 0.5, torch.randn(1, 3, TINY_TEXT_DIM)).sample
    assert torch.equal(out, torch.zeros_like(out))  # DiT's zero-initialised output layer
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(torch.randn(1, 6, 15, 16), 0.5, torch.randn(1, 3, TINY_TEXT_DIM))


def test_dit_gradient_checkpointing_matches():
    model = randomize(dit(2, True, True)).train()
    x, text = torch.randn(B, 6, 16, 16), torch.randn(B, L, TINY_TEXT_DIM)
    plain_grad = torch.autograd.grad(model(x, 0.4, text).sample.square().sum(), model.x_embedder.weight)[0]
    model.enable_gradient_checkpointing()
    ckpt_grad = torch.autograd.grad(model(x, 0.4, text).sample.square().sum(), model.x_embedder.weight)[0]
    assert torch.allclose(plain_grad, ckpt_grad, atol=1e-6)


def test_class_specific_inputs(tmp_path):
    """Paths the tiny configs do not take: Flux guidance, PixArt size conditions, MAISI spacing and .pt weights."""
    text, keep = torch.randn(B, L, TINY_TEXT_DIM), torch.ones(B, L, dtype=torch.bool)
    z_t, z_m = torch.randn(B, 4, 16, 16), torch.randn(B, 2, 16, 16)
    flux = build_backbone({"type": "flux", "params": {**TINY_CONFIGS["flux"]["params"], "guidance_embeds": True}}).eval()
    # PixArt's size conditions split the width in three: inner dim (heads x head dim) must be divisible by 3
    pixart_params = {**TINY_CONFIGS["pixart"]["params"], "use_additional_conditions": True,
                     "num_attention_heads": 6, "cross_attention_dim": 48}
    pixart = build_backbone({"type": "pixart", "params": pixart_params}).eval()
    with torch.no_grad():
        assert not torch.allclose(predict(flux, z_t, 0.5, text, keep, mask=z_m, guidance=1.0),
                                  predict(flux, z_t, 0.5, text, keep, mask=z_m, guidance=7.0))
        assert predict(pixart, z_t, 0.5, text, keep, mask=z_m).shape == z_t.shape
    maisi_cfg = copy.deepcopy(TINY_CONFIGS["maisi_unet3d"])
    maisi_cfg["params"]["unet_params"]["include_spacing_input"] = True
    maisi = randomize(build_backbone(maisi_cfg))
    z_t, z_m = torch.randn(B, 4, 8, 8, 8), torch.randn(B, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="spacing"):
        predict(maisi, z_t, 0.5, text, mask=z_m)
    spacing = torch.tensor([[1.5, 1.5, 1.5], [0.8, 0.8, 2.5]])
    with torch.no_grad():
        out = predict(maisi, z_t, 0.5, text, mask=z_m, control=z_m, spacing=spacing)
    torch.save({"unet_state_dict": maisi.unet.state_dict()}, tmp_path / "diff_unet_3d_rflow.pt")  # MAISI release layout
    reloaded = build_backbone({**maisi_cfg, "pretrained": str(tmp_path / "diff_unet_3d_rflow.pt")}).eval()
    with torch.no_grad():  # the release holds no ControlNet: compare the UNet alone
        assert torch.equal(predict(reloaded, z_t, 0.5, text, mask=z_m, spacing=spacing),
                           predict(maisi, z_t, 0.5, text, mask=z_m, spacing=spacing))
    assert out.shape == z_t.shape


def test_dit_takes_a_lora_adapter():
    from peft import LoraConfig

    model = randomize(dit(2, True, True))
    model.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out"], init_lora_weights=False))
    trainable = [n for n, p in model.named_parameters() if "lora" in n]
    assert trainable
    out = model(torch.randn(1, 6, 16, 16), 0.5, torch.randn(1, 3, TINY_TEXT_DIM)).sample
    assert out.shape == (1, 4, 16, 16)


@pytest.mark.parametrize("spatial", [2, 3])
def test_dit_unpatchify_inverts_patch_order(spatial):
    """Token n = row-major grid position (the patch conv's order); features = (offsets..., channel)."""
    model, p, c = dit(spatial, False, False), 2, TINY_LATENT_CHANNELS
    grid = (3, 4, 5)[-spatial:]
    x = torch.randn(B, c, *[g * p for g in grid])
    shape = [B, c] + [v for g in grid for v in (g, p)]
    axes = [0] + [2 + 2 * i for i in range(spatial)] + [3 + 2 * i for i in range(spatial)] + [1]
    tokens = x.reshape(shape).permute(axes).reshape(B, -1, p**spatial * c)
    assert torch.equal(model.unpatchify(tokens, grid), x)
