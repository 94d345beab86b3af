"""Conv factories: how a backbone asks for a convolution without knowing the variant.

A backbone describes each convolution it needs with a ``ConvSpec`` (shapes plus the stage it
belongs to) and calls the factory it was given. The factory decides, from the model config,
whether that place gets a plain ``nn.Conv2d``, a ``PushPullConv2d`` (with or without attention
on the push response) or a ``MultiScalePushPull``. One backbone file thus serves every PP / MSPP
variant and placement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from robustcli.layers.attention import make_attention
from robustcli.layers.multiscale import DEFAULT_SCALES, MultiScalePushPull
from robustcli.layers.pushpull import PushPullConv2d


@dataclass(frozen=True)
class ConvSpec:
    """One convolution a backbone needs. ``stage`` is "stem", "stage1".."stageN" or another
    label such as "shortcut" or "transition"."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    bias: bool = False
    stage: str = ""


ConvFactory = Callable[[ConvSpec], nn.Module]

#: Stages that receive push-pull layers for each placement (paper A Table 2).
PLACEMENTS: dict[str, tuple[str, ...] | None] = {
    "block1": ("stem", "stage1"),  # stem conv + first stage / first dense block
    "all": None,  # every spatial convolution
}


def plain_conv(spec: ConvSpec) -> nn.Module:
    return nn.Conv2d(
        spec.in_channels,
        spec.out_channels,
        spec.kernel_size,
        spec.stride,
        spec.padding,
        bias=spec.bias,
    )


def conv_factory(pp: Mapping[str, Any] | None) -> ConvFactory:
    """Build the conv factory for a ``pp`` config (``None`` gives plain convolutions).

    Keys of ``pp``: ``layer`` ("pushpull" or "mspp"), ``placement`` ("block1" or "all"),
    ``rectify`` ("relu", "gelu", "none"), ``attention`` ("none", "se", "simam"),
    ``reduction`` (SE reduction, 4), ``scale`` (h, 2), ``scales`` (MSPP, (2, 3)), ``alpha`` (1),
    ``trainable_alpha`` (False), ``pull_impl`` ("auto", "dense", "separable" or "fused"; see
    ``PushPullConv2d``; it changes speed, not results).
    Only convolutions with a spatial kernel (k > 1) become push-pull layers.
    """
    if not pp:
        return plain_conv
    pp = dict(pp)
    layer = pp.get("layer", "pushpull")
    placement = pp.get("placement", "block1")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown PP placement {placement!r}; choose one of {sorted(PLACEMENTS)}")
    if layer not in ("pushpull", "mspp"):
        raise ValueError(f"unknown PP layer {layer!r}; choose pushpull or mspp")
    stages = PLACEMENTS[placement]

    def factory(spec: ConvSpec) -> nn.Module:
        if spec.kernel_size < 2 or (stages is not None and spec.stage not in stages):
            return plain_conv(spec)
        common = dict(
            in_channels=spec.in_channels,
            out_channels=spec.out_channels,
            kernel_size=spec.kernel_size,
            stride=spec.stride,
            padding=spec.padding,
            bias=spec.bias,
            alpha=float(pp.get("alpha", 1.0)),
            trainable_alpha=bool(pp.get("trainable_alpha", False)),
            pull_impl=pp.get("pull_impl", "auto"),
        )
        if layer == "mspp":
            return MultiScalePushPull(
                **common,
                scales=tuple(pp.get("scales", DEFAULT_SCALES)),
                attention=pp.get("attention", "se"),
                reduction=int(pp.get("reduction", 4)),
            )
        attention = make_attention(
            pp.get("attention", "none"), spec.out_channels, int(pp.get("reduction", 4))
        )
        return PushPullConv2d(
            **common,
            rectify=pp.get("rectify", "relu"),
            scale=float(pp.get("scale", 2.0)),
            attention=attention,
        )

    return factory


#: Network activations by name (shared by every backbone).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


def activation_factory(name: str) -> Callable[[], nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
