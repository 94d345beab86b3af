"""Grad-CAM (Selvaraju et al. 2017) at one layer and through the whole network (paper B, Fig. 7).

Layer lookup (``conv_units``, ``default_layer``, ``resolve_layer``, ``describe_layers``) and the
heatmaps themselves (``grad_cam``, ``layer_heatmaps``, ``normalize_heatmaps``). Everything here
works on a plain ``nn.Module`` and normalised input; loading models and data is ``model.py``'s.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.errors import DataError, RobustError

NORMALIZATIONS = ("max", "centered")
Normalization = Literal["max", "centered"]
Target = int | str | torch.Tensor | None


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def conv_units(model: nn.Module) -> list[str]:
    """Names of the model's conv units, in registration order.

    A conv unit is the outermost module that directly owns an ``nn.Conv2d`` (e.g. ``ConvBNAct``,
    a residual block, a merge's fuse), or a bare ``nn.Conv2d`` owned by no such module (a stem,
    a TD branch conv). Its output is the feature map Grad-CAM reads.
    """
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, nn.ModuleList | nn.ModuleDict):
            continue
        if isinstance(module, nn.Conv2d) or any(
            isinstance(c, nn.Conv2d) for c in module.children()
        ):
            found.append(name)
    found_set = set(found)
    return [
        n
        for n in found
        if not any(".".join(n.split(".")[:i]) in found_set for i in range(1, n.count(".") + 1))
    ]


def default_layer(model: nn.Module) -> str:
    """``model.last_conv_name`` (paper B nets: the map before the class conv / final BN), else the
    last conv unit."""
    name = getattr(model, "last_conv_name", None)
    if isinstance(name, str) and name:
        return name
    units = conv_units(model)
    if not units:
        raise RobustError(
            f"{type(model).__name__} has no conv layer for Grad-CAM: pass --layer NAME"
        )
    return units[-1]


def resolve_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``layer`` (a dotted name from ``model.named_modules()``), or the
    default layer. An unknown name raises a one-line ``RobustError`` listing valid names."""
    name = default_layer(model) if layer is None else layer
    modules = dict(model.named_modules())
    if name in modules and name:
        return name, modules[name]
    units = conv_units(model)
    examples = difflib.get_close_matches(name, units, n=3, cutoff=0.5) or units[-3:]
    raise RobustError(
        f"unknown layer {name!r} for {type(model).__name__}: conv layers include "
        f"{', '.join(examples)}; `robust explain CHECKPOINT --list-layers` lists all {len(units)}"
    )


@contextlib.contextmanager
def _capture(
    modules: Mapping[str, nn.Module],
) -> Iterator[tuple[dict[str, list[Any]], list[str]]]:
    """Forward hooks that record each module's outputs and the order in which they fire."""
    outputs: dict[str, list[Any]] = {name: [] for name in modules}
    order: list[str] = []
    handles = []
    for name, module in modules.items():

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            outputs[name].append(out)
            order.append(name)

        handles.append(module.register_forward_hook(hook))
    try:
        yield outputs, order
    finally:
        for h in handles:
            h.remove()


