"""Per-image eval-c results and paired comparisons of two models on the same images.

``robust eval-c --per-image`` stores, in the result document's ``per_image``, which images the
model classified correctly: per (corruption, severity) and on the clean images, a bit per image
(``numpy.packbits``, base64). Two such documents measured on the same images (same corrupted
data, same clean subset, same ``n``) can then be compared image by image:

- ``per_image_results(doc)``: the bits back as boolean arrays (``PerImage``).
- ``per_image_metrics(doc)``: one row per image, one column per eval-c metric (``clean_acc``,
  ``corruptions_acc``, ``mean_all_19``, ``group:*``, ``corruption:*``, ``severity:*``, as
  ``robust compare`` names them), in percent. Every such metric is a mean over images of equally
  many cells, so the column means are the document's own numbers.
- ``paired_metrics(a, b)``: both frames, checked to be of the same images.
- ``paired_bootstrap(a, b)``: ``a - b`` per metric with a bootstrap confidence interval over
  images (both models' images resampled together; ``bootstrap_mean`` does it for any frame of
  per-image values). It measures how much the difference depends
  on which test images were drawn: the image-sampling error of one training run. The
  seed-to-seed spread of training comes on top of it (compare runs of several seeds for that).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robustcli.errors import DataError

ENCODING = "base64 numpy.packbits (big bit order), one bit per image, 1 = classified correctly"


@dataclass(frozen=True)
class PerImage:
    """Which images a model classified correctly: ``cells`` (corruptions, severities, n) and
    ``clean`` (n,) or None (evaluated without clean images)."""

    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    cells: np.ndarray
    clean: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.cells.shape[2])


def _pack(bits: np.ndarray) -> str:
    return base64.b64encode(np.packbits(bits.astype(bool))).decode("ascii")


def _unpack(text: Any, n: int, where: str) -> np.ndarray:
    try:
        raw = np.frombuffer(base64.b64decode(str(text), validate=True), dtype=np.uint8)
    except ValueError:
        raise DataError(f"{where} is not base64: re-run eval-c with --per-image") from None
    if raw.size != (n + 7) // 8:
        raise DataError(
            f"{where} holds {raw.size * 8} bits for {n} images: re-run eval-c with --per-image"
        )
    return np.unpackbits(raw, count=n).astype(bool)


def encode_per_image(
    corruptions: tuple[str, ...],
    severities: tuple[int, ...],
    cells: np.ndarray,
    clean: np.ndarray | None,
) -> dict[str, Any]:
    """The document's ``per_image`` block from boolean ``cells`` (C, S, n) and ``clean`` (n,)."""
    return {
        "encoding": ENCODING,
        "n": int(cells.shape[2]),
        "clean": None if clean is None else _pack(clean),
        "accuracy": {
            c: {str(s): _pack(cells[i, j]) for j, s in enumerate(severities)}
            for i, c in enumerate(corruptions)
        },
    }


def _source(doc: Mapping[str, Any]) -> str:
    return str(doc.get("_source") or _model(doc))


def _model(doc: Mapping[str, Any]) -> str:
    model = doc.get("model")
    return str(model.get("name", "the model")) if isinstance(model, Mapping) else "the model"


def per_image_results(doc: Mapping[str, Any]) -> PerImage:
    """The per-image bits of an eval-c document, or ``DataError`` naming the fix."""
    block = doc.get("per_image")
    if doc.get("kind") != "eval-c" or not isinstance(block, Mapping):
        raise DataError(
            f"{_source(doc)} has no per-image results: evaluate with `robust eval-c --per-image`"
        )
    n = block.get("n")
    acc = block.get("accuracy")
    if not isinstance(n, int) or n < 1 or not isinstance(acc, Mapping):
        raise DataError(f"{_source(doc)}: malformed per_image block: re-run eval-c --per-image")
    corruptions = tuple(str(c) for c in doc.get("corruptions") or [])
    severities = tuple(int(s) for s in doc.get("severities") or [])
    cells = np.zeros((len(corruptions), len(severities), n), dtype=bool)
    for i, c in enumerate(corruptions):
        for j, s in enumerate(severities):
            bits = (acc.get(c) or {}).get(str(s))
            if bits is None:
                raise DataError(
                    f"{_source(doc)} has no per-image bits for {c} severity {s}: re-run eval-c "
                    "with --per-image"
                )
            cells[i, j] = _unpack(bits, n, f"{_source(doc)} per_image {c} {s}")
    clean = block.get("clean")
    return PerImage(
        corruptions,
        severities,
        cells,
        None if clean is None else _unpack(clean, n, f"{_source(doc)} per_image clean"),
    )


