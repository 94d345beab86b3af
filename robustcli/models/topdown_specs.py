"""Paper B's backbone specs and the four width arrangements (BU, TD, TD_uni, TD_rev).

Each backbone is one spec listing its three stages at full, /2 and /4 resolution in BU order;
``arrange_plain`` / ``arrange_resnet`` permute or replace those widths for an arrangement. The
networks built from these specs are in ``robustcli.models.topdown_nets``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from robustcli.errors import RobustError

BACKBONES = ("lenetfc", "nin_light", "nin", "resnet32")
ARRANGEMENTS = ("bu", "td", "td_uni", "td_rev")


# Exact trainable-parameter counts for 10 classes at the paper's input channels (MNIST: 1,
# CIFAR-10: 3). Paper B, Table 1 gives all BU and TD counts and ResNet32's TD_uni / TD_rev
# exactly; it rounds the other TD_uni / TD_rev counts (in parentheses), which these match.
PARAMETER_COUNTS: dict[tuple[str, str], int] = {
    ("lenetfc", "bu"): 7_670,
    ("lenetfc", "td"): 14_452,
    ("lenetfc", "td_uni"): 23_486,  # paper: ~23k
    ("lenetfc", "td_rev"): 57_846,  # paper: ~58k
    ("nin_light", "bu"): 62_094,
    ("nin_light", "td"): 212_670,
    ("nin_light", "td_uni"): 214_734,  # paper: ~215k
    ("nin_light", "td_rev"): 214_206,  # paper: ~214k
    ("nin", "bu"): 969_822,
    ("nin", "td"): 3_368_478,
    ("nin", "td_uni"): 3_397_470,  # paper: ~3,397k
    ("nin", "td_rev"): 3_388_446,  # paper: ~3,388k
    ("resnet32", "bu"): 467_946,
    ("resnet32", "td"): 528_042,
    ("resnet32", "td_uni"): 319_626,
    ("resnet32", "td_rev"): 563_274,
}

T = TypeVar("T")


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class PlainStage:
    """One resolution of a plain net: a ``kernel x kernel`` conv unit, then 1x1 conv units."""

    kernel: int
    widths: tuple[int, ...]


@dataclass(frozen=True)
class PlainSpec:
    """LeNetFC / NIN-family backbone: ``stages`` at full, /2 and /4 resolution (BU order)."""

    stages: tuple[PlainStage, PlainStage, PlainStage]
    pool_kernel: int
    dropout: float
    uni_width: int


@dataclass(frozen=True)
class ResNetSpec:
    """Pre-activation CIFAR ResNet: ``widths`` at full, /2, /4 resolution, ``blocks`` per stage."""

    widths: tuple[int, int, int] = (16, 32, 64)
    blocks: int = 5
    uni_width: int = 32


PLAIN_SPECS: dict[str, PlainSpec] = {
    "lenetfc": PlainSpec(
        stages=(PlainStage(5, (6,)), PlainStage(5, (16,)), PlainStage(3, (32,))),
        pool_kernel=2,
        dropout=0.0,
        uni_width=16,
    ),
    "nin_light": PlainSpec(
        stages=(PlainStage(5, (48, 40, 24)), PlainStage(5, (48, 48, 48)), PlainStage(3, (48, 48))),
        pool_kernel=3,
        dropout=0.5,
        uni_width=48,
    ),
    "nin": PlainSpec(
        stages=(
            PlainStage(5, (192, 160, 96)),
            PlainStage(5, (192, 192, 192)),
            PlainStage(3, (192, 192)),
        ),
        pool_kernel=3,
        dropout=0.5,
        uni_width=192,
    ),
}
RESNET_SPECS: dict[str, ResNetSpec] = {"resnet32": ResNetSpec()}


def arrange_widths(
    per_resolution: Sequence[T], arrangement: str, uniform: Callable[[T], T]
) -> list[T]:
    """Widths at full, /2, /4 resolution for an arrangement, from the BU ones.

    ``bu`` / ``td`` keep them (TD runs the same stages coarse-to-fine), ``td_uni`` maps each
    through ``uniform``, ``td_rev`` reverses them so that widths grow along TD's depth.
    """
    if arrangement in ("bu", "td"):
        return list(per_resolution)
    if arrangement == "td_uni":
        return [uniform(w) for w in per_resolution]
    if arrangement == "td_rev":
        return list(reversed(per_resolution))
    raise RobustError(f"unknown arrangement {arrangement!r}: use one of {', '.join(ARRANGEMENTS)}")


def arrange_plain(spec: PlainSpec, arrangement: str) -> PlainSpec:
    """``spec`` with its stage widths arranged (kernels stay with their resolution)."""
    widths = arrange_widths(
        [s.widths for s in spec.stages], arrangement, lambda w: (spec.uni_width,) * len(w)
    )
    stages = tuple(PlainStage(s.kernel, w) for s, w in zip(spec.stages, widths, strict=True))
    return replace(spec, stages=stages)


def arrange_resnet(spec: ResNetSpec, arrangement: str) -> ResNetSpec:
    """``spec`` with its stage widths arranged."""
    widths = arrange_widths(spec.widths, arrangement, lambda _: spec.uni_width)
    return replace(spec, widths=tuple(widths))
