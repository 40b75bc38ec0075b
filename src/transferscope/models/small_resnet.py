"""A CIFAR-style ResNet small enough to train on a laptop CPU.

Stem ``conv1`` (3x3 conv, BatchNorm, ReLU), four residual stages ``layer1``..``layer4``
of BasicBlocks with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2, global average
pooling, linear head ``fc``: the module names of torchvision's ResNets, so every
analysis addresses both the same way (He et al. 2016).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    layer1: nn.Sequential  # the stages, set in a loop
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1, 1),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"blocks must list 4 stage depths, got {list(blocks)}")
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        channels = width
        for index, (depth, stride) in enumerate(zip(blocks, (1, 2, 2, 2)), start=1):
            out_channels = width * 2 ** (index - 1)
            stage = [BasicBlock(channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
                     for i in range(depth)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            channels = out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
