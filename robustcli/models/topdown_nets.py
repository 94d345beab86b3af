"""Paper B's backbones (Lelekas et al. 2020) in bottom-up (BU) and top-down (TD) arrangements.

Backbones: LeNetFC, NIN-light, NIN (the "plain" family: conv units, max-pooling, a 1x1 class
conv and global average pooling) and the pre-activation ResNet32. Each comes as

- ``bu``: the baseline, fine-to-coarse;
- ``td``: coarse-to-fine with the *same stage at each resolution* as BU, so channels shrink
  with depth (paper: "TD mirrors BU");
- ``td_uni``: TD with one width everywhere (LeNetFC 16, NIN-light 48, NIN 192, ResNet32 32);
- ``td_rev``: TD with the BU order of widths along depth (the stage widths are reversed across
  resolutions; kernel sizes stay with the resolution), so channels grow with depth.

All four are built by ``build_paper_b_net`` from one spec per backbone: three stages listed at
full, /2 and /4 resolution; the arrangement only permutes or replaces their widths.

The structure, layer for layer, is the authors' Keras code (github.com/giannislelekas/topdown,
``src/models/models_BUvsTD.py``), so trainable-parameter counts equal paper B's Table 1 (conv
biases on, BN gamma/beta counted; see ``PARAMETER_COUNTS``). Also taken from that code:

- BN hyper-parameters: Keras defaults (eps 1e-3, momentum 0.99, i.e. PyTorch momentum 0.01) in
  the plain nets, eps 1e-5 / momentum 0.9 (PyTorch 0.1) in the ResNets.
- Initialisation: Glorot-uniform convs in the plain nets, truncated He-normal convs and dense
  layer in the ResNets, zero biases.
- TensorFlow 'same' padding for strided convs and max-pooling (pad at the end, windows start at
  pixel 0), so BU ResNet's stride-2 3x3 convs sample where TF's do.
- Max-pooling 2/2 (LeNetFC) or 3/2 with dropout 0.5 after it (NIN, NIN-light) between BU stages;
  in TD the dropout follows each merge instead.
- The plain nets' class scores are ``GAP(act(BN(conv1x1(features))))``: the activation is applied
  to the class map before pooling, as in the authors' models (their softmax is left to the loss).
- In TD, the first stage runs on the /4 input directly; each finer input gets its own conv unit
  (the first conv of that resolution's stage), is merged in (``MergeBlock``) and then the whole
  stage runs on the merged map. The TD ResNet instead upsamples inside a pre-activation residual
  block and fuses with ``AddConcatFuse(preactivation=True)``; its branch convs are bare convs.

TD models take one normalised image; ``pyramid(x)`` gives ``[full, /2, /4]`` and
``forward_scales`` runs the network on such a list, so ``forward(x) == forward_scales(pyramid(x))``.
``forward_multi([x_high, x_mid, x_low])`` feeds three full-resolution images, one per branch, each
blurred and subsampled by its own branch: the authors' ``*_multi`` models of the Fig. 5 ablation.

Every model has ``last_conv`` (a module; its output is the map for Grad-CAM) and
``last_conv_name`` (its dotted name in ``named_modules()``): in the plain nets the last conv unit
before the class conv (the authors' ``act_3``), in the ResNets the last residual block (the output
of the last group, before the final BN-activation). In TD models that map is at input resolution.

Modules: ``topdown_specs`` (backbone specs, ``PARAMETER_COUNTS``, the width arrangements),
``topdown_blocks`` (TF-'same' conv / pooling, conv-unit stages, heads, pre-activation blocks)
and this one (the four model classes and ``build_paper_b_net``); every name of the first two is
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from robustcli.errors import DataError, RobustError
from robustcli.layers.topdown import (
    PYRAMID_METHODS,
    ActFactory,
    ConvBNAct,
    GaussianPyramid,
    MergeBlock,
    NormFactory,
)
from robustcli.models.factory import ACTIVATIONS

# The specs and blocks live in their own modules; re-exported so every name stays importable
# from here (registry, tests and docs import this module).
from robustcli.models.topdown_blocks import (
    ClassConvHead,
    PreActBlock,
    PreActHead,
    PreActUpBlock,
    TFSameConv2d,
    TFSameMaxPool2d,
    plain_stage_units,
    preact_stage,
    same_conv,
    tf_same_pad,
)
from robustcli.models.topdown_specs import (
    ARRANGEMENTS,
    BACKBONES,
    PARAMETER_COUNTS,
    PLAIN_SPECS,
    RESNET_SPECS,
    PlainSpec,
    PlainStage,
    ResNetSpec,
    arrange_plain,
    arrange_resnet,
    arrange_widths,
)

__all__ = [
    "ARRANGEMENTS",
    "BACKBONES",
    "PARAMETER_COUNTS",
    "PLAIN_SPECS",
    "RESNET_SPECS",
    "ClassConvHead",
    "PaperBNet",
    "PlainBottomUp",
    "PlainSpec",
    "PlainStage",
    "PlainTopDown",
    "PreActBlock",
    "PreActHead",
    "PreActResNetBottomUp",
    "PreActResNetTopDown",
    "PreActUpBlock",
    "ResNetSpec",
    "TFSameConv2d",
    "TFSameMaxPool2d",
    "TopDownNet",
    "arrange_plain",
    "arrange_resnet",
    "arrange_widths",
    "build_paper_b_net",
    "plain_stage_units",
    "preact_stage",
    "same_conv",
    "tf_same_pad",
]


# --------------------------------------------------------------------------- model bases


class PaperBNet(nn.Module):
    """Common surface: ``backbone``, ``arrangement``, ``last_conv`` / ``last_conv_name``."""

    backbone: str
    arrangement: str
    last_conv_name: str

    @property
    def last_conv(self) -> nn.Module:
        """The module whose output Grad-CAM uses (see the module docstring)."""
        return self.get_submodule(self.last_conv_name)

    def _set_last_conv(self, module: nn.Module) -> None:
        # Stored by name: registering the module twice would duplicate its state-dict entries.
        self.last_conv_name = next(n for n, m in self.named_modules() if m is module)


class TopDownNet(PaperBNet):
    """Base of the TD models: the input pyramid and the three ways in."""

    def __init__(self, pyramid_method: str = "gaussian") -> None:
        super().__init__()
        self.input_pyramid = GaussianPyramid(pyramid_method)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[high, mid, low]``: ``x`` and its blurred /2 and /4 subsamplings (GaussianPyramid)."""
        h, w = x.shape[-2:]
        if h % 4 or w % 4:
            raise DataError(
                f"top-down models need an input size divisible by 4, got {h}x{w}; resize or crop it"
            )
        return self.input_pyramid(x)

    def forward_scales(self, scales: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class scores from ``[high, mid, low]`` (full, /2, /4 resolution)."""
        if len(scales) != 3:
            raise DataError(f"forward_scales needs [high, mid, low], got {len(scales)} tensors")
        return self._forward_scales(*scales)

    def _forward_scales(
        self, high: torch.Tensor, mid: torch.Tensor, low: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward_multi(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Three full-resolution images, one per branch (high, mid, low), each downscaled by its own
        branch: the authors' ``*_multi`` models, used to attack one input scale only (Fig. 5)."""
        if len(inputs) != 3:
            raise DataError(
                f"forward_multi needs [x_high, x_mid, x_low], got {len(inputs)} tensors"
            )
        high, mid, low = inputs
        return self._forward_scales(
            high, self.input_pyramid.downscale(mid, 1), self.input_pyramid.downscale(low, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_scales(self.pyramid(x))


# --------------------------------------------------------------------------- plain nets


class PlainBottomUp(PaperBNet):
    """BU LeNetFC / NIN-light / NIN: stages split by max-pooling (+ dropout), class-conv head."""

    def __init__(
        self,
        spec: PlainSpec,
        in_channels: int,
        num_classes: int,
        norm: NormFactory,
        act: ActFactory,
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        channels = in_channels
        for i, stage in enumerate(spec.stages):
            units: list[nn.Module] = []
            if i > 0:
                units.append(TFSameMaxPool2d(spec.pool_kernel, 2))
                if spec.dropout:
                    units.append(nn.Dropout(spec.dropout))
            units += plain_stage_units(stage, channels, norm, act)
            stages.append(nn.Sequential(*units))
            channels = stage.widths[-1]
        self.stages = nn.Sequential(*stages)
        self.head = ClassConvHead(channels, num_classes, norm, act)
        self._set_last_conv(stages[-1][-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))


class PlainTopDown(TopDownNet):
    """TD LeNetFC / NIN-light / NIN (authors' ``LeNetFC_TD``, ``NIN_light_TD``, ``NIN_TD`` and their
    ``_uni`` / ``_rev`` variants).

    /4 input -> stage(/4); then for /2 and full: branch = conv unit (the stage's first conv) on
    that input; ``MergeBlock``; dropout (NIN family); the resolution's whole stage; then the head.
    """

    def __init__(
        self,
        spec: PlainSpec,
        in_channels: int,
        num_classes: int,
        norm: NormFactory,
        act: ActFactory,
        pyramid_method: str = "gaussian",
    ) -> None:
        super().__init__(pyramid_method)
        high, mid, low = spec.stages
        self.low_stage = nn.Sequential(*plain_stage_units(low, in_channels, norm, act))
        channels = low.widths[-1]
        branches, merges, stages = [], [], []
        for stage in (mid, high):
            width = stage.widths[0]
            branches.append(ConvBNAct(in_channels, width, stage.kernel, norm=norm, act=act))
            merges.append(MergeBlock(channels, width, norm=norm, act=act))
            dropout = [nn.Dropout(spec.dropout)] if spec.dropout else []
            stages.append(nn.Sequential(*dropout, *plain_stage_units(stage, width, norm, act)))
            channels = stage.widths[-1]
        self.branches = nn.ModuleList(branches)
        self.merges = nn.ModuleList(merges)
        self.stages = nn.ModuleList(stages)
        self.head = ClassConvHead(channels, num_classes, norm, act)
        self._set_last_conv(stages[-1][-1])

    def _forward_scales(
        self, high: torch.Tensor, mid: torch.Tensor, low: torch.Tensor
    ) -> torch.Tensor:
        x = self.low_stage(low)
        for inp, branch, merge, stage in zip(
            (mid, high), self.branches, self.merges, self.stages, strict=True
        ):
            x = stage(merge(x, branch(inp)))
        return self.head(x)


# --------------------------------------------------------------------------- ResNets


class PreActResNetBottomUp(PaperBNet):
    """BU pre-activation ResNet (authors' ``ResNet``): conv3x3 stem, 3 stages of blocks."""

    def __init__(
        self,
        spec: ResNetSpec,
        in_channels: int,
        num_classes: int,
        norm: NormFactory,
        act: ActFactory,
    ) -> None:
        super().__init__()
        widths = spec.widths
        self.stem = same_conv(in_channels, widths[0], 3)
        self.stages = nn.Sequential(
            *(
                preact_stage(widths[max(i - 1, 0)], w, spec.blocks, 1 if i == 0 else 2, norm, act)
                for i, w in enumerate(widths)
            )
        )
        self.head = PreActHead(widths[-1], num_classes, norm, act)
        self._set_last_conv(self.stages[-1][-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class PreActResNetTopDown(TopDownNet):
    """TD pre-activation ResNet (authors' ``ResNet_TD``, ``ResNet_TD_uni``, ``ResNet_TD_rev``).

    /4 input -> conv3x3 -> ``blocks`` blocks; then for /2 and full: branch = bare conv3x3 of that
    input; ``PreActUpBlock`` (upsample + merge); ``blocks - 1`` blocks; finally the head.
    """

    def __init__(
        self,
        spec: ResNetSpec,
        in_channels: int,
        num_classes: int,
        norm: NormFactory,
        act: ActFactory,
        pyramid_method: str = "gaussian",
    ) -> None:
        super().__init__(pyramid_method)
        w_high, w_mid, w_low = spec.widths
        self.stem = same_conv(in_channels, w_low, 3)
        self.low_stage = preact_stage(w_low, w_low, spec.blocks, 1, norm, act)
        self.branches = nn.ModuleList(same_conv(in_channels, w, 3) for w in (w_mid, w_high))
        self.ups = nn.ModuleList(
            PreActUpBlock(c_in, c_out, norm, act)
            for c_in, c_out in ((w_low, w_mid), (w_mid, w_high))
        )
        self.stages = nn.ModuleList(
            preact_stage(w, w, spec.blocks - 1, 1, norm, act) for w in (w_mid, w_high)
        )
        self.head = PreActHead(w_high, num_classes, norm, act)
        self._set_last_conv(self.stages[-1][-1] if len(self.stages[-1]) else self.ups[-1])

    def _forward_scales(
        self, high: torch.Tensor, mid: torch.Tensor, low: torch.Tensor
    ) -> torch.Tensor:
        x = self.low_stage(self.stem(low))
        for inp, branch, up, stage in zip(
            (mid, high), self.branches, self.ups, self.stages, strict=True
        ):
            x = stage(up(x, branch(inp)))
        return self.head(x)


# --------------------------------------------------------------------------- init and builder


def _init_keras_like(model: nn.Module, scheme: str) -> None:
    """Keras initialisers of the authors' models: ``glorot_uniform`` or truncated ``he_normal``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            else:  # TF 1.x he_normal: truncated at 2 std, std corrected for the truncation
                fan_in = m.weight[0].numel()
                std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def build_paper_b_net(
    backbone: str,
    arrangement: str,
    in_channels: int,
    num_classes: int = 10,
    activation: str = "relu",
    *,
    pyramid_method: str = "gaussian",
) -> nn.Module:
    """Build one of paper B's networks.

    Args:
        backbone: ``"lenetfc"``, ``"nin_light"``, ``"nin"`` or ``"resnet32"`` (case and ``-``/``_``
            insensitive).
        arrangement: ``"bu"`` (bottom-up baseline), ``"td"``, ``"td_uni"`` or ``"td_rev"``.
        in_channels: input channels (1 for MNIST / Fashion-MNIST, 3 for CIFAR-10).
        num_classes: number of classes (class-conv width, or the ResNets' linear layer).
        activation: every non-linearity: ``"relu"`` (the paper), ``"gelu"``, ``"silu"``, ``"elu"``.
        pyramid_method: TD input pyramid (``GaussianPyramid``): ``"gaussian"`` (explicit Gaussian
            blur + subsampling, the default) or ``"tf_resize"`` (the authors' scripts' default).

    Returns:
        A ``PaperBNet``; TD arrangements return a ``TopDownNet`` (``pyramid``, ``forward_scales``,
        ``forward_multi``). Models take normalised input and return class scores (logits).
    """
    name, arr = _canonical(backbone), _canonical(arrangement)
    if name not in BACKBONES:
        raise RobustError(
            f"unknown paper-B backbone {backbone!r}: use one of {', '.join(BACKBONES)}"
        )
    if arr not in ARRANGEMENTS:
        raise RobustError(
            f"unknown arrangement {arrangement!r}: use one of {', '.join(ARRANGEMENTS)}"
        )
    if activation not in ACTIVATIONS:
        raise RobustError(f"unknown activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    if pyramid_method not in PYRAMID_METHODS:
        raise RobustError(
            f"unknown pyramid method {pyramid_method!r}: use one of {', '.join(PYRAMID_METHODS)}"
        )
    if in_channels < 1 or num_classes < 1:
        raise RobustError(
            f"in_channels and num_classes must be positive, got {in_channels}, {num_classes}"
        )

    act = ACTIVATIONS[activation]
    model: PaperBNet
    if name in PLAIN_SPECS:
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)  # Keras defaults
        spec = arrange_plain(PLAIN_SPECS[name], arr)
        if arr == "bu":
            model = PlainBottomUp(spec, in_channels, num_classes, norm, act)
        else:
            model = PlainTopDown(spec, in_channels, num_classes, norm, act, pyramid_method)
        _init_keras_like(model, "glorot")
    else:
        norm = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1)  # authors' ResNet settings
        rspec = arrange_resnet(RESNET_SPECS[name], arr)
        if arr == "bu":
            model = PreActResNetBottomUp(rspec, in_channels, num_classes, norm, act)
        else:
            model = PreActResNetTopDown(rspec, in_channels, num_classes, norm, act, pyramid_method)
        _init_keras_like(model, "he")
    model.backbone, model.arrangement = name, arr
    return model
