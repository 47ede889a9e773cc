"""Clean re-implementation of the MEDPSeg 2.5D inference network.

MEDPSeg (MICLab-Unicamp/medpseg, MIT) segments lung, ground-glass opacity (GGO) and
consolidation on chest CT, plus airways and pulmonary arteries. Its released
``poly_medseg_25d_fix.ckpt`` holds a Lightning ``state_dict`` whose network keys start
with :data:`CHECKPOINT_PREFIX`. This module rebuilds that network so the stripped keys
load with ``load_state_dict(strict=True)``:

* EfficientNet-B4 backbone (MONAI's implementation, re-keyed to the flat
  ``_blocks.N`` layout of ``efficientnet_pytorch``). Its "same" padding is computed once
  for a 380 x 380 image, like ``efficientnet_pytorch`` 0.7.1, and reused at any size.
* Two stacks of 3 BiFPN layers (128 channels, fast normalised fusion): one for the
  main head, one for the airway / artery ("circulatory") branch.
* A spatial attention gate on each of the 5 pyramid outputs of each stack.
* Heads: "main" (background, healthy lung, GGO, consolidation), "atm" (airway) and
  "vessel" (artery), 2 channels each (softmax), plus optional deep-supervision heads.

Only the topology is re-created here; no weights are shipped. The forward pass returns
logits; upstream applies ``softmax(dim=1)`` to every output.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import EfficientNetBN
from torch import Tensor, nn

__all__ = ["CHECKPOINT_PREFIX", "EXPANSIONS", "MedPSegNet", "strip_checkpoint_prefix"]

#: Prefix of the network's keys inside the Lightning checkpoint's ``state_dict``
#: (``PolySeg2DModule.model`` -> ``MEDSeg.model`` -> this network).
CHECKPOINT_PREFIX = "model.model."

#: Ways of bringing the pyramid output back to the input resolution.
EXPANSIONS = ("upsample", "upsample_sum", "conv")

_BN_KW = {"momentum": 0.01, "eps": 1e-3}
_FUSION_EPS = 1e-4


def strip_checkpoint_prefix(state_dict: dict[str, Tensor], prefix: str = CHECKPOINT_PREFIX) -> dict[str, Tensor]:
    """Keep the entries under ``prefix`` and drop it (other keys, e.g. optimiser, are ignored)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _tf_same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Zero-pad like TensorFlow "SAME", from the tensor's own size (extra pixel right/bottom)."""
    pads: list[int] = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class _SameConv(nn.Module):
    """Conv2d with dynamic TF-"same" padding; the convolution lives in ``.conv``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, groups=groups, bias=bias)
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(_tf_same_pad(x, self.kernel, self.stride))


class _SameMaxPool(nn.Module):
    """3 x 3 stride-2 max pooling after dynamic TF-"same" zero padding."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(_tf_same_pad(x, 3, 2), 3, 2)


class _SepConv(nn.Module):
    """Depthwise 3 x 3 (no bias) then pointwise 1 x 1 (bias), optionally batch-normalised."""

    def __init__(self, cin: int, cout: int | None = None, norm: bool = True) -> None:
        super().__init__()
        cout = cin if cout is None else cout
        self.depthwise_conv = _SameConv(cin, cin, 3, groups=cin, bias=False)
        self.pointwise_conv = _SameConv(cin, cout, 1)
        self.bn = nn.BatchNorm2d(cout, **_BN_KW) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.pointwise_conv(self.depthwise_conv(x))
        return x if self.bn is None else self.bn(x)


