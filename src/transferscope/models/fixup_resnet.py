"""Fixup ResNet-50: the paper's model, a ResNet without BatchNorm.

Zhang, Dauphin & Ma, "Fixup Initialization" (ICLR 2019): every bottleneck branch
gets scalar biases before each conv and activation and a scalar multiplier; the
first two convs of a branch are He-initialised and scaled by L^(-1/(2m-2)) with L
residual branches and m = 3 layers per branch, the last conv and the classifier
start at zero. Neyshabur et al. (2020) used this model so that no BatchNorm
statistics are involved in their interpolation and criticality results.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def _scalar(value: float = 0.0) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), value))


class FixupBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.bias1a, self.bias1b = _scalar(), _scalar()
        self.bias2a, self.bias2b = _scalar(), _scalar()
        self.bias3a, self.bias3b = _scalar(), _scalar()
        self.scale = _scalar(1.0)
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.relu(self.conv2(out + self.bias2a) + self.bias2b)
        out = self.conv3(out + self.bias3a) * self.scale + self.bias3b
        identity = x if self.downsample is None else self.downsample(x + self.bias1a)
        return self.relu(out + identity)


class FixupResNet(nn.Module):
    state_key_owners = {"bias1": "conv1", "bias2": "fc"}
    layer1: nn.Sequential  # the stages, set in a loop
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, num_classes: int = 1000, layers: Sequence[int] = (3, 4, 6, 3), in_channels: int = 3) -> None:
        super().__init__()
        num_branches = sum(layers)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bias1 = _scalar()
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        for index, (depth, planes, stride) in enumerate(zip(layers, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            blocks = []
            for i in range(depth):
                blocks.append(FixupBottleneck(channels, planes, stride if i == 0 else 1))
                channels = planes * FixupBottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bias2 = _scalar()
        self.fc = nn.Linear(channels, num_classes)
        branch_scale = num_branches ** (-1.0 / (2 * 3 - 2))
        for module in self.modules():
            if isinstance(module, FixupBottleneck):
                for conv in (module.conv1, module.conv2):
                    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
                    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out) * branch_scale)
                nn.init.zeros_(module.conv3.weight)
                if module.downsample is not None:
                    fan_out = module.downsample.out_channels
                    nn.init.normal_(module.downsample.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.conv1(x) + self.bias1))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1) + self.bias2)


def fixup_resnet50(num_classes: int = 1000, in_channels: int = 3) -> FixupResNet:
    return FixupResNet(num_classes, (3, 4, 6, 3), in_channels)
