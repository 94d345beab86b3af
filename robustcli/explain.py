"""Grad-CAM heatmaps and paper B's weakly supervised localization (Exp. 3, Figs. 7-9).

Grad-CAM (Selvaraju et al. 2017) for a class ``c`` at a layer with activation ``A`` (``N x K x h
x w``): channel weights ``alpha_k = mean_{ij} d y_c / d A_k[i, j]``, map ``L = ReLU(sum_k alpha_k
A_k)``, upsampled bilinearly to the input size and divided by its maximum per image, so every
heatmap lies in [0, 1]. A map with no positive evidence (``L`` zero everywhere) stays all zero
and is flagged ``empty``; it is never rescaled to look like a real map.

- ``grad_cam(model, x, layer=..., target=...)``: batched heatmaps at one layer (default: the
  model's ``last_conv_name``, paper B's choice, else its last conv unit).
- ``layer_heatmaps(model, x)``: Grad-CAM at every conv unit in forward order (paper B, Fig. 7),
  from one forward and one backward pass.
- ``localization_scores(heatmaps, images)``: paper B's Fig. 9 metric (precision and recall of the
  heatmap thresholded at ``t = 0.2`` against the thresholded object); see ``docs/explain.md``.
- ``run_explain(...)``: what ``robust explain`` does: load checkpoints and data, write overlay
  figures (Fig. 8 layout), the per-layer grid (Fig. 7), heatmaps, localization and one JSON.

Models take normalised input (the project contract); heatmaps are at the model's input size.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import io
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.data import InputAdapter
from robustcli.errors import CheckpointError, DataError, OutputExistsError, RobustError
from robustcli.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_writable,
    file_sha256,
    locked_output,
    strict_json,
)

SCHEMA = "robustcli-result"
SCHEMA_VERSION = 1
KIND = "explain"

#: Paper B's threshold on the [0, 1] heatmap (Exp. 3b).
HEATMAP_THRESHOLD = 0.2
#: Threshold on the [0, 1] image that segments the object. Paper B names a single threshold
#: ("t = 0.2") for the heatmaps and "the thresholded objects"; its public code does not contain
#: the localization step, so the same value is used for the object by default.
OBJECT_THRESHOLD = 0.2
NORMALIZATIONS = ("max", "centered")
Normalization = Literal["max", "centered"]
Target = int | str | torch.Tensor | None

ROLES = ("model", "vs")
OUTPUT_FILES = {
    "json": "explain.json",
    "overlays": "overlays.png",
    "layers": "layers.png",
    "heatmaps": "heatmaps.npz",
    "localization_csv": "localization.csv",
    "localization_png": "localization.png",
}


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


# --------------------------------------------------------------------------------------------
# Weakly supervised localization (paper B, Exp. 3b, Fig. 9)
# --------------------------------------------------------------------------------------------


def localization_masks(
    heatmaps: torch.Tensor | np.ndarray,
    images: torch.Tensor | np.ndarray,
    *,
    threshold: float = HEATMAP_THRESHOLD,
    object_threshold: float = OBJECT_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """``(H, O)`` boolean masks, ``N x H x W``: ``H = heatmap > threshold``, ``O = object``.

    ``heatmaps`` are in [0, 1]; ``images`` are ``N x C x H x W`` (or ``N x H x W``), uint8
    (scaled by 1/255) or float in [0, 1]; the object is ``mean over channels > object_threshold``
    (bright object on a dark background, as in MNIST / Fashion-MNIST).
    """
    heat = np.asarray(heatmaps.detach().cpu() if isinstance(heatmaps, torch.Tensor) else heatmaps)
    img = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    img = img.double() / 255.0 if img.dtype == torch.uint8 else img
    if img.dim() == 4:
        img = img.mean(1)
    obj = img.numpy()
    if heat.shape != obj.shape:
        raise DataError(f"heatmaps {heat.shape} and images {obj.shape} differ in shape")
    # compare in the data's own precision: a float32 pixel of exactly 0.2 is not above t = 0.2
    t_heat = heat.dtype.type(threshold) if heat.dtype.kind == "f" else threshold
    t_obj = obj.dtype.type(object_threshold) if obj.dtype.kind == "f" else object_threshold
    return heat > t_heat, obj > t_obj


def localization_counts(
    heatmaps: torch.Tensor | np.ndarray,
    images: torch.Tensor | np.ndarray,
    *,
    threshold: float = HEATMAP_THRESHOLD,
    object_threshold: float = OBJECT_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image ``(|H n O|, |H|, |O|)`` pixel counts (int64 arrays)."""
    h, o = localization_masks(
        heatmaps, images, threshold=threshold, object_threshold=object_threshold
    )
    axes = tuple(range(1, h.ndim))
    return (h & o).sum(axes), h.sum(axes), o.sum(axes)