def _down_channel(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [_SameConv(cin, cout, 1), nn.BatchNorm2d(cout, **_BN_KW)]
    return nn.Sequential(*layers, _SameMaxPool()) if pool else nn.Sequential(*layers)


class _BiFPNLayer(nn.Module):
    """One BiFPN layer over levels P3..P7 with fast normalised (ReLU-weighted) fusion.

    The first layer of a stack takes the three backbone maps, projects them to
    ``channels`` and builds P6 / P7 by 1 x 1 conv + BN + max-pooling of P5.
    """

    _NODES = {"p6_w1": 2, "p5_w1": 2, "p4_w1": 2, "p3_w1": 2, "p4_w2": 3, "p5_w2": 3, "p6_w2": 3, "p7_w2": 2}

    def __init__(self, channels: int, in_channels: tuple[int, int, int], first: bool) -> None:
        super().__init__()
        self.first = first
        for name in ("conv6_up", "conv5_up", "conv4_up", "conv3_up", "conv4_down", "conv5_down", "conv6_down", "conv7_down"):
            setattr(self, name, _SepConv(channels))
        if first:
            c3, c4, c5 = in_channels
            self.p5_down_channel = _down_channel(c5, channels)
            self.p4_down_channel = _down_channel(c4, channels)
            self.p3_down_channel = _down_channel(c3, channels)
            self.p5_to_p6 = _down_channel(c5, channels, pool=True)
            self.p6_to_p7 = nn.Sequential(_SameMaxPool())
            self.p4_down_channel_2 = _down_channel(c4, channels)
            self.p5_down_channel_2 = _down_channel(c5, channels)
        for name, n in self._NODES.items():
            setattr(self, name, nn.Parameter(torch.ones(n)))

    def _fuse(self, node: str, *xs: Tensor) -> Tensor:
        w = F.relu(getattr(self, node))
        w = w / (w.sum(dim=0) + _FUSION_EPS)
        out = w[0] * xs[0]
        for i in range(1, len(xs)):
            out = out + w[i] * xs[i]
        return F.silu(out)

    def forward(self, feats: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        def up(x: Tensor) -> Tensor:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")

        pool = _SameMaxPool()
        if self.first:
            c3, c4, c5 = feats
            p6 = self.p5_to_p6(c5)
            p7 = self.p6_to_p7(p6)
            p3, p4, p5 = self.p3_down_channel(c3), self.p4_down_channel(c4), self.p5_down_channel(c5)
        else:
            p3, p4, p5, p6, p7 = feats
        p6_td = self.conv6_up(self._fuse("p6_w1", p6, up(p7)))
        p5_td = self.conv5_up(self._fuse("p5_w1", p5, up(p6_td)))
        p4_td = self.conv4_up(self._fuse("p4_w1", p4, up(p5_td)))
        p3_out = self.conv3_up(self._fuse("p3_w1", p3, up(p4_td)))
        if self.first:  # the bottom-up path gets its own projection of the backbone maps
            p4, p5 = self.p4_down_channel_2(c4), self.p5_down_channel_2(c5)
        p4_out = self.conv4_down(self._fuse("p4_w2", p4, p4_td, pool(p3_out)))
        p5_out = self.conv5_down(self._fuse("p5_w2", p5, p5_td, pool(p4_out)))
        p6_out = self.conv6_down(self._fuse("p6_w2", p6, p6_td, pool(p5_out)))
        p7_out = self.conv7_down(self._fuse("p7_w2", p7, pool(p6_out)))
        return p3_out, p4_out, p5_out, p6_out, p7_out


def _bifpn_stack(channels: int, in_channels: tuple[int, int, int], repeats: int) -> nn.Sequential:
    return nn.Sequential(*[_BiFPNLayer(channels, in_channels, first=i == 0) for i in range(repeats)])


class _AttentionGate(nn.Module):
    """Spatial gate: 1 x 1 convs C -> C/2 -> C/4 -> 1 (leaky ReLU), sigmoid, multiply."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first_conv = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.second_conv = nn.Conv2d(channels // 2, channels // 4, 1, bias=False)
        self.third_conv = nn.Conv2d(channels // 4, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.first_conv(x), 0.01)
        y = F.leaky_relu(self.second_conv(y), 0.01)
        return x * torch.sigmoid(self.third_conv(y))


class _SegHead(nn.Module):
    """``layers`` x (separable conv, BN, swish), then a separable conv to ``classes`` logits."""

    def __init__(self, channels: int, classes: int, layers: int, ds_heads: int = 0) -> None:
        super().__init__()
        self.conv_list = nn.ModuleList([_SepConv(channels, norm=False) for _ in range(layers)])
        self.bn_list = nn.ModuleList([nn.BatchNorm2d(channels, **_BN_KW) for _ in range(layers)])
        self.header = _SepConv(channels, classes, norm=False)
        if ds_heads:  # only the main classifier nests its deep-supervision heads
            self.ds_seg_heads = nn.ModuleList([_SegHead(channels, classes, layers) for _ in range(ds_heads)])

    def forward(self, x: Tensor) -> Tensor:
        for conv, bn in zip(self.conv_list, self.bn_list):
            x = F.silu(bn(conv(x)))
        return self.header(x)


class _CirculatoryBranch(nn.Module):
    """Airway / artery branch: own BiFPN stack and gates over the shared backbone maps."""

    def __init__(self, channels: int, in_channels: tuple[int, int, int], repeats: int, classes: int,
                 deep_supervision: bool, expand_conv: nn.Module | None) -> None:
        super().__init__()
        self.bifpn = _bifpn_stack(channels, in_channels, repeats)
        if expand_conv is not None:  # shared with the main path, so it is stored (and saved) twice
            self.expand_conv = expand_conv
        self.airway_head = _SegHead(channels, classes, repeats)
        self.vessel_head = _SegHead(channels, classes, repeats)
        self.attention_modules = nn.ModuleList([_AttentionGate(channels) for _ in range(5)])
        if deep_supervision:
            self.ds_airway_heads = nn.ModuleList([_SegHead(channels, classes, repeats) for _ in range(4)])
            self.ds_vessel_heads = nn.ModuleList([_SegHead(channels, classes, repeats) for _ in range(4)])


class _Backbone(nn.Module):
    """EfficientNet-B4 trunk under ``.model`` returning the maps at strides 2, 4 and 8."""

    def __init__(self) -> None:
        super().__init__()
        net = EfficientNetBN("efficientnet-b4", pretrained=False, spatial_dims=2, in_channels=3)
        for name in ("_conv_head", "_conv_head_padding", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            delattr(net, name)
        flat = [block for stage in net._blocks for block in stage]
        net._blocks = nn.ModuleList(flat)  # efficientnet_pytorch keys: _blocks.<global index>
        self.model = net
        # A pyramid level is the output of the block just before each stride-2 block.
        strided = [i for i, b in enumerate(flat) if tuple(b._depthwise_conv.stride) == (2, 2)]
        self.taps = tuple(i - 1 for i in strided[:3])
        self.out_channels = tuple(flat[i]._project_conv.out_channels for i in self.taps)

    def forward(self, x: Tensor) -> list[Tensor]:
        net = self.model
        x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(x))))
        feats: list[Tensor] = []
        for i, block in enumerate(net._blocks[: self.taps[-1] + 1]):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


class MedPSegNet(nn.Module):
    """MEDPSeg 2.5D network (``poly_medseg_25d_fix.ckpt`` topology).

    Args:
        num_classes: channels of the main head (background, healthy lung, GGO, consolidation).
        circulatory_classes: channels of the airway and artery heads (2 = softmax form).
        bifpn_channels: width of the pyramid and of the heads.
        repeats: BiFPN layers per stack, and conv layers per head.
        expansion: how the pyramid output reaches full resolution: ``"upsample"``
            (bilinear x2 of P3, ``align_corners=True``), ``"upsample_sum"`` (sum of all five
            levels, each upsampled bilinearly to full size) or ``"conv"`` (shared
            ConvTranspose2d + BN + swish, adds ``expand_conv`` keys).
        deep_supervision: build the four extra low-resolution heads per output (keys
            ``ds_*``). Not allowed with ``"upsample_sum"``.
        return_deep_supervision: also compute those heads in ``forward`` (keys
            ``main1..4``, ``atm1..4``, ``vessel1..4``); inference only needs the
            full-resolution outputs.
    """

    def __init__(self, num_classes: int = 4, circulatory_classes: int = 2, bifpn_channels: int = 128,
                 repeats: int = 3, expansion: str = "upsample", deep_supervision: bool = True,
                 return_deep_supervision: bool = False) -> None:
        super().__init__()
        if expansion not in EXPANSIONS:
            raise ValueError(f"expansion must be one of {EXPANSIONS}, got {expansion!r}")
        if deep_supervision and expansion == "upsample_sum":
            raise ValueError("deep supervision cannot be combined with upsample_sum fusion")
        self.expansion, self.deep_supervision = expansion, deep_supervision
        self.return_deep_supervision = return_deep_supervision and deep_supervision
        c = bifpn_channels
        self.backbone_net = _Backbone()
        in_ch = self.backbone_net.out_channels  # (24, 32, 56) for B4
        self.bifpn = _bifpn_stack(c, in_ch, repeats)
        self.attention_modules = nn.ModuleList([_AttentionGate(c) for _ in range(5)])
        self.classifier = _SegHead(c, num_classes, repeats, ds_heads=4 if deep_supervision else 0)
        shared: nn.Module | None = None
        if expansion == "conv":
            shared = nn.Sequential(nn.ConvTranspose2d(c, c, 2, 2), nn.BatchNorm2d(c), nn.SiLU())
            self.expand_conv = shared
        self.circulatory_classifier = _CirculatoryBranch(c, in_ch, repeats, circulatory_classes,
                                                         deep_supervision, shared)

    def _expand(self, feats: list[Tensor], levels: int) -> list[Tensor]:
        """Bring the first ``levels`` pyramid maps up by 2 (or fuse all five at full size)."""
        if self.expansion == "upsample_sum":
            out = None
            for i, f in enumerate(feats):
                f = F.interpolate(f, scale_factor=float(2 ** (i + 1)), mode="bilinear", align_corners=True)
                out = f if out is None else out + f
            return [out]
        if self.expansion == "conv":
            return [self.expand_conv(f) for f in feats[:levels]]
        return [F.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=True) for f in feats[:levels]]

    def _pyramid(self, stack: nn.Module, gates: nn.ModuleList, feats: list[Tensor]) -> list[Tensor]:
        levels = stack(tuple(feats))
        gated = [gate(f) for gate, f in zip(gates, levels)]
        return self._expand(gated, 5 if self.return_deep_supervision else 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run on ``x`` of shape (B, 3, H, W): slices z-1, z, z+1 scaled to [0, 1].

        H and W should be multiples of 32. Returns logits: ``"main"`` (B, 4, H, W),
        ``"atm"`` and ``"vessel"`` (B, 2, H, W), plus the deep-supervision outputs at
        H/2^i when ``return_deep_supervision`` is set.
        """
        feats = self.backbone_net(x)
        out: dict[str, Tensor] = {}
        main = self._pyramid(self.bifpn, self.attention_modules, feats)
        out["main"] = self.classifier(main[0])
        circ = self.circulatory_classifier
        vessels = self._pyramid(circ.bifpn, circ.attention_modules, feats)
        out["atm"] = circ.airway_head(vessels[0])
        out["vessel"] = circ.vessel_head(vessels[0])
        if self.return_deep_supervision:
            for i in range(1, 5):
                out[f"main{i}"] = self.classifier.ds_seg_heads[i - 1](main[i])
                out[f"atm{i}"] = circ.ds_airway_heads[i - 1](vessels[i])
                out[f"vessel{i}"] = circ.ds_vessel_heads[i - 1](vessels[i])
        return out
