"""``run_explain``: what ``robust explain`` does, and its result document (``explain.json``).

Loads the models (``model.py``) and the images, computes Grad-CAM (``gradcam.py``), writes the
figures (``figures.py``), ``heatmaps.npz``, optionally the localization table
(``localization.py``) and one JSON document (schema ``robustcli-result``, kind ``explain``) into
an output folder that must be empty (or ``force``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustcli.errors import DataError, OutputExistsError, RobustError
from robustcli.explain.figures import HeatmapRow, plot_layer_grid, plot_overlays, save_figure
from robustcli.explain.gradcam import (
    NORMALIZATIONS,
    GradCAMResult,
    Normalization,
    Target,
    grad_cam,
    layer_heatmaps,
    resolve_layer,
)
from robustcli.explain.localization import (
    HEATMAP_THRESHOLD,
    OBJECT_THRESHOLD,
    localization_report,
)
from robustcli.explain.model import ExplainModel, load_explain_model, model_inputs
from robustcli.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_writable,
    locked_output,
    strict_json,
)
from robustcli.results import SCHEMA, SCHEMA_VERSION, read_document

KIND = "explain"

ROLES = ("model", "vs")
OUTPUT_FILES = {
    "json": "explain.json",
    "overlays": "overlays.png",
    "layers": "layers.png",
    "heatmaps": "heatmaps.npz",
    "localization_csv": "localization.csv",
    "localization_png": "localization.png",
}

jsonable = strict_json  # the public name this module has always had


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


def _check_options(
    threshold: float, object_threshold: float, normalize: str, batch_size: int
) -> None:
    if not (0.0 <= threshold < 1.0 and 0.0 <= object_threshold < 1.0):
        raise RobustError("thresholds must lie in [0, 1): heatmaps and images are scaled to [0, 1]")
    if normalize not in NORMALIZATIONS:
        raise RobustError(f"unknown --normalize {normalize!r}: use {' or '.join(NORMALIZATIONS)}")
    if batch_size < 1:
        raise RobustError("--batch-size must be positive")


def _load_models(
    references: Sequence[str | os.PathLike[str] | None],
    *,
    untrained: bool,
    layers: Sequence[str | None],
    device: torch.device,
    dataset: str | None = None,
) -> tuple[list[ExplainModel], list[str]]:
    """The given models (``None`` references skipped) on ``device`` and each one's Grad-CAM
    layer; every layer is resolved before a model moves, so a bad name fails fast.
    ``dataset``: that of ``package.module:factory`` references."""
    models = [
        load_explain_model(ref, untrained=untrained, dataset=dataset) for ref in references if ref
    ]
    chosen = [resolve_layer(em.model, lay)[0] for em, lay in zip(models, layers, strict=False)]
    for em in models:
        em.model.to(device)
    return models, chosen


def _load_split(
    dataset: str, split: str, data_dir: str | os.PathLike[str] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    from robustcli.data import load_dataset

    data, labels = load_dataset(dataset, split, data_dir)
    if data.shape[0] == 0:
        raise DataError(f"{dataset} {split} has no images")
    return data, labels


@dataclass
class _Shown:
    """The selected images explained by every model (Fig. 8), shared by the writers below;
    ``inputs01`` and ``results`` hold one entry per model."""

    models: list[ExplainModel]
    layers: list[str]
    indices: list[int]
    labels: torch.Tensor
    inputs01: list[torch.Tensor]
    results: list[GradCAMResult]
    class_names: list[str] = field(default_factory=list)

    def cname(self, i: int) -> str:
        return self.class_names[i] if 0 <= i < len(self.class_names) else str(i)


def _explain_images(
    models: list[ExplainModel],
    layers: list[str],
    data: torch.Tensor,
    labels: torch.Tensor,
    indices: list[int],
    device: torch.device,
    *,
    target: Target,
    normalize: Normalization,
    batch_size: int,
) -> _Shown:
    """Grad-CAM of the images ``data[indices]`` (uint8) for every model at its layer (Fig. 8);
    class names are left to the caller."""
    sel = torch.tensor(indices, dtype=torch.long)
    inputs01 = [model_inputs(em, data[sel]) for em in models]
    results = [
        grad_cam(
            em.model,
            em.normalise(x01).to(device),
            layer=lay,
            target=target,
            labels=labels[sel],
            normalize=normalize,
            batch_size=batch_size,
        )
        for em, x01, lay in zip(models, inputs01, layers, strict=True)
    ]
    return _Shown(models, layers, indices, labels[sel], inputs01, results)


def _overlay_rows(shown: _Shown) -> list[HeatmapRow]:
    rows = []
    for em, x01, res in zip(shown.models, shown.inputs01, shown.results, strict=True):
        h, w = res.feature_size
        captions = []
        for p, t, e in zip(res.predictions, res.targets, res.empty, strict=True):
            text = f"pred {shown.cname(int(p))}"
            if int(t) != int(p):
                text += f" / cam {shown.cname(int(t))}"
            captions.append(text + (" (empty)" if bool(e) else ""))
        rows.append(HeatmapRow(f"{em.label}\n{res.layer} ({h}x{w})", x01, res.heatmaps, captions))
    return rows


def _heatmap_arrays(shown: _Shown) -> bytes:
    arrays: dict[str, np.ndarray] = {
        "indices": np.asarray(shown.indices),
        "labels": shown.labels.numpy(),
    }
    for role, res in zip(ROLES, shown.results, strict=False):
        arrays[f"{role}_heatmaps"] = res.heatmaps.numpy().astype(np.float32)
        arrays[f"{role}_empty"] = res.empty.numpy()
        arrays[f"{role}_predictions"] = res.predictions.numpy()
        arrays[f"{role}_targets"] = res.targets.numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _image_records(shown: _Shown) -> list[dict[str, Any]]:
    records = []
    for k, i in enumerate(shown.indices):
        rec: dict[str, Any] = {"index": int(i), "label": int(shown.labels[k])}
        for role, res in zip(ROLES, shown.results, strict=False):
            rec[role] = {
                "prediction": int(res.predictions[k]),
                "target": int(res.targets[k]),
                "empty": bool(res.empty[k]),
            }
        records.append(rec)
    return records


def _write_overlays(shown: _Shown, out_dir: Path, title: str) -> dict[str, Path]:
    """``overlays.png`` (Fig. 8 layout) and ``heatmaps.npz`` of the selected images."""
    fig = plot_overlays(
        shown.inputs01[0],
        _overlay_rows(shown),
        image_captions=[
            f"#{i}: {shown.cname(int(y))}" for i, y in zip(shown.indices, shown.labels, strict=True)
        ],
        title=title,
    )
    files = {"overlays": save_figure(fig, out_dir / OUTPUT_FILES["overlays"])}
    files["heatmaps"] = out_dir / OUTPUT_FILES["heatmaps"]
    atomic_write_bytes(files["heatmaps"], _heatmap_arrays(shown))
    return files


def _write_layer_grid(
    shown: _Shown,
    out_dir: Path,
    device: torch.device,
    *,
    layers: Sequence[str] | None,
    normalize: Normalization,
) -> tuple[dict[str, list[dict[str, Any]]], Path]:
    """``layers.png``: Grad-CAM through the network for the first selected image (Fig. 7), with
    each model's per-layer record for the document."""
    grid, records = [], {}
    for role, em, x01, res in zip(ROLES, shown.models, shown.inputs01, shown.results, strict=False):
        maps = layer_heatmaps(
            em.model,
            em.normalise(x01[:1]).to(device),
            layers=layers,
            target=res.targets[:1],
            normalize=normalize,
        )
        grid.append((em.label, x01[0], maps))
        records[role] = [
            {"layer": m.layer, "feature_size": list(m.feature_size), "empty": bool(m.empty[0])}
            for m in maps
        ]
    first = shown.indices[0]
    title = f"Grad-CAM through the network, image #{first} ({shown.cname(int(shown.labels[0]))})"
    path = save_figure(plot_layer_grid(grid, title=title), out_dir / OUTPUT_FILES["layers"])
    return records, path