@dataclass
class LocalizationScores:
    """Paper B's Fig. 9 numbers for one model over the evaluated images.

    ``precision`` / ``recall``: per image (``|H n O| / |H|``, ``|H n O| / |O|``); an empty
    heatmap scores precision 0 and recall 0; images without object pixels are excluded.
    ``pooled_*``: the same ratios of pixel counts summed over the images.
    """

    precision: np.ndarray
    recall: np.ndarray
    hits: np.ndarray
    heat_pixels: np.ndarray
    object_pixels: np.ndarray
    n_candidates: int
    n_empty_heatmap: int
    n_empty_object: int

    @property
    def n_images(self) -> int:
        return int(self.precision.size)

    def summary(self) -> dict[str, Any]:
        def stat(a: np.ndarray, f: Any) -> float:
            return float(f(a)) if a.size else math.nan

        th, to = int(self.heat_pixels.sum()), int(self.object_pixels.sum())
        tp = int(self.hits.sum())
        return {
            "images": self.n_images,
            "precision": stat(self.precision, np.mean),
            "precision_std": stat(self.precision, np.std),
            "recall": stat(self.recall, np.mean),
            "recall_std": stat(self.recall, np.std),
            "pooled_precision": tp / th if th else math.nan,
            "pooled_recall": tp / to if to else math.nan,
            "empty_heatmaps": self.n_empty_heatmap,
            "excluded_empty_object": self.n_empty_object,
        }


def scores_from_counts(
    hits: np.ndarray,
    heat_pixels: np.ndarray,
    object_pixels: np.ndarray,
    keep: np.ndarray | torch.Tensor | None = None,
) -> LocalizationScores:
    """``LocalizationScores`` over the images in ``keep`` (bool mask; default all)."""
    hits, hp, op = (np.asarray(a, dtype=np.int64) for a in (hits, heat_pixels, object_pixels))
    sel = np.ones(hits.shape, bool) if keep is None else np.asarray(keep, dtype=bool).copy()
    n_candidates = int(sel.sum())
    no_object = sel & (op == 0)
    sel &= op > 0
    hits, hp, op = hits[sel], hp[sel], op[sel]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(hp > 0, hits / np.maximum(hp, 1), 0.0)
        recall = hits / op
    return LocalizationScores(
        precision.astype(np.float64),
        recall.astype(np.float64),
        hits,
        hp,
        op,
        n_candidates,
        int((hp == 0).sum()),
        int(no_object.sum()),
    )


def localization_scores(
    heatmaps: torch.Tensor | np.ndarray,
    images: torch.Tensor | np.ndarray,
    *,
    keep: np.ndarray | torch.Tensor | None = None,
    threshold: float = HEATMAP_THRESHOLD,
    object_threshold: float = OBJECT_THRESHOLD,
) -> LocalizationScores:
    """Precision / recall of heatmaps thresholded at ``threshold`` against thresholded objects,
    per image, over the images in ``keep`` (paper B: those both models classify correctly)."""
    hits, hp, op = localization_counts(
        heatmaps, images, threshold=threshold, object_threshold=object_threshold
    )
    return scores_from_counts(hits, hp, op, keep)


# --------------------------------------------------------------------------------------------
# Figures (matplotlib, no pyplot state: safe under any backend)
# --------------------------------------------------------------------------------------------


