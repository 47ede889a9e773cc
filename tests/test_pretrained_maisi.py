"""MAISI-v2's three released networks end to end: Hub -> weights rule -> release files -> stages -> sampling.

Tiny networks with the release's architecture switches (``configs/config_network_rflow.json`` of
NV-Generate-CT: the UNet's spacing input and modality class embedding, ``resblock_updown``,
``include_fc``; a ControlNet conditioned on 8 binary channels, MAISI's label map bit by bit), saved in
the release's files and keys (``models/autoencoder_v1.pt`` a plain state dict,
``models/diff_unet_3d_rflow-ct.pt`` with ``unet_state_dict`` and ``scale_factor``,
``models/controlnet_3d_rflow-ct.pt`` with ``controlnet_state_dict``), served by the loopback Hub stand-in
as ``nvidia/NV-Generate-CT``, fetched by the weights task with the three real registry entries, then:
the VAE, UNet and ControlNet load strictly from them; the masks reach the ControlNet as MAISI label ids
binarised; base, stage 1, a stage-2 LoRA step and a sampling call on CT volumes with five masks.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ct_volume_shard
from stand_in import fetch_from_stand_in, stages_and_sampling

pytestmark = pytest.mark.usefixtures("one_torch_thread", "loopback_module")  # no network beyond 127.0.0.1

NAMES = ["liver", "lungs", "bone", "kidneys", "spleen"]
MAISI_IDS = [1, 20, 21, 2, 3]  # label_dict of NV-Generate-CT: liver, lung, bone, kidney, spleen
SIZE, N_VOLUMES, TEST_VOLUMES = 16, 4, (3,)
UNET = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "num_res_blocks": 1, "num_channels": [8, 16],
        "attention_levels": [False, True], "norm_num_groups": 4, "num_head_channels": [0, 8], "resblock_updown": True,
        "include_fc": True, "include_spacing_input": True, "num_class_embeds": 4}
CONTROLNET = {"conditioning_embedding_in_channels": 8, "conditioning_embedding_num_channels": [8]}
FILES = {"maisi_vae": "models/autoencoder_v1.pt", "maisi_diffusion_unet": "models/diff_unet_3d_rflow-ct.pt",
         "maisi_controlnet": "models/controlnet_3d_rflow-ct.pt"}


def _release(folder: Path) -> dict[str, bytes]:
    """The tiny release repo: the three networks in their files and keys, and the network config."""
    from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    from medsynth.vae import TINY_VAE_CONFIGS, build_autoencoder

    torch.manual_seed(0)
    (folder / "models").mkdir(parents=True)
    (folder / "configs").mkdir()
    vae = build_autoencoder(dict(TINY_VAE_CONFIGS["3d"]))
    torch.save(vae.state_dict(), folder / FILES["maisi_vae"])
    unet = DiffusionModelUNetMaisi(**UNET)
    for p in unet.parameters():  # a trained-looking UNet (MONAI zero-initialises its output)
        torch.nn.init.normal_(p, std=0.05)
    torch.save({"unet_state_dict": unet.state_dict(), "scale_factor": torch.tensor(1.0)},
               folder / FILES["maisi_diffusion_unet"])
    shared = {k: v for k, v in UNET.items() if k not in ("out_channels", "include_spacing_input")}
    controlnet = ControlNetMaisi(**shared, **CONTROLNET)
    for p in controlnet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save({"controlnet_state_dict": controlnet.state_dict()}, folder / FILES["maisi_controlnet"])
    (folder / "configs" / "config_network_rflow.json").write_text(json.dumps({"latent_channels": 4}))
    (folder / "README.md").write_text("tiny stand-in of NV-Generate-CT\n")
    (folder / "models" / "mask_generation_autoencoder.pt").write_bytes(b"\0" * 64)  # not fetched
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def release(tmp_path_factory, loopback_module) -> SimpleNamespace:
    """The release served by the Hub stand-in, each registry entry fetched by the weights task."""
    from medsynth.weights import load_models

    files = _release(tmp_path_factory.mktemp("ngc_repo"))
    registry = load_models(Path(__file__).resolve().parents[1] / "config" / "models.yaml")
    root = tmp_path_factory.mktemp("weights")
    folders = fetch_from_stand_in(registry, list(FILES), files, root)
    local = {}
    for name, folder in folders.items():
        assert set(pd.read_csv(root / name / "inventory.csv")["path"]) == {FILES[name], "configs/config_network_rflow.json"}
        local[name] = folder / FILES[name]
    return SimpleNamespace(files=files, **local)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """CT volumes (16^3) of the shipped scan, shifted crops, five threshold masks."""
    return ct_volume_shard(tmp_path_factory.mktemp("volumes"), NAMES, N_VOLUMES, TEST_VOLUMES, SIZE, crop_step=4)


def _backbone(release) -> dict:
    return {"type": "maisi_unet3d", "pretrained": str(release.maisi_diffusion_unet),
            "controlnet_pretrained_path": str(release.maisi_controlnet),
            "params": {"unet_params": dict(UNET), "controlnet_params": dict(CONTROLNET), "mask_input": "control",
                       "spacing_mm": [3.0, 3.0, 3.0], "class_label": 1, "control_label_ids": MAISI_IDS}}


def test_release_files_load_strictly_and_masks_reach_the_controlnet_as_maisi_labels(release):
    from medsynth.models.backbones import build_backbone, predict
    from medsynth.models.maisi_backbone import binarize_label_map, label_map

    model = build_backbone(_backbone(release), key="generator.backbone").eval()
    unet_state = torch.load(release.maisi_diffusion_unet, weights_only=True)["unet_state_dict"]
    control_state = torch.load(release.maisi_controlnet, weights_only=True)["controlnet_state_dict"]
    for have, want in ((model.unet.state_dict(), unet_state), (model.controlnet.state_dict(), control_state)):
        assert have.keys() == want.keys() and all(torch.equal(have[k], want[k]) for k in want)
    # the labels: liver (id 1) and bone (21 = 0b10101) overlapping -> the later channel wins
    present = torch.zeros(1, 5, 1, 1, 2, dtype=torch.bool)
    present[0, 0, ..., 0] = present[0, 2, ..., 0] = present[0, 0, ..., 1] = True
    labels = label_map(present, MAISI_IDS)
    assert labels.flatten().tolist() == [21, 1]
    assert binarize_label_map(labels, 8)[0, :, 0, 0, 0].tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
    # predict: spacing (mm x 100) and the modality class as MAISI passes them, the mask as binarised labels
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 4, 4, 4, generator=g), torch.tensor([0.3, 0.8])
    mask = torch.rand(2, 5, 4, 4, 4, generator=g) - 0.5
    text = torch.zeros(2, 4, 8)
    with torch.no_grad():
        ours = predict(model, x, t, text, mask=mask)
        control = binarize_label_map(label_map(mask > 0, MAISI_IDS), 8)
        down, mid = model.controlnet(x, t * 1000, control, class_labels=torch.ones(2, dtype=torch.long))
        theirs = model.unet(x, t * 1000, class_labels=torch.ones(2, dtype=torch.long),
                            spacing_tensor=torch.full((2, 3), 300.0), down_block_additional_residuals=down,
                            mid_block_additional_residual=mid)
    torch.testing.assert_close(ours, theirs)
    missing = _backbone(release)
    missing["params"] = {**missing["params"], "spacing_mm": None}
    with pytest.raises(ValueError, match="spacing_mm"):
        predict(build_backbone(missing), x, t, text, mask=mask)


def test_maisi_release_stages_lora_step_and_sampling_on_ct_volumes(release, shards, tmp_path):
    from medsynth.io.generated import load_generated
    from medsynth.vae import TINY_VAE_CONFIGS, build_autoencoder
    from medsynth.vae.stage import run_vae

    vae_model = {**TINY_VAE_CONFIGS["3d"], "pretrained": str(release.maisi_vae)}
    loaded = build_autoencoder(dict(vae_model)).state_dict()
    shipped = torch.load(release.maisi_vae, weights_only=True)
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)
    run_vae(shards, tmp_path / "vae", {"model": vae_model, "steps": 1, "batch_size": 2, "checkpoint_every": 0,
                                       "progress": False, "seed": 1, "stats_batch_size": 2})
    vae, stats = tmp_path / "vae" / "final", tmp_path / "vae" / "latent_stats.json"
    gen = {"backbone": _backbone(release), "text_encoder": {"type": "minilm"}, "max_length": 8, "threads": 1}
    stage = {"steps": 1, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 0, "progress": False, "seed": 3,
             "cond_dropout": 0.5, "warmup_steps": 0, "select": {"split": ["train"]}}
    stage1 = {**stage, "ewc": {"fisher_batches": 1, "fisher_batch_size": 2, "top_fraction": 0.2, "lambda": 10.0}}
    stage2 = {**stage, "method": "lora", "objective": "flow", "lora": {"rank": 2, "alpha": 2.0},
              "contrastive": {"enabled": True, "roi": "liver"}, "severity_prompt": False}
    out = stages_and_sampling(shards, vae, stats, gen, stage, stage1, stage2, tmp_path,
                              {"guidance_scale": 2.0, "seed": 5, "batch_size": 2})
    images, _, names = load_generated(out[0])
    assert images.shape == (len(TEST_VOLUMES), 1, SIZE, SIZE, SIZE) and np.isfinite(images).all() and names == NAMES
