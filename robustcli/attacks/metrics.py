"""Curves and metrics of paper B's Exp. 2 from per-sample minimal L2 distances.

Let ``d_i`` be sample ``i``'s kept distance (0 if misclassified clean, inf if never fooled) over
the ``n`` evaluated samples (cut samples, NaN, are left out). Then

- accuracy at L2 ``e``:  ``acc(e) = 100 * #{d_i > e} / n`` (robust accuracy; ``acc(0)`` is the
  clean accuracy, as Foolbox counts a perturbation of size ``<= e`` as within budget);
- accuracy loss:        ``loss(e) = acc(0) - acc(e) = 100 * #{0 < d_i <= e} / n``, paper B's
  y axis; it is a non-decreasing step function of ``e``;
- area under the loss curve up to ``E``: ``int_0^E loss(e) de = 100/n * sum_{0<d_i<E} (E - d_i)``
  (``auc_area``, in %-L2 units) and its mean over ``[0, E]`` (``auc``, in %): lower is more robust.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from robustcli.attacks.runner import AttackOutcome


def _evaluated(distances: np.ndarray) -> np.ndarray:
    d = np.asarray(distances, dtype=np.float64)
    return d[~np.isnan(d)]


def accuracy_at(distances: np.ndarray, l2: float | Sequence[float]) -> np.ndarray:
    """Accuracy (%) with perturbations up to ``l2`` allowed (robust accuracy at ``l2``)."""
    d = _evaluated(distances)
    e = np.atleast_1d(np.asarray(l2, dtype=np.float64))
    if len(d) == 0:
        return np.full(e.shape, math.nan)
    return 100.0 * (d[None, :] > e[:, None]).sum(axis=1) / len(d)


def accuracy_loss(distances: np.ndarray, l2: float | Sequence[float]) -> np.ndarray:
    """Loss in accuracy (percentage points) at each L2 in ``l2`` (paper B's Fig. 6 y axis)."""
    return accuracy_at(distances, 0.0)[0] - accuracy_at(distances, l2)


def loss_steps(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact accuracy-loss step curve: ``(l2, loss)`` at 0 and at each distinct finite
    positive distance (the loss jumps there; draw with ``drawstyle="steps-post"``)."""
    d = _evaluated(distances)
    if len(d) == 0:
        return np.zeros(1), np.zeros(1)
    finite = np.sort(d[np.isfinite(d) & (d > 0)])
    xs, counts = np.unique(finite, return_counts=True)
    return np.concatenate([[0.0], xs]), np.concatenate([[0.0], 100.0 * np.cumsum(counts) / len(d)])


def loss_area(distances: np.ndarray, upto: float) -> float:
    """``int_0^upto loss(e) de`` in %-L2 units."""
    d = _evaluated(distances)
    if len(d) == 0 or upto <= 0:
        return math.nan
    hit = d[(d > 0) & (d < upto)]
    return float(100.0 * (upto - hit).sum() / len(d))


def median_l2(distances: np.ndarray, clean_correct: np.ndarray) -> float:
    """Median minimal L2 over the evaluated, correctly classified samples (failures = inf)."""
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.asarray(clean_correct) & ~np.isnan(d)]
    return float(np.median(d)) if len(d) else math.nan


def eps_column(eps: float) -> str:
    return f"acc@{eps:g}"


def summary_frame(
    outcomes: Sequence[AttackOutcome], epsilons: Sequence[float], auc_upto: float | None = None
) -> pd.DataFrame:
    """One row per outcome: clean accuracy, attack success, median minimal L2, robust accuracy
    at each epsilon, area under the accuracy-loss curve up to ``auc_upto`` (default: the largest
    epsilon), time and throughput. Percentages in %, distances in [0, 1] pixel units."""
    upto = float(max(epsilons)) if auc_upto is None else float(auc_upto)
    rows = []
    for o in outcomes:
        ev = o.evaluated
        correct = o.clean_correct & ev
        n_ev = int(ev.sum())
        fooled = int((o.status == "adversarial").sum())
        row: dict[str, object] = {
            "model": o.label,
            "attack": o.attack,
            "n": n_ev,
            "clean_acc": float(accuracy_at(o.distances, 0.0)[0]),
            "success": 100.0 * fooled / correct.sum() if correct.sum() else math.nan,
            "median_l2": median_l2(o.distances, o.clean_correct),
        }
        for eps, acc in zip(epsilons, accuracy_at(o.distances, epsilons), strict=True):
            row[eps_column(eps)] = float(acc)
        area = loss_area(o.distances, upto)
        row["auc"] = area / upto if upto > 0 else math.nan
        row["auc_area"] = area
        row["repeats"] = o.repeats
        row["seconds"] = o.seconds
        row["img_per_s"] = o.images_per_second
        row["cut"] = o.n_cut
        row["branch"] = o.branch
        row["model_name"] = o.model
        rows.append(row)
    return pd.DataFrame(rows)


def samples_frame(outcomes: Sequence[AttackOutcome]) -> pd.DataFrame:
    """One row per (outcome, sample): label, clean prediction, status, kept L2 (inf failed, NaN
    cut), the repeat that gave it, and each repeat's L2."""
    frames = []
    for o in outcomes:
        df = pd.DataFrame(
            {
                "model": o.model,
                "label_name": o.label,
                "branch": o.branch,
                "attack": o.attack,
                "index": np.arange(o.n),
                "label": o.labels,
                "clean_pred": o.clean_pred,
                "status": o.status,
                "l2": o.distances,
                "best_repeat": o.best_repeat,
            }
        )
        for r in range(o.repeat_distances.shape[0]):
            df[f"l2_repeat{r + 1}"] = o.repeat_distances[r]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves_frame(outcomes: Sequence[AttackOutcome], grid: Sequence[float]) -> pd.DataFrame:
    """Accuracy and accuracy loss (%) of each outcome at each L2 of ``grid`` (long format)."""
    g = np.asarray(grid, dtype=np.float64)
    frames = []
    for o in outcomes:
        acc = accuracy_at(o.distances, g)
        frames.append(
            pd.DataFrame(
                {
                    "model": o.label,
                    "attack": o.attack,
                    "branch": o.branch,
                    "l2": g,
                    "accuracy": acc,
                    "accuracy_loss": accuracy_at(o.distances, 0.0)[0] - acc,
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def default_epsilons(input_shape: Sequence[int]) -> list[float]:
    """The robust-accuracy grid: CIFAR-size inputs (3x32x32) ``0.1, 0.25, 0.5, 1, 2``; MNIST-size
    (1x28x28) ``0.5, 1, 1.5, 2, 3``; other sizes the CIFAR grid scaled by ``sqrt(D / 3072)``."""
    dim = int(np.prod(input_shape))
    if tuple(input_shape) == (1, 28, 28):
        return [0.5, 1.0, 1.5, 2.0, 3.0]
    scale = math.sqrt(dim / 3072)
    return [round(e * scale, 4) for e in (0.1, 0.25, 0.5, 1.0, 2.0)]