def _show_image(ax: Any, img: torch.Tensor) -> None:
    img = img.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(ax: Any, img: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> None:
    _show_image(ax, img)
    ax.imshow(heat.numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear")


@dataclass
class HeatmapRow:
    """One model's row of an overlay figure: its input images (``N x C x H x W`` in [0, 1]),
    heatmaps (``N x H x W``) and a caption per image."""

    label: str
    images: torch.Tensor
    heatmaps: torch.Tensor
    captions: Sequence[str] = ()


def plot_overlays(
    images: torch.Tensor,
    rows: Sequence[HeatmapRow],
    *,
    image_captions: Sequence[str] = (),
    title: str | None = None,
) -> Any:
    """Paper B's Fig. 8 layout: input images on top, one row of Grad-CAM overlays per model."""
    from matplotlib.figure import Figure

    n = images.shape[0]
    fig = Figure(figsize=(1.6 * n + 1.2, 1.75 * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, n, squeeze=False)
    for j in range(n):
        _show_image(axes[0, j], images[j])
        if j < len(image_captions):
            axes[0, j].set_title(image_captions[j], fontsize=7)
        for i, row in enumerate(rows, start=1):
            _overlay(axes[i, j], row.images[j], row.heatmaps[j])
            if j < len(row.captions):
                axes[i, j].set_title(row.captions[j], fontsize=7)
    axes[0, 0].set_ylabel("input", fontsize=8)
    for i, row in enumerate(rows, start=1):
        axes[i, 0].set_ylabel(row.label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_layer_grid(
    rows: Sequence[tuple[str, torch.Tensor, Sequence[LayerHeatmap]]], *, title: str | None = None
) -> Any:
    """Paper B's Fig. 7 layout: per model (row) its input, then Grad-CAM at each layer in forward
    order. ``rows``: ``(label, image C x H x W in [0, 1], layer heatmaps of that image)``."""
    from matplotlib.figure import Figure

    cols = 1 + max(len(r[2]) for r in rows)
    fig = Figure(figsize=(1.45 * cols, 1.8 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for i, (label, image, maps) in enumerate(rows):
        _show_image(axes[i, 0], image)
        axes[i, 0].set_title("input", fontsize=6)
        axes[i, 0].set_ylabel(label, fontsize=7)
        for j in range(1, cols):
            ax = axes[i, j]
            if j - 1 >= len(maps):
                ax.axis("off")
                continue
            m = maps[j - 1]
            _overlay(ax, image, m.heatmaps[0])
            h, w = m.feature_size
            note = " (empty)" if bool(m.empty[0]) else ""
            ax.set_title(f"{j}. {m.layer}\n{h}x{w}{note}", fontsize=5)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_localization(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]], *, title: str | None = None
) -> Any:
    """Heatmap mask ``H`` (red) over object mask ``O`` (green): yellow = both (true positives).
    ``rows``: ``(label, H, O)`` with ``N x H x W`` boolean masks."""
    from matplotlib.figure import Figure

    n = max(r[1].shape[0] for r in rows)
    fig = Figure(figsize=(1.4 * n + 1.0, 1.6 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for i, (label, h, o) in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= h.shape[0]:
                ax.axis("off")
                continue
            rgb = np.zeros((*h.shape[1:], 3), dtype=np.float32)
            rgb[..., 0], rgb[..., 1] = h[j], o[j]
            ax.imshow(rgb, interpolation="nearest")
        axes[i, 0].set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


# --------------------------------------------------------------------------------------------
# Models and data for the command
# --------------------------------------------------------------------------------------------


@dataclass
class ExplainModel:
    """A model ready for Grad-CAM with what is needed to feed it."""

    model: nn.Module
    name: str
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    dataset: str | None = None
    untrained: bool = False
    sha256: str | None = None
    adapter: InputAdapter | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    integrity: str | None = None  # Checkpoint.integrity; None for untrained models

    @property
    def label(self) -> str:
        return f"{self.name} (untrained)" if self.untrained else self.name

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "untrained": self.untrained,
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "arrangement": getattr(self.model, "arrangement", None),
            "input_adapter": self.adapter.to_dict() if self.adapter is not None else None,
            "verified": self.integrity == "verified",
            "integrity": self.integrity,
        }


def _checkpoint_model(path: Path) -> ExplainModel:
    from robustcli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    shape = tuple(int(v) for v in ckpt.input.target_shape)
    if min(shape[1:]) <= 0:  # older checkpoints without a recorded input size
        from robustcli.registry import get_model_spec

        try:
            shape = (shape[0], *get_model_spec(ckpt.name).input_shape[1:])
        except RobustError:
            raise CheckpointError(
                f"{path} records no input size and {ckpt.name!r} is not in the zoo: "
                "re-save it with `robust train`"
            ) from None
    source = Path(ckpt.path) if ckpt.path is not None else path
    return ExplainModel(
        model=ckpt.model.eval(),
        name=ckpt.name,
        source=str(source),
        mean=tuple(ckpt.mean),
        std=tuple(ckpt.std),
        input_shape=shape,  # type: ignore[arg-type]
        dataset=ckpt.dataset or None,
        sha256=file_sha256(source),
        adapter=ckpt.input if min(ckpt.input.target_shape[1:]) > 0 else None,
        meta=dict(ckpt.meta),
        integrity=ckpt.integrity,
    )


def load_explain_model(
    reference: str | os.PathLike[str], *, untrained: bool = False
) -> ExplainModel:
    """A checkpoint file (``robust train`` output); with ``untrained=True`` a registered model
    name is also accepted and built with random weights (for trying the command: its heatmaps
    mean nothing)."""
    from robustcli.registry import create_model, get_dataset_spec, get_model_spec, list_models

    ref = str(reference)
    path = Path(ref).expanduser()
    if path.is_file() or (path / "model.safetensors").is_file():  # a file or a run folder
        return _checkpoint_model(path)
    if untrained:
        spec = get_model_spec(ref)
        ds = get_dataset_spec(spec.dataset)
        model = create_model(ref).eval()
        return ExplainModel(
            model, ref, "untrained", ds.mean, ds.std, spec.input_shape, spec.dataset, True
        )
    if ref in list_models(ref):
        raise RobustError(
            f"{ref} is a model name, not a checkpoint: pass a checkpoint from `robust train`, "
            f"or add --untrained to explain an untrained {ref} (random weights)"
        )
    if path.is_dir():  # exists, so "does not exist" would mislead
        raise CheckpointError(
            f"{ref} is a folder without model.safetensors, not a run folder: pass a run folder "
            "or checkpoint from `robust train`"
        )
    raise CheckpointError(f"checkpoint {ref} does not exist: pass a file from `robust train`")


def model_inputs(em: ExplainModel, images: torch.Tensor) -> torch.Tensor:
    """Dataset images (uint8 ``N x C x H x W``) as ``em``'s input in [0, 1], adapted as in
    training (the checkpoint's recorded adapter when it fits these images), not normalised."""
    from robustcli.data import adapt_images, input_adapter

    adapter = em.adapter
    if adapter is None or tuple(adapter.source_shape) != tuple(images.shape[1:]):
        adapter = input_adapter(images.shape[1:], em.input_shape)
    x = adapt_images(images, adapter)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _normalise(x01: torch.Tensor, em: ExplainModel) -> torch.Tensor:
    from robustcli.data import normalize

    return normalize(x01, em.mean, em.std)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


@dataclass
class ExplainReport:
    """What ``run_explain`` produced: the JSON document, the localization table, the files."""

    document: dict[str, Any]
    localization: pd.DataFrame | None
    files: dict[str, Path]
    warnings: list[str] = field(default_factory=list)


def check_out_dir(out: str | os.PathLike[str], force: bool) -> Path:
    """Refuse an existing non-empty output folder unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} is not empty: choose another --out or pass --force")
    check_writable(out)  # a read-only folder fails now, not after the heatmaps
    return out


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Versions, host and command line for the result document."""
    from robustcli.runtime import environment

    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(argv) if argv is not None else list(sys.argv),
        **environment(),
    }


def _class_names(dataset: str, data_dir: str | os.PathLike[str] | None, k: int) -> list[str]:
    with contextlib.suppress(Exception):
        from robustcli.data import dataset_info

        names = list(dataset_info(dataset, data_dir).classes)
        if len(names) >= k:
            return names
    return [str(i) for i in range(k)]


def _parse_target(target: str | int | None) -> Target:
    if target is None or isinstance(target, int):
        return target
    t = str(target).strip().lower()
    if t in ("pred", "predicted", "label"):
        return "label" if t == "label" else None
    try:
        return int(t)
    except ValueError:
        raise RobustError(
            f"unknown --target {target!r}: use pred, label or a class index"
        ) from None


def _select(n: int, images: int, indices: Sequence[int] | None, what: str) -> list[int]:
    if indices:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise RobustError(f"--indices {bad[0]} is out of range: {what} has {n} images")
        return idx
    if images < 1:
        raise RobustError("--images must be at least 1")
    return list(range(min(images, n)))


def _overlay_rows(
    models: Sequence[ExplainModel],
    inputs01: Sequence[torch.Tensor],
    results: Sequence[GradCAMResult],
    cname: Any,
) -> list[HeatmapRow]:
    rows = []
    for em, x01, res in zip(models, inputs01, results, strict=True):
        h, w = res.feature_size
        captions = []
        for p, t, e in zip(res.predictions, res.targets, res.empty, strict=True):
            text = f"pred {cname(int(p))}"
            if int(t) != int(p):
                text += f" / cam {cname(int(t))}"
            captions.append(text + (" (empty)" if bool(e) else ""))
        rows.append(HeatmapRow(f"{em.label}\n{res.layer} ({h}x{w})", x01, res.heatmaps, captions))
    return rows


def _heatmap_arrays(
    idx: Sequence[int], labels: torch.Tensor, results: Sequence[GradCAMResult]
) -> bytes:
    arrays: dict[str, np.ndarray] = {"indices": np.asarray(idx), "labels": labels.numpy()}
    for role, res in zip(ROLES, results, strict=False):
        arrays[f"{role}_heatmaps"] = res.heatmaps.numpy().astype(np.float32)
        arrays[f"{role}_empty"] = res.empty.numpy()
        arrays[f"{role}_predictions"] = res.predictions.numpy()
        arrays[f"{role}_targets"] = res.targets.numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _image_records(
    idx: Sequence[int], labels: torch.Tensor, results: Sequence[GradCAMResult]
) -> list[dict[str, Any]]:
    records = []
    for k, i in enumerate(idx):
        rec: dict[str, Any] = {"index": int(i), "label": int(labels[k])}
        for role, res in zip(ROLES, results, strict=False):
            rec[role] = {
                "prediction": int(res.predictions[k]),
                "target": int(res.targets[k]),
                "empty": bool(res.empty[k]),
            }
        records.append(rec)
    return records


@locked_output("out")  # another process writing the same folder is refused
def run_explain(
    checkpoint: str | os.PathLike[str],
    *,
    vs: str | os.PathLike[str] | None = None,
    untrained: bool = False,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    images: int = 8,
    indices: Sequence[int] | None = None,
    layer: str | None = None,
    vs_layer: str | None = None,
    target: str | int | None = None,
    normalize: Normalization = "max",
    per_layer: bool = True,
    layers: Sequence[str] | None = None,
    localization: bool = False,
    limit: int | None = None,
    threshold: float = HEATMAP_THRESHOLD,
    object_threshold: float = OBJECT_THRESHOLD,
    out: str | os.PathLike[str] = "explain",
    force: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    argv: Sequence[str] | None = None,
) -> ExplainReport:
    """Everything ``robust explain`` does; see ``docs/explain.md``.

    ``checkpoint`` / ``vs``: checkpoint files or run folders; with ``untrained`` a registered
    model name is also accepted and built with random weights. ``dataset`` defaults to the first
    checkpoint's dataset, or ``digits`` (embedded, offline) for an untrained model. Writes into
    ``out`` (refused when not empty, unless ``force``): ``overlays.png`` (Fig. 8 layout),
    ``layers.png`` (Fig. 7, first selected image), ``heatmaps.npz``, ``explain.json`` and with
    ``localization`` also ``localization.csv`` and ``localization.png`` (Fig. 9).
    """
    from robustcli.data import load_dataset
    from robustcli.runtime import resolve_device

    out_dir = check_out_dir(out, force)
    if not (0.0 <= threshold < 1.0 and 0.0 <= object_threshold < 1.0):
        raise RobustError("thresholds must lie in [0, 1): heatmaps and images are scaled to [0, 1]")
    if normalize not in NORMALIZATIONS:
        raise RobustError(f"unknown --normalize {normalize!r}: use {' or '.join(NORMALIZATIONS)}")
    if batch_size < 1:
        raise RobustError("--batch-size must be positive")
    tgt = _parse_target(target)
    dev = resolve_device(device)

    models = [load_explain_model(ref, untrained=untrained) for ref in (checkpoint, vs) if ref]
    warnings = [
        f"{em.name} is UNTRAINED (random weights): its heatmaps mean nothing"
        for em in models
        if em.untrained
    ]
    chosen = [resolve_layer(models[0].model, layer)[0]]
    if len(models) > 1:
        chosen.append(resolve_layer(models[1].model, vs_layer or layer)[0])
    for em in models:
        em.model.to(dev)

    # a trained model is shown the data it learned; untrained ones the embedded real digits
    ds_name = dataset or (None if models[0].untrained else models[0].dataset) or "digits"
    data, labels = load_dataset(ds_name, split, data_dir)
    if data.shape[0] == 0:
        raise DataError(f"{ds_name} {split} has no images")
    idx = _select(data.shape[0], images, indices, f"{ds_name} {split}")
    sel = torch.tensor(idx, dtype=torch.long)
    sel_images, sel_labels = data[sel], labels[sel]

    # heatmaps of the selected images (Fig. 8)
    inputs01 = [model_inputs(em, sel_images) for em in models]
    results = [
        grad_cam(
            em.model,
            _normalise(x01, em).to(dev),
            layer=lay,
            target=tgt,
            labels=sel_labels,
            normalize=normalize,
            batch_size=batch_size,
        )
        for em, x01, lay in zip(models, inputs01, chosen, strict=True)
    ]
    names = _class_names(ds_name, data_dir, int(results[0].logits.shape[1]))

    def cname(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    files: dict[str, Path] = {}
    fig = plot_overlays(
        inputs01[0],
        _overlay_rows(models, inputs01, results, cname),
        image_captions=[f"#{i}: {cname(int(y))}" for i, y in zip(idx, sel_labels, strict=True)],
        title=f"Grad-CAM ({ds_name} {split}, {normalize} normalisation)",
    )
    files["overlays"] = save_figure(fig, out_dir / OUTPUT_FILES["overlays"])
    files["heatmaps"] = out_dir / OUTPUT_FILES["heatmaps"]
    atomic_write_bytes(files["heatmaps"], _heatmap_arrays(idx, sel_labels, results))

    # Grad-CAM through the network for the first selected image (Fig. 7)
    layer_records: dict[str, list[dict[str, Any]]] = {}
    if per_layer:
        grid = []
        for role, em, x01, res in zip(ROLES, models, inputs01, results, strict=False):
            maps = layer_heatmaps(
                em.model,
                _normalise(x01[:1], em).to(dev),
                layers=layers,
                target=res.targets[:1],
                normalize=normalize,
            )
            grid.append((em.label, x01[0], maps))
            layer_records[role] = [
                {"layer": m.layer, "feature_size": list(m.feature_size), "empty": bool(m.empty[0])}
                for m in maps
            ]
        title = f"Grad-CAM through the network, image #{idx[0]} ({cname(int(sel_labels[0]))})"
        files["layers"] = save_figure(
            plot_layer_grid(grid, title=title), out_dir / OUTPUT_FILES["layers"]
        )

    # weakly supervised localization (Fig. 9)
    loc_frame, loc_doc = None, None
    if localization:
        n = data.shape[0] if limit is None else max(0, min(int(limit), data.shape[0]))
        loc_frame, loc_doc, loc_fig = localization_report(
            models,
            chosen,
            data[:n],
            labels[:n],
            dev,
            normalize=normalize,
            threshold=threshold,
            object_threshold=object_threshold,
            batch_size=batch_size,
        )
        files["localization_csv"] = out_dir / OUTPUT_FILES["localization_csv"]
        atomic_write_bytes(files["localization_csv"], loc_frame.to_csv(index=False).encode())
        if loc_fig is not None:
            files["localization_png"] = save_figure(
                loc_fig, out_dir / OUTPUT_FILES["localization_png"]
            )

    files["json"] = out_dir / OUTPUT_FILES["json"]
    document = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "model": models[0].name,
        "models": [
            {"role": role, **em.record(), "layer": lay, "feature_size": list(res.feature_size)}
            for role, em, lay, res in zip(ROLES, models, chosen, results, strict=False)
        ],
        "provenance": {**provenance(argv), "device": str(dev)},
        "config": {
            "dataset": ds_name,
            "data_dir": str(data_dir) if data_dir is not None else None,
            "split": split,
            "indices": idx,
            "target": "pred" if tgt is None else tgt,
            "method": "grad-cam",
            "normalize": normalize,
            "upsampling": "bilinear, align_corners=False",
        },
        "images": _image_records(idx, sel_labels, results),
        "layers": layer_records,
        "localization": loc_doc,
        "warnings": warnings,
        "files": {k: v.name for k, v in files.items()},
    }
    atomic_write_json(files["json"], jsonable(document))
    return ExplainReport(document, loc_frame, files, warnings)


LOCALIZATION_DEFINITION = (
    "H = heatmap > threshold; O = channel-mean image in [0, 1] > object_threshold; per image "
    "precision = |H & O| / |H| (0 if H is empty) and recall = |H & O| / |O|, averaged over the "
    "images every model classifies correctly that have object pixels; pooled_* = the same "
    "ratios of pixel counts summed over those images"
)


def localization_report(
    models: Sequence[ExplainModel],
    layers: Sequence[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str = "cpu",
    *,
    normalize: Normalization = "max",
    threshold: float = HEATMAP_THRESHOLD,
    object_threshold: float = OBJECT_THRESHOLD,
    batch_size: int = 256,
    examples: int = 8,
) -> tuple[pd.DataFrame, dict[str, Any], Any]:
    """Paper B's Fig. 9 for one or more models over dataset ``images`` (uint8) and ``labels``.

    Grad-CAM of the predicted class at each model's layer; precision / recall per image over the
    images *every* model classifies correctly (``localization_scores``). Returns the table (one
    row per model), its JSON record and a figure of masks for the first ``examples`` kept images
    (None when no image is kept).
    """
    data, dev = images, torch.device(device)
    if data.shape[0] == 0:
        raise RobustError("no images to localize: check --limit")
    counts = []
    correct = torch.ones(data.shape[0], dtype=torch.bool)
    for em, lay in zip(models, layers, strict=True):
        tp, hp, op, preds = [], [], [], []
        for start in range(0, data.shape[0], batch_size):
            x01 = model_inputs(em, data[start : start + batch_size])
            res = grad_cam(
                em.model,
                _normalise(x01, em).to(dev),
                layer=lay,
                normalize=normalize,
                batch_size=batch_size,
            )
            hits, heat_px, obj_px = localization_counts(
                res.heatmaps, x01, threshold=threshold, object_threshold=object_threshold
            )
            tp.append(hits)
            hp.append(heat_px)
            op.append(obj_px)
            preds.append(res.predictions)
        correct &= torch.cat(preds) == labels.cpu()
        counts.append((np.concatenate(tp), np.concatenate(hp), np.concatenate(op)))
    keep = correct.numpy()
    rows, per_model = [], []
    for em, lay, (tp, hp, op) in zip(models, layers, counts, strict=True):
        scores = scores_from_counts(tp, hp, op, keep)
        s = scores.summary()
        rows.append({"model": em.label, "layer": lay, **s})
        per_model.append({"model": em.name, "layer": lay, **s})
    frame = pd.DataFrame(rows)
    doc = {
        "definition": LOCALIZATION_DEFINITION,
        "threshold": threshold,
        "object_threshold": object_threshold,
        "images_evaluated": int(data.shape[0]),
        "images_correct_by_all": int(keep.sum()),
        "target": "predicted (= label on the kept images)",
        "results": per_model,
    }
    fig = None
    kept = np.flatnonzero(keep)[:examples]
    if kept.size:
        sub = torch.as_tensor(kept, dtype=torch.long)
        mask_rows = []
        for em, lay in zip(models, layers, strict=True):
            x01 = model_inputs(em, data[sub])
            res = grad_cam(em.model, _normalise(x01, em).to(dev), layer=lay, normalize=normalize)
            h, o = localization_masks(
                res.heatmaps, x01, threshold=threshold, object_threshold=object_threshold
            )
            mask_rows.append((em.label, h, o))
        fig = plot_localization(
            mask_rows, title=f"H (red) vs object (green), yellow = overlap, t = {threshold}"
        )
    return frame, doc, fig


jsonable = strict_json  # the public name this module has always had


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an ``explain.json`` document (checks schema and kind)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("schema") != SCHEMA or doc.get("kind") != KIND:
        raise RobustError(f"{path} is not a robust explain result")
    return doc