def _write_localization(
    shown: _Shown, data: torch.Tensor, labels: torch.Tensor, out_dir: Path, **options: Any
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Path]]:
    """``localization.csv`` and (when some image is kept) ``localization.png`` (Fig. 9) over
    ``data``; ``options`` go to ``localization_report``."""
    frame, doc, fig = localization_report(shown.models, shown.layers, data, labels, **options)
    files = {"localization_csv": out_dir / OUTPUT_FILES["localization_csv"]}
    atomic_write_bytes(files["localization_csv"], frame.to_csv(index=False).encode())
    if fig is not None:
        files["localization_png"] = save_figure(fig, out_dir / OUTPUT_FILES["localization_png"])
    return frame, doc, files


def _document(
    shown: _Shown, provenance_record: dict[str, Any], config: dict[str, Any], **parts: Any
) -> dict[str, Any]:
    """The ``explain.json`` document; ``parts``: ``layers``, ``localization``, ``warnings`` and
    ``files`` in that order."""
    roles = (ROLES[0], *(ROLES[1],) * (len(shown.models) - 1))  # model, then each --vs
    models = zip(roles, shown.models, shown.layers, shown.results, strict=False)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "model": shown.models[0].name,
        "models": [
            {"role": role, **em.record(), "layer": lay, "feature_size": list(res.feature_size)}
            for role, em, lay, res in models
        ],
        "provenance": provenance_record,
        "config": config,
        "images": _image_records(shown),
        **parts,
    }


