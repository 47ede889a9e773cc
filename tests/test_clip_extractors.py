"""The 3D CLIP extractors (M3D-CLIP, CT-CLIP) from tiny random-weight checkpoints in the published layouts.

Each checkpoint is written the way its release is laid out (M3D-CLIP: a transformers folder with
``config.json`` + ``model.safetensors``; CT-CLIP: ``torch.save`` of the CTCLIP state dict at the CT-RATE
path), with the published key names (text side included) at tiny sizes, into a weights folder as the
weights rule leaves it; the extractor is loaded by name, embeds 1-channel CT volumes, and the features
give a Frechet distance (MONAI's ``FIDMetric``).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from medsynth.fsutil import sha256_file
from medsynth.metrics.clip_weights import CheckpointLayoutError
from medsynth.metrics.ct_clip import CTClipConfig, ct_clip_input
from medsynth.metrics.extractors import EXTRACTORS, extractor_from_file, extractor_status, load_extractor
from medsynth.metrics.m3d_clip import m3d_input
from medsynth.weights import WeightsMissing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fetched(weights_dir, model: str, files: dict) -> None:
    """A model folder as the weights rule leaves it: ``<model>/files/...`` and ``<model>/inventory.csv``."""
    rows = []
    for rel, write in files.items():
        path = weights_dir / model / "files" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        rows.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    pd.DataFrame(rows).to_csv(weights_dir / model / "inventory.csv", index=False)


def tiny_bert(prefix: str) -> dict[str, torch.Tensor]:
    """A text tower's tensors (random BERT, tiny) under ``prefix``, as the CLIP checkpoints hold them."""
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=24))
    return {prefix + k: v.clone() for k, v in bert.state_dict().items()}


