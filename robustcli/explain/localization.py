"""Paper B's weakly supervised localization (Exp. 3b, Fig. 9).

The heatmap mask ``H = heatmap > threshold`` against the object mask ``O = image >
object_threshold``: masks (``localization_masks``), pixel counts (``localization_counts``),
precision / recall per image (``scores_from_counts``, ``localization_scores``), and the table,
record and mask figure for loaded models (``localization_report``). The definition is
``LOCALIZATION_DEFINITION``; see also ``docs/explain.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from robustcli.errors import DataError, RobustError
from robustcli.explain.figures import plot_localization
from robustcli.explain.gradcam import Normalization, grad_cam
from robustcli.explain.model import model_inputs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from robustcli.explain.model import ExplainModel

#: Paper B's threshold on the [0, 1] heatmap (Exp. 3b).
HEATMAP_THRESHOLD = 0.2
#: Threshold on the [0, 1] image that segments the object. Paper B names a single threshold
#: ("t = 0.2") for the heatmaps and "the thresholded objects"; its public code does not contain
#: the localization step, so the same value is used for the object by default.
OBJECT_THRESHOLD = 0.2

LOCALIZATION_DEFINITION = (
    "H = heatmap > threshold; O = channel-mean image in [0, 1] > object_threshold; per image "
    "precision = |H & O| / |H| (0 if H is empty) and recall = |H & O| / |O|, averaged over the "
    "images every model classifies correctly that have object pixels; pooled_* = the same "
    "ratios of pixel counts summed over those images"
)


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


def _model_counts(
    em: ExplainModel,
    layer: str,
    images: torch.Tensor,
    device: torch.device,
    *,
    normalize: Normalization,
    threshold: float,
    object_threshold: float,
    batch_size: int,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], torch.Tensor]:
    """``((|H n O|, |H|, |O|) per image, predictions)`` of one model over ``images`` (uint8),
    explaining the predicted class, ``batch_size`` images at a time."""
    tp, hp, op, preds = [], [], [], []
    for start in range(0, images.shape[0], batch_size):
        x01 = model_inputs(em, images[start : start + batch_size])
        res = grad_cam(
            em.model,
            em.normalise(x01).to(device),
            layer=layer,
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
    return (np.concatenate(tp), np.concatenate(hp), np.concatenate(op)), torch.cat(preds)


def _mask_figure(
    models: Sequence[ExplainModel],
    layers: Sequence[str],
    images: torch.Tensor,
    device: torch.device,
    *,
    normalize: Normalization,
    threshold: float,
    object_threshold: float,
) -> Figure:
    """``H`` over ``O`` for ``images`` (uint8), one row per model (``plot_localization``)."""
    mask_rows = []
    for em, lay in zip(models, layers, strict=True):
        x01 = model_inputs(em, images)
        res = grad_cam(em.model, em.normalise(x01).to(device), layer=lay, normalize=normalize)
        h, o = localization_masks(
            res.heatmaps, x01, threshold=threshold, object_threshold=object_threshold
        )
        mask_rows.append((em.label, h, o))
    return plot_localization(
        mask_rows, title=f"H (red) vs object (green), yellow = overlap, t = {threshold}"
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
) -> tuple[pd.DataFrame, dict[str, Any], Figure | None]:
    """Paper B's Fig. 9 for one or more models over dataset ``images`` (uint8) and ``labels``.

    Grad-CAM of the predicted class at each model's layer; precision / recall per image over the
    images *every* model classifies correctly (``localization_scores``). Returns the table (one
    row per model), its JSON record and a figure of masks for the first ``examples`` kept images
    (None when no image is kept).
    """
    data, dev = images, torch.device(device)
    if data.shape[0] == 0:
        raise RobustError("no images to localize: check --limit")
    thresholds = {"threshold": threshold, "object_threshold": object_threshold}
    counts = []
    correct = torch.ones(data.shape[0], dtype=torch.bool)
    for em, lay in zip(models, layers, strict=True):
        model_counts, preds = _model_counts(
            em, lay, data, dev, normalize=normalize, batch_size=batch_size, **thresholds
        )
        correct &= preds == labels.cpu()
        counts.append(model_counts)
    keep = correct.numpy()
    rows, per_model = [], []
    for em, lay, (tp, hp, op) in zip(models, layers, counts, strict=True):
        s = scores_from_counts(tp, hp, op, keep).summary()
        rows.append({"model": em.label, "layer": lay, **s})
        per_model.append({"model": em.name, "layer": lay, **s})
    doc = {
        "definition": LOCALIZATION_DEFINITION,
        **thresholds,
        "images_evaluated": int(data.shape[0]),
        "images_correct_by_all": int(keep.sum()),
        "target": "predicted (= label on the kept images)",
        "results": per_model,
    }
    kept = np.flatnonzero(keep)[:examples]
    fig = None
    if kept.size:
        sub = torch.as_tensor(kept, dtype=torch.long)
        fig = _mask_figure(models, layers, data[sub], dev, normalize=normalize, **thresholds)
    return pd.DataFrame(rows), doc, fig
