"""Inference form of a model: layers replaced by exactly equal cheaper ones, BatchNorms folded.

``prepare_for_inference(model, device)`` gives a copy in eval mode, without gradients, with
every layer that has an exactly equal cheaper form replaced by it, in channels-last memory
format. Each replacement is exactly equal in real arithmetic (tests check the outputs agree to
float rounding):

- ``PushPullConv2d`` without rectification and without attention is linear:
  ``X*K - alpha*X*(-up(K)) = X*(pad(K) + alpha*up(K))``, one convolution with the folded kernel
  (``folded_pushpull``).
- ``MultiScalePushPull``: each ``V_s = U_p - alpha*U_q^s`` is likewise one convolution
  (``FoldedMultiScalePushPull``).
- A convolution whose only consumer is an eval-mode ``BatchNorm2d`` absorbs it (scale and shift
  folded into weight and bias); also the 1x1 fusion convolution of a folded MSPP layer
  (``fuse_conv_bn``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from robustcli.layers.attention import SimAM, SqueezeExcitation
from robustcli.layers.multiscale import MultiScalePushPull
from robustcli.layers.pushpull import PushPullConv2d, pull_kernel, use_fused

__all__ = [
    "FoldedMultiScalePushPull",
    "fold_pushpull",
    "folded_pushpull",
    "fuse_conv_bn",
    "prepare_for_inference",
]


def _conv_like(
    weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any
) -> nn.Conv2d:
    out_ch, in_ch, kh, kw = weight.shape
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride, padding, bias=bias is not None)
    conv = conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)  # type: ignore[union-attr]
    return conv


def folded_pushpull(layer: PushPullConv2d) -> nn.Conv2d:
    """The single convolution equal to an unrectified, attention-free ``PushPullConv2d``."""
    if layer.rectify != "none" or layer.attention is not None:
        raise ValueError("only unrectified push-pull layers without attention are linear")
    with torch.no_grad():
        kernel = layer.folded_kernel()
    pad = layer.pull_size // 2 - layer.kernel_size // 2 + layer.padding
    return _conv_like(kernel, layer.push.bias, layer.stride, pad)


class FoldedMultiScalePushPull(nn.Module):
    """``MultiScalePushPull`` with each push-pull response ``V_s`` computed by one convolution
    (kernel ``pad(K) + alpha*up_s(K)``): same output, no separate pull pass or subtraction."""

    def __init__(self, layer: MultiScalePushPull) -> None:
        super().__init__()
        push = layer.push
        self.push = copy.deepcopy(push)
        k = push.kernel_size[0]
        with torch.no_grad():
            alpha = layer.effective_alpha().reshape(-1, 1, 1, 1)
            convs = []
            for pull, scale in zip(layer.pulls, layer.scales, strict=True):
                grow = (pull.size - k) // 2
                kernel = F.pad(push.weight, (grow,) * 4) - alpha * pull_kernel(push.weight, scale)
                pad = pull.size // 2 - k // 2 + pull.padding  # as PullResponse pads the pull
                convs.append(_conv_like(kernel, push.bias, pull.stride, pad))
        self.responses = nn.ModuleList(convs)
        self.attention = copy.deepcopy(layer.attention)
        self.fuse = copy.deepcopy(layer.fuse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.cat([self.push(x), *(conv(x) for conv in self.responses)], dim=1)
        if self.attention is not None:
            u = self.attention(u)
        return self.fuse(u)


def fold_pushpull(model: nn.Module, keep_fused_on: torch.device | None = None) -> dict[str, int]:
    """Replace, in place, every push-pull layer that has an exactly equal linear form.

    With ``keep_fused_on``, layers that the fused CPU kernel computes on that device are kept
    (counted as ``kept``): the kernel is faster than their folded 7x7 / 9x9 convolutions.
    """
    counts = {"pushpull": 0, "mspp": 0, "kept": 0}
    probe = None if keep_fused_on is None else torch.zeros(1, device=keep_fused_on)

    def visit(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            linear_pp = (
                isinstance(child, PushPullConv2d)
                and child.rectify == "none"
                and child.attention is None
            )
            if not (linear_pp or isinstance(child, MultiScalePushPull)):
                visit(child)
            elif probe is not None and use_fused(child.pull_impl, probe):
                counts["kept"] += 1
            elif linear_pp:
                setattr(module, name, folded_pushpull(child))
                counts["pushpull"] += 1
            else:
                setattr(module, name, FoldedMultiScalePushPull(child))
                counts["mspp"] += 1

    visit(model)
    return counts


_LEAVES: tuple[type[nn.Module], ...] = (
    PushPullConv2d,
    MultiScalePushPull,
    FoldedMultiScalePushPull,
    SqueezeExcitation,
    SimAM,
)


class _Tracer(torch.fx.Tracer):
    """Traces the backbone's wiring only; push-pull and attention layers stay opaque."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, module_qualified_name)


def _fuse_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn)


def fuse_conv_bn(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold every eval-mode BatchNorm2d into the convolution that alone feeds it.

    Uses torch.fx on the backbone's wiring; a model that cannot be traced (data-dependent
    control flow) is returned unchanged. Returns ``(model, number of BatchNorms folded)``.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception:  # tracing is an optimisation: any failure keeps the eager model
        return model, 0
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        if (
            bn.training
            or bn.running_mean is None
            or not isinstance(src, torch.fx.Node)
            or src.op != "call_module"
            or len(src.users) != 1
            or calls.get(src.target, 0) != 1  # a module called twice shares its weights
        ):
            continue
        owner = modules.get(src.target)
        if isinstance(owner, nn.Conv2d):
            target, attr = src.target, None
        elif isinstance(owner, FoldedMultiScalePushPull | MultiScalePushPull):
            target, attr = src.target, "fuse"
        else:
            continue
        conv = owner if attr is None else getattr(owner, attr)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
            continue
        new = _fuse_bn(conv, bn)
        if attr is None:
            parent_name, _, child = target.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            modules[target] = new
        else:
            setattr(owner, attr, new)
        node.replace_all_uses_with(src)
        graph.erase_node(node)
        fused += 1
    if not fused:
        return model, 0
    graph.lint()
    return torch.fx.GraphModule(model, graph, class_name=type(model).__name__), fused


def prepare_for_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    *,
    channels_last: bool | None = None,
    fold: bool = True,
    keep_fused: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` for evaluation: eval mode, no gradients, exactly equal layers
    folded (``fold``), on ``device``, channels-last (default on CPU and CUDA).

    ``keep_fused`` leaves the linear push-pull layers that the fused CPU kernel computes on
    ``device`` unfolded (faster so; BatchNorms are still folded into the MSPP fusion conv).
    Returns ``(module, report)``; ``report`` says what was folded.
    """
    dev = torch.device(device)
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)  # unwrap DDP
    m = copy.deepcopy(inner).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    report: dict[str, Any] = {
        "pushpull_folded": 0,
        "mspp_folded": 0,
        "pushpull_kept_for_kernel": 0,
        "batchnorm_folded": 0,
    }
    if fold:
        counts = fold_pushpull(m, dev if keep_fused else None)
        report["pushpull_folded"], report["mspp_folded"] = counts["pushpull"], counts["mspp"]
        report["pushpull_kept_for_kernel"] = counts["kept"]
        m, report["batchnorm_folded"] = fuse_conv_bn(m.eval())
    if channels_last is None:
        channels_last = dev.type in ("cpu", "cuda")
    m = m.to(dev)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    report["channels_last"] = bool(channels_last)
    return m.eval(), report