def ct_volumes(n: int, seed: int, shift: float = 0.0, radius2: float = 0.7, shape=(24, 20, 16)) -> torch.Tensor:
    """``[n, 1, X, Y, Z]`` HU volumes: air around a body-like ellipsoid with noisy tissue."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij"))
    body = (grid ** 2).sum(0) < radius2
    hu = torch.full((n, 1, *shape), -1024.0)
    tissue = 40.0 + shift + 60.0 * torch.randn((n, 1, *shape), generator=gen)
    return torch.where(body, tissue, hu)


def fd(a: torch.Tensor, b: torch.Tensor) -> float:
    from monai.metrics import FIDMetric

    return float(FIDMetric()(a.double(), b.double()))


# -- M3D-CLIP -------------------------------------------------------------------------------------------

M3D_CONFIG = {  # M3DCLIPConfig's fields (LaMed/src/model/CLIP.py) at tiny sizes, plus transformers' own
    "architectures": ["M3DCLIP"], "auto_map": {"AutoConfig": "configuration_m3d_clip.M3DCLIPConfig",
                                                "AutoModel": "modeling_m3d_clip.M3DCLIP"},
    "model_type": "m3d_clip", "language_model_name_or_path": "bert_base_uncased", "local_loss": False,
    "gather_loss": True, "in_channels": 1, "img_size": [8, 32, 32], "patch_size": [4, 16, 16], "hidden_size": 32,
    "mlp_dim": 64, "num_layers": 2, "num_heads": 4, "pos_embed": "perceptron", "dropout_rate": 0,
    "spatial_dims": 3, "max_text_len": 24, "vocab_size": 40, "torch_dtype": "float32",
}


def m3d_reference():
    """M3D's vision tower as MONAI's own ViT builds it (M3D's ``vit.py`` is that ViT without the
    classification head), and ``mm_vision_proj``: an independent source of the published key names."""
    from monai.networks.nets import ViT

    c = M3D_CONFIG
    torch.manual_seed(0)
    vit = ViT(in_channels=1, img_size=c["img_size"], patch_size=c["patch_size"], hidden_size=c["hidden_size"],
              mlp_dim=c["mlp_dim"], num_layers=c["num_layers"], num_heads=c["num_heads"], proj_type="perceptron",
              classification=True, qkv_bias=False)
    torch.nn.init.normal_(vit.cls_token, std=0.5)
    vit.classification_head = torch.nn.Identity()  # then ViT returns the normed CLS token
    proj = torch.nn.Linear(c["hidden_size"], c["hidden_size"])
    state = {f"vision_encoder.{k}": v for k, v in vit.state_dict().items()
             if "norm_cross_attn" not in k}  # MONAI >= 1.4 only; M3D-CLIP's checkpoint predates it
    state.update({f"mm_vision_proj.{k}": v for k, v in proj.state_dict().items()})
    state.update(tiny_bert("language_encoder."))
    state.update({"mm_language_proj.weight": torch.randn(32, 32), "mm_language_proj.bias": torch.zeros(32),
                  "logit_scale": torch.tensor(2.659)})
    return vit.eval(), proj, state


def write_m3d(weights_dir, state: dict) -> None:
    fetched(weights_dir, "m3d_clip", {
        "config.json": lambda p: p.write_text(json.dumps(M3D_CONFIG)),
        "model.safetensors": lambda p: save_file({k: v.contiguous() for k, v in state.items()}, str(p)),
        "README.md": lambda p: p.write_text("M3D-CLIP\n")})


def test_m3d_input_is_axial_slices_as_displayed_min_max_and_cropped():
    vol = torch.full((1, 1, 24, 20, 16), -1000.0)
    vol[0, 0, 4:20, 2:18, 3:13] = 0.0  # body: the foreground crop keeps it
    vol[0, 0, 19, 17, 12] = 1000.0  # patient-right (x max), anterior (y max), superior (z max) corner
    x = m3d_input(vol, (10, 16, 16))
    assert type(x) is torch.Tensor and x.shape == (1, 1, 10, 16, 16)
    assert float(x.min()) == 0.5 and float(x.max()) <= 1.0  # the air (0) is cropped off; the body is 0 HU
    # cropped to the body and resized: the corner lands at the last slice, first row (anterior),
    # first column (patient right on a radiological display)
    peak = torch.nonzero(x[0, 0] == x[0, 0].max())[0].tolist()
    assert peak == [9, 0, 0]


def test_m3d_clip_loads_the_published_folder_and_embeds_volumes(tmp_path):
    vit, proj, state = m3d_reference()
    assert {"vision_encoder.patch_embedding.patch_embeddings.1.weight", "vision_encoder.cls_token",
            "vision_encoder.blocks.1.attn.qkv.weight", "vision_encoder.norm.weight",
            "mm_vision_proj.weight"} <= set(state)
    assert not any(k.startswith("vision_encoder.blocks.0.attn.qkv.bias") for k in state)  # qkv_bias=False
    write_m3d(tmp_path, state)
    assert EXTRACTORS["m3d_clip"].loader and extractor_status("m3d_clip", tmp_path) == "ok"
    net = load_extractor("m3d_clip", tmp_path)
    real, fake = ct_volumes(6, 0), ct_volumes(6, 1, shift=300.0, radius2=0.3)
    with torch.no_grad():
        f_real, f_fake = net(real), net(fake)
        assert f_real.shape == (6, 32) and torch.equal(f_real, net(real))
        torch.testing.assert_close(f_real.norm(dim=1), torch.ones(6))
        x = m3d_input(real, (8, 32, 32))
        expected = torch.nn.functional.normalize(proj(vit(x)[0]), dim=-1)  # MONAI ViT + projection
        torch.testing.assert_close(f_real, expected, atol=1e-5, rtol=1e-4)
    value = fd(f_real, f_fake)
    assert value > 0 and value > fd(f_real[:3], f_real[3:])


def test_m3d_clip_refuses_another_layout(tmp_path):
    _, _, state = m3d_reference()
    renamed = {k.replace("vision_encoder.norm.", "vision_encoder.final_norm."): v for k, v in state.items()}
    write_m3d(tmp_path / "renamed", renamed)
    with pytest.raises(CheckpointLayoutError, match="missing vision_encoder.norm.bias.*unexpected vision_encoder"):
        load_extractor("m3d_clip", tmp_path / "renamed")
    wider = dict(state, **{"mm_vision_proj.weight": torch.zeros(32, 48)})
    write_m3d(tmp_path / "wider", wider)
    with pytest.raises(CheckpointLayoutError, match="mm_vision_proj.weight"):
        load_extractor("m3d_clip", tmp_path / "wider")


def test_m3d_clip_folder_without_config_is_unavailable(tmp_path):
    fetched(tmp_path, "m3d_clip", {"README.md": lambda p: p.write_text("x")})
    status = extractor_status("m3d_clip", tmp_path)
    assert status.startswith("unavailable: m3d_clip: ") and "config.json" in status


# -- CT-CLIP --------------------------------------------------------------------------------------------

TINY_CT = CTClipConfig(dim=16, image_size=40, patch_size=20, temporal_patch_size=10, spatial_depth=2,
                       temporal_depth=1, dim_head=8, heads=2, codebook_size=32, dim_latent=8)


def ct_clip_state(c: CTClipConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of the published CTCLIP state dict (``ctvit.py``, ``attention.py``, ``ct_clip.py``,
    vector-quantize-pytorch 1.1.2's codebook buffers), written out by name at sizes ``c``; random values."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(shape, generator=gen) * scale

    d, p, pt, h, dh = c.dim, c.patch_size, c.temporal_patch_size, c.heads, c.dim_head
    inner, v = int(4 * (2 / 3) * d), "visual_transformer."
    s = {f"{v}spatial_rel_pos_bias.net.0.0.weight": rnd(d, 2), f"{v}spatial_rel_pos_bias.net.0.0.bias": rnd(d),
         f"{v}spatial_rel_pos_bias.net.1.0.weight": rnd(d, d), f"{v}spatial_rel_pos_bias.net.1.0.bias": rnd(d),
         f"{v}spatial_rel_pos_bias.net.2.weight": rnd(h, d), f"{v}spatial_rel_pos_bias.net.2.bias": rnd(h)}
    for name, width in (("to_patch_emb_first_frame", p * p), ("to_patch_emb", pt * p * p)):
        s.update({f"{v}{name}.1.weight": 1 + rnd(width), f"{v}{name}.1.bias": rnd(width),
                  f"{v}{name}.2.weight": rnd(d, width), f"{v}{name}.2.bias": rnd(d),
                  f"{v}{name}.3.weight": 1 + rnd(d), f"{v}{name}.3.bias": rnd(d)})
    for name, depth in (("enc_spatial_transformer", c.spatial_depth), ("enc_temporal_transformer", c.temporal_depth)):
        for i in range(depth):
            layer = f"{v}{name}.layers.{i}."
            s.update({layer + "0.dsconv.weight": rnd(d, 1, 3, 3, 3), layer + "0.dsconv.bias": rnd(d),
                      layer + "1.null_kv": torch.zeros(h, 0, dh), layer + "1.q_scale": 1 + rnd(dh),
                      layer + "1.k_scale": 1 + rnd(dh), layer + "1.norm.gamma": 1 + rnd(d),
                      layer + "1.norm.beta": torch.zeros(d), layer + "1.context_norm.gamma": torch.ones(d),
                      layer + "1.context_norm.beta": torch.zeros(d), layer + "1.to_q.weight": rnd(h * dh, d),
                      layer + "1.to_kv.weight": rnd(2 * h * dh, d), layer + "1.to_out.weight": rnd(d, h * dh),
                      layer + "3.0.weight": 1 + rnd(d), layer + "3.0.bias": rnd(d),
                      layer + "3.1.weight": rnd(2 * inner, d), layer + "3.4.weight": rnd(d, inner)})
        s.update({f"{v}{name}.norm_out.gamma": 1 + rnd(d), f"{v}{name}.norm_out.beta": torch.zeros(d)})
    s.update({f"{v}vq._codebook.initted": torch.ones(1), f"{v}vq._codebook.cluster_size": rnd(1, c.codebook_size),
              f"{v}vq._codebook.embed": torch.nn.functional.normalize(rnd(1, c.codebook_size, d), dim=-1),
              f"{v}to_pixels_first_frame.0.weight": rnd(p * p, d), f"{v}to_pixels_first_frame.0.bias": rnd(p * p),
              f"{v}to_pixels.0.weight": rnd(pt * p * p, d), f"{v}to_pixels.0.bias": rnd(pt * p * p)})
    dim_image = (c.image_size // p) ** 2 * d
    s.update({"to_visual_latent.weight": rnd(c.dim_latent, dim_image),
              "to_visual_latent_extra.weight": rnd(c.dim_latent, dim_image),
              "to_text_latent.weight": rnd(c.dim_latent, 16), "to_text_latent_extra.weight": rnd(c.dim_latent, 16),
              "temperature": torch.tensor(1.0)})
    s.update(tiny_bert("text_transformer."))
    return s


def write_ct_clip(weights_dir, state: dict) -> None:
    fetched(weights_dir, "ct_clip", {EXTRACTORS["ct_clip"].file: lambda p: torch.save(state, p)})


def test_ct_clip_input_follows_the_published_recipe():
    vol = torch.full((1, 1, 24, 20, 16), -2000.0)
    vol[0, 0, 23, 19, 15] = 3000.0  # patient-right, anterior, superior corner
    x = ct_clip_input(vol, TINY_CT)
    assert x.shape == (1, 1, 240, 40, 40) and float(x.min()) == -1.0 and float(x.max()) <= 1.0
    # S, L, P axes: superior last, patient-right first, anterior first
    assert float(x[0, 0, 239, 0, 0]) == float(x.max()) == 1.0 and float(x[0, 0, 0, 39, 39]) == -1.0
    # with the voxel size: 0.75 x 0.75 x 1.5 mm, then centre crop / pad with -1 (air) to 40 x 40 x 240
    y = ct_clip_input(torch.zeros(1, 1, 30, 30, 100), TINY_CT, spacing=(1.5, 1.5, 3.0))
    assert y.shape == (1, 1, 240, 40, 40)
    assert float(y[0, 0, 20:220, 0:40, 0:40].abs().max()) == 0.0 and float(y[0, 0, :20].max()) == -1.0


def test_ct_clip_loads_the_published_state_dict_and_embeds_volumes(tmp_path):
    state = ct_clip_state(TINY_CT)
    write_ct_clip(tmp_path, state)
    assert EXTRACTORS["ct_clip"].loader and extractor_status("ct_clip", tmp_path) == "ok"
    net = load_extractor("ct_clip", tmp_path)
    assert net.config == TINY_CT  # every size read back from the tensors
    real, fake = ct_volumes(5, 0), ct_volumes(5, 1, shift=400.0, radius2=0.3)
    with torch.no_grad():
        f_real, f_fake = net(real), net(fake)
        assert f_real.shape == (5, 8) and torch.equal(f_real, net(real))
        torch.testing.assert_close(f_real.norm(dim=1), torch.ones(5))
        tokens = net.visual_transformer(ct_clip_input(real[:1], TINY_CT))
        assert tokens.shape == (1, 24, 2, 2, 16)  # frames / 10, 40 / 20, 40 / 20, dim
        codes = state["visual_transformer.vq._codebook.embed"][0]
        assert torch.isclose(tokens.reshape(-1, 16)[:, None, :], codes[None]).all(-1).any(-1).all()  # quantised
    value = fd(f_real, f_fake)
    assert value > 0 and value > fd(f_real[:2], f_real[2:4])


def test_ct_clip_refuses_another_layout(tmp_path):
    state = ct_clip_state(TINY_CT)
    key = "visual_transformer.enc_temporal_transformer.layers.0.1.to_kv.weight"
    renamed = {k.replace(key, key.replace("to_kv", "to_k")): t for k, t in state.items()}
    write_ct_clip(tmp_path / "renamed", renamed)
    with pytest.raises(CheckpointLayoutError, match=f"missing {key}"):
        load_extractor("ct_clip", tmp_path / "renamed")
    write_ct_clip(tmp_path / "not_clip", {"weight": torch.zeros(2)})
    with pytest.raises(CheckpointLayoutError, match="not a CT-CLIP state dict"):
        load_extractor("ct_clip", tmp_path / "not_clip")


def test_ct_clip_pickle_with_code_is_refused(tmp_path):
    from medsynth.io.state_dict import UnsafeWeightsFile

    write_ct_clip(tmp_path, {"config": CTClipConfig(), **ct_clip_state(TINY_CT)})
    with pytest.raises(UnsafeWeightsFile, match="refused as unsafe"):
        load_extractor("ct_clip", tmp_path)


# -- availability ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["m3d_clip", "ct_clip"])
def test_absent_weights_make_the_clip_extractors_unavailable(tmp_path, name):
    status = extractor_status(name, tmp_path)
    inventory = tmp_path / EXTRACTORS[name].model / "inventory.csv"
    assert status.startswith("unavailable: ") and f"snakemake --cores 1 {inventory}" in status
    with pytest.raises(WeightsMissing):
        load_extractor(name, tmp_path)


def test_ct_clip_fetched_without_its_file_is_unavailable(tmp_path):
    fetched(tmp_path, "ct_clip", {"README.md": lambda p: p.write_text("x")})
    status = extractor_status("ct_clip", tmp_path)
    assert status.startswith("unavailable: ct_clip: ") and "CT-CLIP_v2.pt is not among the fetched files" in status


@pytest.mark.parametrize("name", ["m3d_clip", "ct_clip"])
def test_clip_fd_of_volume_sets_from_model_units(tmp_path, name):
    """The 3D path's whole-volume CLIP FD (fd_pretrained.<name> of the volume metrics): model-unit volumes go
    back to HU, one embedding each, the Frechet distance of the two sets; no weights: "unavailable"."""
    from medsynth.metrics import clip_fd_volumes
    from medsynth.metrics.frechet import frechet_distance

    if name == "m3d_clip":
        write_m3d(tmp_path, m3d_reference()[2])
        path = tmp_path / "m3d_clip" / "files"
    else:
        write_ct_clip(tmp_path, ct_clip_state(TINY_CT))
        path = tmp_path / "ct_clip" / "files" / EXTRACTORS["ct_clip"].file
    hu_range = (-1024.0, 1024.0)

    def model_units(hu: torch.Tensor) -> torch.Tensor:
        return (hu.clamp(*hu_range) - hu_range[0]) / (hu_range[1] - hu_range[0]) * 2.0 - 1.0

    real, fake = model_units(ct_volumes(6, 0)), model_units(ct_volumes(6, 1, shift=300.0, radius2=0.3))
    res = clip_fd_volumes(name, path, f"metrics.{name}_pretrained_path", real, fake, hu_range, batch_size=4)
    assert res["status"] == "ok" and res["n_real"] == res["n_fake"] == 6 and "HU" in res["input"]
    net = extractor_from_file(name, path)
    with torch.no_grad():
        expected = frechet_distance(net(ct_volumes(6, 0).clamp(*hu_range)), net(ct_volumes(6, 1, 300.0, 0.3)
                                                                                 .clamp(*hu_range)))
    assert res["value"] == pytest.approx(expected, rel=1e-3, abs=1e-6) and res["value"] > 0
    same = clip_fd_volumes(name, path, "k", real, real, hu_range)["value"]
    assert abs(same) < 1e-6
    missing = clip_fd_volumes(name, None, f"metrics.{name}_pretrained_path", real, fake, hu_range)
    assert missing["value"] is None and missing["status"].startswith(f"unavailable: metrics.{name}_pretrained_path")
    not_ct = clip_fd_volumes(name, path, "k", real, fake, None)["status"]  # MR: CT-CLIP needs HU, M3D min-maxes
    assert not_ct.startswith("not applicable") if name == "ct_clip" else not_ct == "ok"


def test_mfid_of_slice_sets_embeds_each_slice_as_a_slab(tmp_path):
    """ViCTr's MFID on 2D slices (fd_pretrained.m3d_clip of the slice metrics): each slice repeated along z
    into M3D-CLIP's 32-slice input, the FD of the two embedding sets; MR goes in model units."""
    from medsynth.metrics import clip_fd_slices, clip_fd_volumes
    from medsynth.metrics.pretrained_fd import SLAB_DEPTH

    write_m3d(tmp_path, m3d_reference()[2])
    path = tmp_path / "m3d_clip" / "files"
    hu_range = (-1024.0, 1024.0)
    real = (ct_volumes(5, 0)[..., 8] / 1024.0).clamp(-1, 1)  # [5, 1, 24, 20] model-unit slices
    fake = (ct_volumes(5, 1, shift=300.0, radius2=0.3)[..., 8] / 1024.0).clamp(-1, 1)
    res = clip_fd_slices("m3d_clip", path, "metrics.m3d_clip_pretrained_path", real, fake, hu_range, batch_size=2)
    slabs = [x[..., None].repeat(1, 1, 1, 1, SLAB_DEPTH) for x in (real, fake)]
    assert res["status"] == "ok" and res["n_real"] == res["n_fake"] == 5 and "repeated along z" in res["input"]
    assert res["value"] == clip_fd_volumes("m3d_clip", path, "k", *slabs, hu_range)["value"] and res["value"] > 0
    mr = clip_fd_slices("m3d_clip", path, "k", real, fake, None)
    assert mr["status"] == "ok" and mr["value"] == pytest.approx(res["value"], rel=1e-4, abs=1e-6)  # min-max per slab
    missing = clip_fd_slices("m3d_clip", None, "metrics.m3d_clip_pretrained_path", real, fake, hu_range)
    assert missing["value"] is None and missing["status"].startswith("unavailable: metrics.m3d_clip_pretrained_path")
