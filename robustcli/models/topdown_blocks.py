"""Building blocks of paper B's networks (``robustcli.models.topdown_nets``).

TensorFlow-'same' strided conv and max-pooling (so strided layers sample where the authors'
Keras models do), the plain nets' conv-unit stages and class-conv head, and the pre-activation
residual blocks (plain and upsampling-and-merging) with the ResNets' head. The generic top-down
layers (pyramid, merges, upsampling) live in ``robustcli.layers.topdown``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.layers.topdown import (
    ActFactory,
    AddConcatFuse,
    ConvBNAct,
    NormFactory,
    upsample_nearest2x,
)
from robustcli.models.topdown_specs import PlainStage


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad like TensorFlow's ``padding='SAME'``: ``ceil(n / stride)`` outputs, odd pad at end."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class TFSameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow 'same' padding (matters for stride > 1 on even sizes)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(tf_same_pad(x, self.kernel_size[0], self.stride[0]))


class TFSameMaxPool2d(nn.Module):
    """Max-pooling with TensorFlow 'same' padding (padded values never win)."""

    def __init__(self, kernel_size: int, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_same_pad(x, self.kernel_size, self.stride, value=-math.inf)
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding='same'"


def same_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Conv with 'same' output size; TF's end-heavy padding when strided (see TFSameConv2d)."""
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    return TFSameConv2d(in_channels, out_channels, kernel, stride)


def plain_stage_units(
    stage: PlainStage, in_channels: int, norm: NormFactory, act: ActFactory
) -> list[nn.Module]:
    """A plain stage's conv units: ``kernel x kernel`` first, 1x1 after, one per width."""
    units: list[nn.Module] = []
    for i, width in enumerate(stage.widths):
        units.append(
            ConvBNAct(in_channels, width, stage.kernel if i == 0 else 1, norm=norm, act=act)
        )
        in_channels = width
    return units


class ClassConvHead(nn.Sequential):
    """The plain nets' head: ``1x1 conv -> BN -> act -> global average pooling`` (class scores)."""

    def __init__(
        self, in_channels: int, num_classes: int, norm: NormFactory, act: ActFactory
    ) -> None:
        super().__init__(
            ConvBNAct(in_channels, num_classes, 1, norm=norm, act=act),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )


class PreActHead(nn.Sequential):
    """The ResNets' head: ``BN -> act -> global average pooling -> linear``."""

    def __init__(
        self, in_channels: int, num_classes: int, norm: NormFactory, act: ActFactory
    ) -> None:
        super().__init__(
            norm(in_channels),
            act(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_channels, num_classes),
        )


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016b) as in the authors' ``residual_block``.

    ``o = act(BN(x))``; ``out = shortcut + conv3x3(act(BN(conv3x3_stride(o))))`` with shortcut
    ``x``, or a strided 1x1 conv of ``o`` when the stride or width changes.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: NormFactory, act: ActFactory
    ) -> None:
        super().__init__()
        self.bn1, self.act1 = norm(in_channels), act()
        self.conv1 = same_conv(in_channels, out_channels, 3, stride)
        self.bn2, self.act2 = norm(out_channels), act()
        self.conv2 = same_conv(out_channels, out_channels, 3)
        self.shortcut = (
            same_conv(in_channels, out_channels, 1, stride)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(o)
        return shortcut + self.conv2(self.act2(self.bn2(self.conv1(o))))


class PreActUpBlock(nn.Module):
    """TD ResNet transition: a pre-activation block that upsamples x2, then merges a finer branch.

    ``o = act(BN(x))``; shortcut = ``up(conv1x1(o))`` if the width changes, else ``up(x)``;
    ``y = shortcut + conv3x3(act(BN(conv3x3(up(o)))))``; output
    ``AddConcatFuse(preactivation=True)(y, branch)``, i.e.
    ``conv3x3(act(BN(concat(y + branch, branch))))``.
    This is the authors' ``residual_block(..., increase=True, skip=[branch])`` in ``ResNet_TD*``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, norm: NormFactory, act: ActFactory
    ) -> None:
        super().__init__()
        self.bn1, self.act1 = norm(in_channels), act()
        self.shortcut = (
            same_conv(in_channels, out_channels, 1) if in_channels != out_channels else None
        )
        self.conv1 = same_conv(in_channels, out_channels, 3)
        self.bn2, self.act2 = norm(out_channels), act()
        self.conv2 = same_conv(out_channels, out_channels, 3)
        self.merge = AddConcatFuse(
            out_channels, out_channels, preactivation=True, norm=norm, act=act
        )

    def forward(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        o = self.act1(self.bn1(x))
        shortcut = upsample_nearest2x(x if self.shortcut is None else self.shortcut(o))
        y = shortcut + self.conv2(self.act2(self.bn2(self.conv1(upsample_nearest2x(o)))))
        return self.merge(y, branch)


def preact_stage(
    in_channels: int, width: int, blocks: int, stride: int, norm: NormFactory, act: ActFactory
) -> nn.Sequential:
    """``blocks`` pre-activation blocks; the first one changes width / stride."""
    first = [PreActBlock(in_channels, width, stride, norm, act)] if blocks else []
    rest = [PreActBlock(width, width, 1, norm, act) for _ in range(blocks - 1)]
    return nn.Sequential(*first, *rest)
