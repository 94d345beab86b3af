"""Explain figures: Grad-CAM overlays (paper B, Fig. 8), the per-layer grid (Fig. 7) and the
localization masks (Fig. 9).

Built as matplotlib ``Figure`` objects without pyplot state, so they are safe under any backend
and in notebooks; ``save_figure`` writes them through the project's one figure saver
(``robustcli.plots.save_figure``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robustcli import plots

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from robustcli.explain.gradcam import LayerHeatmap


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
) -> Figure:
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
) -> Figure:
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
) -> Figure:
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


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (PNG unless its suffix names another format) atomically and
    close it. Overwrites: ``run_explain`` has already checked the output folder."""
    return plots.save_figure(fig, path, dpi=dpi, force=True)[0]
