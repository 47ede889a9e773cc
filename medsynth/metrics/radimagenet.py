"""RadImageNet's ResNet-50 (the MAISI / MedSyn2 FD feature network) and MAISI's 2.5D input recipe.

The released weights (``RadImageNet-ResNet50_notop.pth``, the PyTorch port of the Keras model that the
torch.hub repo Warvito/radimagenet-models loads) belong to Keras' ResNet-50 v1 topology, which differs
from torchvision's: the stride of a down-sampling block sits on its first 1x1 convolution, every
convolution has a bias, BatchNorm eps is 1.001e-5, and there is no pooling or classifier ("notop": the
output is the 2048-channel map of the last stage). :class:`RadImageNetResNet50` is that topology with
the release's parameter names, so the state dict loads strictly.

MAISI's public 2.5D FID script (NV-Generate-CTMR ``scripts/compute_fid_2-5d_ct.py``; the facts used
here, not its code): HU clipped to [-1000, 1000]; the slices of one plane of one volume scaled together
by one min-max to [0, 1]; grey repeated to 3 channels (its RGB -> BGR flip is a no-op on grey); the
BGR ImageNet mean ``(0.406, 0.456, 0.485)`` subtracted, no division by a standard deviation; no
resizing; features = the spatial mean of the output map; FID per plane, reported as the mean of XY,
YZ and ZX; central 40 % of the slices of each axis in the published evaluation. Those facts are the
defaults of ``metrics.fd_recipes.radimagenet_resnet50`` (:mod:`medsynth.metrics.recipes`).
"""

from __future__ import annotations


import torch
from torch import nn

__all__ = ["RadImageNetResNet50"]

_EPS = 1.001e-5


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_EPS)


class _Bottleneck(nn.Module):
    """Keras ResNet v1 bottleneck: 1x1 (stride here) -> 3x3 -> 1x1 (x4), biased convolutions."""

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = 4 * width
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, out, 1)
        self.bn3 = _bn(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride), _bn(out))
                           if stride != 1 or in_channels != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class RadImageNetResNet50(nn.Module):
    """The notop RadImageNet ResNet-50: ``(B, 3, H, W) -> (B, 2048, H/32, W/32)`` (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for i, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
            layers = [_Bottleneck(channels, width, stride)] + [_Bottleneck(4 * width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            channels = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
