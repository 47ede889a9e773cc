"""The MEDPSeg network re-implementation (``medsynth.masks.medpseg_net``): its state dict has the
upstream checkpoint's key names and shapes, a forward pass gives the documented outputs, and saved
weights round-trip strictly.

Numerical identity with the upstream code (medpseg a66836a + efficientnet_pytorch 0.7.1) was checked
once, outside the tests, with shared random weights: max |diff| about 2e-7 on every output (128 x 128,
all three topology variants) and 5e-8 at 512 x 512. Swapping block 6's static (2, 2, 2, 2) pad for
the dynamic TF-same one changes the stride-8 features by 1e-2, so that check does see padding errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsynth.masks.medpseg_net import CHECKPOINT_PREFIX, MedPSegNet, strip_checkpoint_prefix

KEYS_FILE = Path(__file__).parent / "data" / "medpseg_state_dict_keys.txt"


def _reference() -> dict[str, tuple[int, ...]]:
    """Upstream network's keys (prefix stripped) and shapes, from the data file."""
    ref: dict[str, tuple[int, ...]] = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        assert name.startswith(CHECKPOINT_PREFIX)
        ref[name[len(CHECKPOINT_PREFIX):]] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    return ref


def _shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def net() -> MedPSegNet:
    torch.manual_seed(0)
    return MedPSegNet().eval()


def test_state_dict_matches_upstream_checkpoint_layout(net: MedPSegNet) -> None:
    ref = _reference()
    mine = _shapes(net)
    assert len(ref) == 1649
    assert sorted(set(ref) - set(mine)) == [] and sorted(set(mine) - set(ref)) == []
    assert {k: v for k, v in mine.items() if ref[k] != v} == {}
    # spot checks of the layout the loader relies on
    assert mine["backbone_net.model._conv_stem.weight"] == (48, 3, 3, 3)  # B4 stem
    assert mine["backbone_net.model._blocks.31._project_conv.weight"] == (448, 2688, 1, 1)
    assert mine["classifier.header.pointwise_conv.conv.weight"] == (4, 128, 1, 1)
    assert mine["circulatory_classifier.vessel_head.header.pointwise_conv.conv.bias"] == (2,)


def test_other_topologies_differ_only_in_their_own_keys() -> None:
    ref = _reference()
    no_ds = {k: v for k, v in ref.items() if ".ds_" not in k}
    assert _shapes(MedPSegNet(expansion="upsample_sum", deep_supervision=False)) == no_ds
    assert _shapes(MedPSegNet(expansion="upsample", deep_supervision=False)) == no_ds
    conv = _shapes(MedPSegNet(expansion="conv", deep_supervision=True))
    extra = {k: v for k, v in conv.items() if k not in ref}
    assert {k: v for k, v in conv.items() if k in ref} == ref
    assert extra["expand_conv.0.weight"] == (128, 128, 2, 2)
    assert extra["circulatory_classifier.expand_conv.0.weight"] == (128, 128, 2, 2)
    assert len(extra) == 14  # ConvTranspose2d (2) + BatchNorm2d (5), saved under both owners
    with pytest.raises(ValueError):
        MedPSegNet(expansion="upsample_sum", deep_supervision=True)
    with pytest.raises(ValueError):
        MedPSegNet(expansion="bicubic")


def test_backbone_uses_efficientnet_pytorch_static_padding(net: MedPSegNet) -> None:
    """Pads fixed at construction from a 380 x 380 image, as efficientnet_pytorch 0.7.1 does."""
    model = net.backbone_net.model
    assert tuple(model._conv_stem_padding.padding) == (0, 1, 0, 1)
    pads = {i: tuple(b._depthwise_conv_padding.padding) for i, b in enumerate(model._blocks)
            if tuple(b._depthwise_conv.stride) == (2, 2)}
    assert pads == {2: (0, 1, 0, 1), 6: (2, 2, 2, 2), 10: (0, 1, 0, 1), 22: (1, 2, 1, 2)}
    assert net.backbone_net.taps == (1, 5, 9) and net.backbone_net.out_channels == (24, 32, 56)


@pytest.mark.parametrize("size", [64, 128])
def test_forward_shapes(net: MedPSegNet, size: int) -> None:
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = net(x)
    assert list(out) == ["main", "atm", "vessel"]
    assert out["main"].shape == (2, 4, size, size)
    assert out["atm"].shape == out["vessel"].shape == (2, 2, size, size)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_forward_deep_supervision_and_fusion_outputs() -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ds = MedPSegNet(return_deep_supervision=True).eval()(x)
        fused = MedPSegNet(expansion="upsample_sum", deep_supervision=False).eval()(x)
    assert sorted(ds) == sorted(["main", "atm", "vessel"] + [f"{k}{i}" for k in ("main", "atm", "vessel")
                                                              for i in range(1, 5)])
    for i in range(1, 5):
        assert ds[f"main{i}"].shape == (1, 4, 64 >> i, 64 >> i)
        assert ds[f"vessel{i}"].shape == ds[f"atm{i}"].shape == (1, 2, 64 >> i, 64 >> i)
    assert {k: tuple(v.shape) for k, v in fused.items()} == {"main": (1, 4, 64, 64), "atm": (1, 2, 64, 64),
                                                            "vessel": (1, 2, 64, 64)}
    assert all(torch.isfinite(v).all() for v in [*ds.values(), *fused.values()])


def test_state_dict_round_trips_strictly(net: MedPSegNet, tmp_path: Path) -> None:
    # perturb everything, buffers included, so that defaults cannot make the check pass
    torch.manual_seed(2)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5 if "running_var" in k else v + 0.01 * torch.randn_like(v))
    path = tmp_path / "medpseg.pt"
    torch.save(net.state_dict(), path)
    other = MedPSegNet().eval()
    result = other.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    a, b = net.state_dict(), other.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ya, yb = net(x), other(x)
    assert all(torch.equal(ya[k], yb[k]) for k in ya)


def test_lightning_checkpoint_state_dict_loads_after_prefix_strip(net: MedPSegNet) -> None:
    """A checkpoint-shaped dict: network keys under ``model.model.``, plus unrelated entries."""
    ckpt = {CHECKPOINT_PREFIX + k: v.clone() for k, v in net.state_dict().items()}
    ckpt["model.some_other_submodule.weight"] = torch.zeros(1)  # under "model." only: not the network's
    other = MedPSegNet()
    other.load_state_dict(strip_checkpoint_prefix(ckpt), strict=True)
    theirs = other.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items())
