"""ResNet-20 for CIFAR (He et al. 2016), as in the push-pull code of Strisciuglio et al.

Post-activation basic blocks, 16/32/64 channels, 3 blocks per stage, 1x1 conv + BN projection
shortcuts where the shape changes, global average pooling and a linear classifier: 272,474
parameters for 10 classes. Convolutions come from a factory, so PP / MSPP variants share this code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustcli.models.factory import ConvFactory, ConvSpec, activation_factory, conv_factory


class BasicBlock(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        stage: str,
        conv: ConvFactory,
        act: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.conv1 = conv(ConvSpec(in_ch, out_ch, 3, stride, 1, stage=stage))
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = act()
        self.conv2 = conv(ConvSpec(out_ch, out_ch, 3, 1, 1, stage=stage))
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = act()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                conv(ConvSpec(in_ch, out_ch, 1, stride, 0, stage="shortcut")),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; ``depth=20`` gives ResNet-20."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        conv: ConvFactory | None = None,
        act: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        conv = conv or conv_factory(None)
        act = act or activation_factory("relu")
        self.stem = conv(ConvSpec(in_channels, widths[0], 3, 1, 1, stage="stem"))
        self.bn = nn.BatchNorm2d(widths[0])
        self.act = act()
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for i, width in enumerate(widths):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_ch, width, stride, f"stage{i + 1}", conv, act))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.last_conv = "layers"  # Grad-CAM target: output of the last residual stage
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))