def _metric_weights(corruptions: tuple[str, ...], severities: tuple[int, ...]) -> pd.DataFrame:
    """Each eval-c metric as weights over the (corruption, severity) cells (rows). Every metric
    of ``summarize`` is a linear mean of cell accuracies, so a unit accuracy in one cell gives
    that cell's weight; the same functions as the document's numbers define them."""
    from robustcli.evaluate.metrics import Tally, summarize
    from robustcli.results import document_metrics

    cs = len(corruptions) * len(severities)
    cols: dict[str, np.ndarray] = {}
    for k in range(cs):
        unit = np.zeros(cs, dtype=np.int64)
        unit[k] = 1
        tally = Tally(
            corruptions,
            severities,
            correct=unit.reshape(len(corruptions), len(severities)),
            total=np.ones((len(corruptions), len(severities)), dtype=np.int64),
        )
        doc = {"kind": "eval-c", "model": {"name": "m"}, **summarize(tally)}
        for name, value in document_metrics(doc)["m"].items():
            cols.setdefault(name, np.zeros(cs))[k] = value / 100.0
    return pd.DataFrame(cols)


def per_image_metrics(doc: Mapping[str, Any] | PerImage) -> pd.DataFrame:
    """One row per image, one column per eval-c metric (percent); column means are the
    document's values (``clean_acc`` only when the document has clean results)."""
    p = doc if isinstance(doc, PerImage) else per_image_results(doc)
    weights = _metric_weights(p.corruptions, p.severities)
    flat = p.cells.reshape(-1, p.n).T.astype(np.float64)  # n x cells
    frame = pd.DataFrame(100.0 * flat @ weights.to_numpy(), columns=weights.columns)
    if p.clean is not None:
        frame.insert(0, "clean_acc", 100.0 * p.clean.astype(np.float64))
    frame.index.name = "image"
    return frame


def _check_paired(a: Mapping[str, Any], b: Mapping[str, Any], pa: PerImage, pb: PerImage) -> None:
    from robustcli.compare import input_mismatches

    if pa.n != pb.n:
        raise DataError(
            f"{_source(a)} has {pa.n} images per cell and {_source(b)} {pb.n}: evaluate both "
            "with the same --n-examples"
        )
    if pa.corruptions != pb.corruptions or pa.severities != pb.severities:
        raise DataError(
            f"{_source(a)} and {_source(b)} hold other corruptions or severities: evaluate both "
            "with the same --corruptions and --severities"
        )
    mismatches = input_mismatches([a, b])
    if mismatches:
        raise DataError(
            f"not the same images: {'; '.join(mismatches)}; a paired comparison needs both "
            "models evaluated on the same data"
        )


def paired_metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``per_image_metrics`` of two documents, checked to be of the same images (else
    ``DataError`` naming the difference): row ``i`` of both is the same image."""
    pa, pb = per_image_results(a), per_image_results(b)
    _check_paired(a, b, pa, pb)
    return per_image_metrics(pa), per_image_metrics(pb)


def paired_bootstrap(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """``a - b`` per eval-c metric with a bootstrap interval over images.

    ``a`` and ``b`` are eval-c documents with per-image results on the same images. Images
    are resampled together (paired: the same draw for both models), ``n_boot`` times; the
    interval is the percentile interval at ``level``. Returns one row per metric (index) with
    columns ``a``, ``b``, ``delta``, ``ci_low``, ``ci_high`` (percentage points)."""
    ma, mb = paired_metrics(a, b)
    common = [c for c in ma.columns if c in mb.columns]
    out = bootstrap_mean(ma[common] - mb[common], n_boot=n_boot, level=level, seed=seed)
    out.insert(0, "b", mb[common].mean())
    out.insert(0, "a", ma[common].mean())
    return out


def bootstrap_mean(
    frame: pd.DataFrame, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per column of ``frame`` (rows = images): the mean (``delta``) and its percentile
    bootstrap interval (``ci_low``, ``ci_high``); the rows are resampled together, so columns
    stay paired. ``frame`` may hold per-image differences of metrics of one's own (e.g. the
    mean of a few ``corruption:*`` columns), as ``paired_bootstrap``'s are."""
    if n_boot < 1:
        raise DataError("n_boot must be at least 1")
    if not 0.0 < level < 1.0:
        raise DataError(f"level must lie strictly between 0 and 1, got {level}")
    values = frame.to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    stats = np.empty((n_boot, values.shape[1]))
    for lo in range(0, n_boot, 250):  # 250 x n counts at a time: memory stays small
        k = min(250, n_boot - lo)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=k)
        stats[lo : lo + k] = counts @ values / n
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(stats, [tail, 100.0 - tail], axis=0)
    return pd.DataFrame(
        {"delta": values.mean(axis=0), "ci_low": low, "ci_high": high},
        index=pd.Index([str(c) for c in frame.columns], name="metric"),
    )
