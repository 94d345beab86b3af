"""DenseNet-BC (Huang et al. 2017) for CIFAR; depth 40, growth 12 gives 176,122 parameters.

Pre-activation bottleneck layers (BN-act-1x1 conv to 4k, BN-act-3x3 conv to k), compression 0.5
in the transitions, 2k stem channels. The 3x3 convolutions come from a factory (PP / MSPP).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustcli.models.factory import ConvFactory, ConvSpec, activation_factory, conv_factory


class Bottleneck(nn.Module):
    def __init__(
        self, in_ch: int, growth: int, stage: str, conv: ConvFactory, act: Callable[[], nn.Module]
    ) -> None:
        super().__init__()
        inter = 4 * growth
        self.bn1, self.act1 = nn.BatchNorm2d(in_ch), act()
        self.conv1 = conv(ConvSpec(in_ch, inter, 1, 1, 0, stage="bottleneck"))
        self.bn2, self.act2 = nn.BatchNorm2d(inter), act()
        self.conv2 = conv(ConvSpec(inter, growth, 3, 1, 1, stage=stage))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, conv: ConvFactory, act: Callable[[], nn.Module]
    ) -> None:
        super().__init__()
        self.bn, self.act = nn.BatchNorm2d(in_ch), act()
        self.conv = conv(ConvSpec(in_ch, out_ch, 1, 1, 0, stage="transition"))
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.act(self.bn(x))))


class DenseNetBC(nn.Module):
    def __init__(
        self,
        depth: int = 40,
        growth: int = 12,
        compression: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
        conv: ConvFactory | None = None,
        act: Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        conv = conv or conv_factory(None)
        act = act or activation_factory("relu")
        channels = 2 * growth
        self.stem = conv(ConvSpec(in_channels, channels, 3, 1, 1, stage="stem"))
        blocks: list[nn.Module] = []
        for b in range(3):
            for _ in range(n):
                blocks.append(Bottleneck(channels, growth, f"stage{b + 1}", conv, act))
                channels += growth
            if b < 2:
                out = int(channels * compression)
                blocks.append(Transition(channels, out, conv, act))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.act = nn.BatchNorm2d(channels), act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.last_conv = "blocks"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