@locked_output("out")  # another process writing the same folder is refused
def run_explain(
    checkpoint: str | os.PathLike[str],
    *,
    vs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
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

    ``checkpoint`` / ``vs`` (one or several): model references (``robustcli.models``); with
    ``untrained`` a registered name without stored weights is built with random weights.
    ``dataset`` defaults to the first checkpoint's dataset, or ``digits`` (embedded, offline)
    for an untrained model; it is also a ``package.module:factory`` model's. Writes into
    ``out`` (refused when not empty, unless ``force``): ``overlays.png`` (Fig. 8 layout),
    ``layers.png`` (Fig. 7, first selected image), ``heatmaps.npz``, ``explain.json`` and with
    ``localization`` also ``localization.csv`` and ``localization.png`` (Fig. 9).
    """
    from robustcli.runtime import resolve_device

    # every input is checked before the first file is written
    out_dir = check_out_dir(out, force)
    _check_options(threshold, object_threshold, normalize, batch_size)
    tgt = _parse_target(target)
    dev = resolve_device(device)
    others = [] if vs is None else [vs] if isinstance(vs, str | os.PathLike) else list(vs)
    models, chosen = _load_models(
        (checkpoint, *others),
        untrained=untrained,
        layers=(layer, *[vs_layer or layer] * len(others)),
        device=dev,
        dataset=dataset,
    )
    warnings = [
        f"{em.name} is UNTRAINED (random weights): its heatmaps mean nothing"
        for em in models
        if em.untrained
    ]
    # a trained model is shown the data it learned; untrained ones the embedded real digits
    ds_name = dataset or (None if models[0].untrained else models[0].dataset) or "digits"
    data, labels = _load_split(ds_name, split, data_dir)
    idx = _select(data.shape[0], images, indices, f"{ds_name} {split}")
    shown = _explain_images(  # the heatmaps of the selected images (Fig. 8)
        models,
        chosen,
        data,
        labels,
        idx,
        dev,
        target=tgt,
        normalize=normalize,
        batch_size=batch_size,
    )
    shown.class_names = _class_names(ds_name, data_dir, int(shown.results[0].logits.shape[1]))

    title = f"Grad-CAM ({ds_name} {split}, {normalize} normalisation)"
    files = _write_overlays(shown, out_dir, title)
    layer_records: dict[str, list[dict[str, Any]]] = {}
    if per_layer:
        layer_records, files["layers"] = _write_layer_grid(
            shown, out_dir, dev, layers=layers, normalize=normalize
        )
    loc_frame, loc_doc = None, None
    if localization:  # weakly supervised localization (Fig. 9)
        n = data.shape[0] if limit is None else max(0, min(int(limit), data.shape[0]))
        loc_frame, loc_doc, loc_files = _write_localization(
            shown,
            data[:n],
            labels[:n],
            out_dir,
            device=dev,
            normalize=normalize,
            threshold=threshold,
            object_threshold=object_threshold,
            batch_size=batch_size,
        )
        files.update(loc_files)

    files["json"] = out_dir / OUTPUT_FILES["json"]
    config = {
        "dataset": ds_name,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "split": split,
        "indices": idx,
        "target": "pred" if tgt is None else tgt,
        "method": "grad-cam",
        "normalize": normalize,
        "upsampling": "bilinear, align_corners=False",
    }
    document = _document(
        shown,
        {**provenance(argv), "device": str(dev)},
        config,
        layers=layer_records,
        localization=loc_doc,
        warnings=warnings,
        files={k: v.name for k, v in files.items()},
    )
    atomic_write_json(files["json"], jsonable(document))
    return ExplainReport(document, loc_frame, files, warnings)


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an ``explain.json`` document (checks schema, version and kind)."""
    return read_document(
        path, KIND, what="explain result", fix="pass the explain.json `robust explain` wrote"
    )