def describe_layers(model: nn.Module, input_shape: Sequence[int]) -> pd.DataFrame:
    """The conv units in forward order with their output shapes (one forward of a zero image);
    ``default`` marks the layer Grad-CAM uses without ``--layer``."""
    modules = dict(model.named_modules())
    units = conv_units(model)
    default = default_layer(model)
    if default not in units:
        units.append(default)
    param = next(model.parameters(), None)
    x = torch.zeros(
        1, *[int(v) for v in input_shape], device=param.device if param is not None else None
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _capture({n: modules[n] for n in units}) as (outputs, order):
            model(x)
    finally:
        model.train(was_training)
    rows = []
    for i, name in enumerate(dict.fromkeys(order), start=1):
        out = outputs[name][0]
        shape = "x".join(map(str, out.shape[1:])) if isinstance(out, torch.Tensor) else "-"
        rows.append(
            {
                "order": i,
                "layer": name,
                "type": type(modules[name]).__name__,
                "output": shape,
                "default": "yes" if name == default else "",
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # BatchNorm must use running statistics: in train mode one image's map would depend on the
    # rest of the batch.
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _targets(target: Target, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    n, k = logits.shape
    if target is None or (isinstance(target, str) and target in ("pred", "predicted")):
        return logits.argmax(1)
    if isinstance(target, str) and target == "label":
        if labels is None:
            raise RobustError("target 'label' needs the images' labels")
        t = labels.to(logits.device)
    elif isinstance(target, torch.Tensor):
        t = target.to(device=logits.device, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
    elif isinstance(target, int):
        t = torch.full((n,), int(target), dtype=torch.long, device=logits.device)
    else:
        raise RobustError(f"unknown target {target!r}: use pred, label or a class index")
    if t.numel() != n:
        raise RobustError(f"{t.numel()} targets for {n} images")
    if bool(((t < 0) | (t >= k)).any()):
        raise RobustError(f"target class out of range: the model has {k} classes (0..{k - 1})")
    return t


def _feature_map(name: str, outputs: list[Any]) -> torch.Tensor:
    if len(outputs) != 1:
        raise RobustError(
            f"layer {name!r} runs {len(outputs)} times per forward pass: "
            "pick a layer that runs once"
        )
    out = outputs[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RobustError(
            f"layer {name!r} outputs {shape}, not an N x C x H x W feature map: pick a conv layer"
        )
    return out


def normalize_heatmaps(
    raw: torch.Tensor, size: Sequence[int], normalize: Normalization = "max"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(heatmaps in [0, 1] at size, empty)`` from unrectified maps ``raw`` (``N x h x w``).

    ``"max"`` (Selvaraju et al.): ReLU, bilinear upsampling (align_corners=False), divide by the
    per-image maximum. ``"centered"`` (the authors' ``run_gradcam.py``): subtract the map's
    spatial mean, upsample, ReLU, divide by the maximum, so only above-average evidence remains.
    A map whose maximum is 0 (no positive evidence) is returned as zeros with ``empty`` True.
    """
    if normalize not in NORMALIZATIONS:
        raise RobustError(f"unknown normalisation {normalize!r}: use {' or '.join(NORMALIZATIONS)}")
    raw = raw.float()
    size = (int(size[0]), int(size[1]))

    def up(m: torch.Tensor) -> torch.Tensor:
        if tuple(m.shape[-2:]) == size:
            return m
        return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    if normalize == "max":
        cam = up(F.relu(raw))
    else:
        cam = F.relu(up(raw - raw.mean(dim=(1, 2), keepdim=True)))
    peak = cam.amax(dim=(1, 2))
    # "zero" relative to the map's own scale: float round-off of an exactly flat map is not signal
    scale = raw.abs().amax(dim=(1, 2))
    empty = peak <= 1e-6 * scale
    heat = cam / torch.where(empty, torch.ones_like(peak), peak)[:, None, None]
    heat = torch.where(empty[:, None, None], torch.zeros_like(heat), heat)
    return heat.clamp_(0.0, 1.0), empty


@dataclass
class GradCAMResult:
    """Grad-CAM of a batch at one layer (all tensors on the CPU).

    ``heatmaps``: ``N x H x W`` in [0, 1] at the input size. ``raw``: ``sum_k alpha_k A_k`` at
    the layer's resolution, before ReLU and normalisation. ``empty``: maps without positive
    evidence (all zero). ``targets``: the class explained per image; ``predictions``: argmax.
    """

    layer: str
    heatmaps: torch.Tensor
    raw: torch.Tensor
    empty: torch.Tensor
    logits: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor

    @property
    def feature_size(self) -> tuple[int, int]:
        return int(self.raw.shape[-2]), int(self.raw.shape[-1])


def _forward_cams(
    model: nn.Module,
    x: torch.Tensor,
    modules: Mapping[str, nn.Module],
    target: Target,
    labels: torch.Tensor | None,
    strict: bool,
) -> tuple[list[str], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One forward + one backward: raw maps of ``modules`` (in firing order), logits, targets."""
    # A leaf that requires grad makes every activation part of the graph even if the model's
    # parameters are frozen; autograd.grad below only differentiates up to the activations.
    x = x.detach().clone().requires_grad_(True)
    with _capture(modules) as (outputs, order):
        logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise RobustError("Grad-CAM needs a model that returns N x classes scores")
    names: list[str] = []
    acts: list[torch.Tensor] = []
    for name in dict.fromkeys(order):  # first firing order, unique
        if strict:
            acts.append(_feature_map(name, outputs[name]))
            names.append(name)
            continue
        outs = outputs[name]
        if len(outs) == 1 and isinstance(outs[0], torch.Tensor) and outs[0].dim() == 4:
            acts.append(outs[0])
            names.append(name)
    missing = [n for n in modules if not outputs[n]]
    if strict and missing:
        raise RobustError(
            f"layer {missing[0]!r} did not run in the forward pass: pick another layer"
        )
    t = _targets(target, logits.detach(), labels)
    score = logits.gather(1, t[:, None]).sum()
    grads = torch.autograd.grad(score, acts, allow_unused=True)
    raws = []
    for act, grad in zip(acts, grads, strict=True):
        if grad is None:  # the score does not depend on this map
            grad = torch.zeros_like(act)
        alpha = grad.float().mean(dim=(2, 3), keepdim=True)
        raws.append((alpha * act.detach().float()).sum(1))
    return names, raws, logits.detach(), t


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layer: str | None = None,
    target: Target = None,
    labels: torch.Tensor | None = None,
    normalize: Normalization = "max",
    batch_size: int = 256,
) -> GradCAMResult:
    """Grad-CAM heatmaps of ``x`` (normalised model input, ``N x C x H x W``) at ``layer``.

    Args:
        model: a classifier returning ``N x classes`` scores (put in eval mode for the call).
        x: a batch on the model's device.
        layer: dotted module name (``dict(model.named_modules())``); default ``default_layer``.
        target: ``None`` / ``"pred"``: the predicted class; ``"label"``: ``labels``; an int: that
            class for every image; a tensor: one class per image.
        normalize: ``"max"`` (Selvaraju et al.) or ``"centered"`` (authors' code); see
            ``normalize_heatmaps``.
        batch_size: images per forward/backward pass (results do not depend on it).
    """
    name, module = resolve_layer(model, layer)
    if x.dim() != 4:
        raise DataError(f"Grad-CAM needs N x C x H x W input, got shape {tuple(x.shape)}")
    size = x.shape[-2:]
    parts: list[tuple[torch.Tensor, ...]] = []
    with _eval_mode(model):
        for start in range(0, x.shape[0], max(1, int(batch_size))):
            sl = slice(start, start + max(1, int(batch_size)))
            t = target[sl] if isinstance(target, torch.Tensor) and target.numel() > 1 else target
            lab = None if labels is None else labels[sl]
            _, raws, logits, tgt = _forward_cams(model, x[sl], {name: module}, t, lab, strict=True)
            heat, empty = normalize_heatmaps(raws[0], size, normalize)
            parts.append((heat.cpu(), raws[0].cpu(), empty.cpu(), logits.float().cpu(), tgt.cpu()))
    heat, raw, empty, logits, tgt = (torch.cat(p) for p in zip(*parts, strict=True))
    return GradCAMResult(name, heat, raw, empty, logits, logits.argmax(1), tgt)


@dataclass
class LayerHeatmap:
    """Grad-CAM at one layer of a per-layer sweep (``heatmaps``: ``N x H x W`` in [0, 1])."""

    layer: str
    feature_size: tuple[int, int]
    heatmaps: torch.Tensor
    empty: torch.Tensor


def layer_heatmaps(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layers: Sequence[str] | None = None,
    target: Target = None,
    labels: torch.Tensor | None = None,
    normalize: Normalization = "max",
) -> list[LayerHeatmap]:
    """Grad-CAM of the same class at several layers, in forward order (paper B, Fig. 7).

    ``layers`` default to every conv unit (``conv_units``); units that do not output a single
    ``N x C x H x W`` map (run twice, return tuples) are skipped. One forward and one backward
    pass for all layers; ``x`` is usually one image (``1 x C x H x W``).
    """
    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else conv_units(model)
    for n in names:
        resolve_layer(model, n)
    with _eval_mode(model):
        fired, raws, _, _ = _forward_cams(
            model, x, {n: modules[n] for n in names}, target, labels, strict=layers is not None
        )
    out = []
    for name, raw in zip(fired, raws, strict=True):
        heat, empty = normalize_heatmaps(raw, x.shape[-2:], normalize)
        size = (int(raw.shape[-2]), int(raw.shape[-1]))
        out.append(LayerHeatmap(name, size, heat.cpu(), empty.cpu()))
    return out
