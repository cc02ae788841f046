"""Backbones and heads (docs/algorithms.md#byol).

CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, four stages of two BasicBlocks, global
average pooling; 512-d output at width 1.0. `width` scales every stage's channels so that CPU
runs can use a narrow network with the same structure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import Choice, Float


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs; `forward` returns pooled features of size `out_dim`."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), width: float = 1.0, in_channels: int = 3):
        super().__init__()
        planes = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        in_planes = planes[0]
        stages = []
        for i, (p, n) in enumerate(zip(planes, blocks)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, p, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = p
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_dim = in_planes

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of layer1-4 (a detector's FPN reads the last three)."""
        out, maps = F.relu(self.bn1(self.conv1(x))), []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(out)
            maps.append(out)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.feature_maps(x)[-1], 1), 1)


ARCHITECTURES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet10": (1, 1, 1, 1)}
# model.* (conf/model/*.yaml)
CONFIG = {"model.arch": Choice(options=tuple(ARCHITECTURES)), "model.width": Float(above=0)}


def build_backbone(arch: str = "resnet18", width: float = 1.0) -> CifarResNet:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model.arch '{arch}'; valid: {sorted(ARCHITECTURES)}")
    return CifarResNet(ARCHITECTURES[arch], width)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear: BYOL's projector and predictor (docs/algorithms.md#byol)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )


class Encoder(nn.Module):
    """Backbone followed by projector: what BYOL calls the online (or target) encoder."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def mlp_encoder(arch: str, width: float, proj_hidden: int, proj_dim: int) -> Encoder:
    """Backbone + MLP projector, the online encoder shared by BYOL, SimSiam, SimCLR and SwAV."""
    backbone = build_backbone(arch, width)
    return Encoder(backbone, mlp_head(backbone.out_dim, proj_hidden, proj_dim))


def is_divergence_weight(key: str, prefix: str) -> bool:
    """Backbone conv weights used by FedU's divergence (docs/algorithms.md#the-divergence-aware-predictor-update-dapu): stem and block convs,
    not the 1x1 shortcut convs, no BatchNorm, no heads."""
    if not key.startswith(prefix + "backbone.") or not key.endswith(".weight"):
        return False
    name = key[len(prefix + "backbone.") :]
    return "shortcut" not in name and (name == "conv1.weight" or ".conv" in name)
