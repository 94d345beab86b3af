"""Curves and metrics of paper B's Exp. 2 from per-sample minimal L2 distances.

Each sample ``i`` of the ``N`` evaluated images has a kept distance ``d_i``: 0 if the clean image
is misclassified (no attack needed), a finite number if an adversarial was found, inf if the
attack never fooled it, and NaN if it was *not attacked* under the protocol (cut by the time
budget, or attacked in fewer repeats than asked). Let ``C`` be the correctly classified images
and ``A`` (a subset of ``C``) the attacked ones (finite or inf). Then

- clean accuracy:  ``clean = 100 * |C| / N`` over all images (it needs no attack);
- accuracy at L2 ``e`` (robust accuracy): ``acc(e) = clean * #{i in A: d_i > e} / |A|``,
  the clean accuracy times the share of attacked images that withstand ``e`` (Foolbox counts a
  perturbation of size ``<= e`` as within budget, so ``acc(0) = clean``);
- accuracy loss:  ``loss(e) = clean - acc(e) = clean * #{i in A: d_i <= e} / |A|``, paper B's
  y axis, a non-decreasing step function of ``e``;
- area under the loss curve up to ``E``:
  ``int_0^E loss(e) de = clean/|A| * sum_{i in A, d_i<E} (E - d_i)`` (``auc_area``, in %-L2)
  and its mean over ``[0, E]`` (``auc``, in %): lower is more robust;
- median minimal L2 over ``A`` (failures at inf).

With nothing cut (``A = C``) these are the plain counts over all ``N`` images, e.g.
``acc(e) = 100 * #{d_i > e} / N``. With a cut, misclassified images (never cut) would be
over-represented among the images with a known distance and a cut would look like lost
accuracy; the formulas above instead estimate the attack metrics from the images actually
attacked. With ``A`` empty (the attack was cut before finishing any batch) every attack metric
is NaN ("cut" in tables), never 0; clean accuracy is still known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from robustcli.attacks.runner import AttackOutcome


def split_distances(
    distances: np.ndarray, clean_correct: np.ndarray | None = None
) -> tuple[int, int, np.ndarray]:
    """``(N, |C|, d[A])``: images, correctly classified ones, the attacked ones' distances.

    Without ``clean_correct``, the misclassified images are those at distance 0 (cut images,
    NaN, are correctly classified ones: only those are attacked)."""
    d = np.asarray(distances, dtype=np.float64)
    correct = d != 0 if clean_correct is None else np.asarray(clean_correct, dtype=bool)
    return len(d), int(correct.sum()), d[correct & ~np.isnan(d)]


def clean_accuracy(distances: np.ndarray, clean_correct: np.ndarray | None = None) -> float:
    """Clean accuracy (%) over all ``N`` images (NaN if there are none)."""
    n, n_correct, _ = split_distances(distances, clean_correct)
    return 100.0 * n_correct / n if n else math.nan


def _kept_share(
    distances: np.ndarray, clean_correct: np.ndarray | None
) -> tuple[float, np.ndarray | None]:
    """``(clean, d[A])``; ``d[A]`` None when the attack metrics are unknown (``A`` empty while
    ``C`` is not)."""
    n, n_correct, att = split_distances(distances, clean_correct)
    clean = 100.0 * n_correct / n if n else math.nan
    if n == 0 or (n_correct and not len(att)):
        return clean, None
    return clean, att


def accuracy_at(
    distances: np.ndarray, l2: float | Sequence[float], clean_correct: np.ndarray | None = None
) -> np.ndarray:
    """Accuracy (%) with perturbations up to ``l2`` allowed (robust accuracy at ``l2``); NaN
    where unknown (nothing attacked), except at ``l2 <= 0`` (the clean accuracy)."""
    e = np.atleast_1d(np.asarray(l2, dtype=np.float64))
    clean, att = _kept_share(distances, clean_correct)
    if att is None:
        return np.where(e <= 0, clean, math.nan)
    if not len(att):  # nothing correctly classified: 0 at every budget
        return np.zeros(e.shape)
    return clean * (att[None, :] > e[:, None]).sum(axis=1) / len(att)


def accuracy_loss(
    distances: np.ndarray, l2: float | Sequence[float], clean_correct: np.ndarray | None = None
) -> np.ndarray:
    """Loss in accuracy (percentage points) at each L2 in ``l2`` (paper B's Fig. 6 y axis)."""
    return clean_accuracy(distances, clean_correct) - accuracy_at(distances, l2, clean_correct)


def loss_steps(
    distances: np.ndarray, clean_correct: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The exact accuracy-loss step curve: ``(l2, loss)`` at 0 and at each distinct finite
    positive distance (the loss jumps there; draw with ``drawstyle="steps-post"``). A fully cut
    attack gives ``([0], [nan])``: no curve, rather than a flat line at 0."""
    clean, att = _kept_share(distances, clean_correct)
    if att is None:
        return np.zeros(1), np.full(1, math.nan)
    if not len(att):
        return np.zeros(1), np.zeros(1)
    finite = np.sort(att[np.isfinite(att) & (att > 0)])
    xs, counts = np.unique(finite, return_counts=True)
    at_zero = clean * float((att <= 0).sum()) / len(att)
    ys = at_zero + clean * np.cumsum(counts) / len(att)
    return np.concatenate([[0.0], xs]), np.concatenate([[at_zero], ys])


def loss_area(distances: np.ndarray, upto: float, clean_correct: np.ndarray | None = None) -> float:
    """``int_0^upto loss(e) de`` in %-L2 units (NaN if unknown)."""
    clean, att = _kept_share(distances, clean_correct)
    if att is None or upto <= 0:
        return math.nan
    if not len(att):
        return 0.0
    hit = att[att < upto]
    return float(clean * (upto - hit).sum() / len(att))


def median_l2(distances: np.ndarray, clean_correct: np.ndarray) -> float:
    """Median minimal L2 over the attacked, correctly classified samples (failures = inf)."""
    _, _, att = split_distances(distances, clean_correct)
    return float(np.median(att)) if len(att) else math.nan


def eps_column(eps: float) -> str:
    return f"acc@{eps:g}"


def summary_frame(
    outcomes: Sequence[AttackOutcome], epsilons: Sequence[float], auc_upto: float | None = None
) -> pd.DataFrame:
    """One row per outcome: clean accuracy, attack success, median minimal L2, robust accuracy
    at each epsilon, area under the accuracy-loss curve up to ``auc_upto`` (default: the largest
    epsilon), time and throughput, and what the time budget left out. Percentages in %,
    distances in [0, 1] pixel units; attack metrics NaN when nothing was attacked.

    Counts: ``n`` images whose outcome is known (misclassified, or attacked in every repeat),
    ``attacked`` correctly classified images attacked in every repeat (the base of the attack
    metrics), ``cut`` correctly classified images left out (not attacked, or ``partial``: in
    fewer repeats than asked), ``cut_repeats`` per repeat the images it did not reach
    (``"0/12/40"``), ``left_out`` (worst case only) the cut attacks left out of it, ``partial``
    true when something was left out (a cut attack, or a worst case without every attack)."""
    if auc_upto is not None:
        upto = float(auc_upto)
    else:
        upto = float(max(epsilons)) if len(epsilons) else 0.0
    rows = []
    for o in outcomes:
        cc = o.clean_correct
        att = o.attacked
        fooled = int((o.status == "adversarial").sum())
        left_out = [str(a) for a in o.params.get("left_out") or []]  # worst case only
        row: dict[str, object] = {
            "model": o.label,
            "attack": o.attack,
            "n": int(o.evaluated.sum()),
            "clean_acc": clean_accuracy(o.distances, cc),
            "success": 100.0 * fooled / att.sum() if att.sum() else math.nan,
            "median_l2": median_l2(o.distances, cc),
        }
        if not cc.any():  # nothing to attack: every image is misclassified, success is void
            row["success"] = math.nan
        for eps, acc in zip(epsilons, accuracy_at(o.distances, epsilons, cc), strict=True):
            row[eps_column(eps)] = float(acc)
        area = loss_area(o.distances, upto, cc)
        row["auc"] = area / upto if upto > 0 else math.nan
        row["auc_area"] = area
        row["repeats"] = o.repeats
        row["seconds"] = o.seconds
        row["img_per_s"] = o.images_per_second
        row["attacked"] = o.n_attacked
        row["cut"] = o.n_cut
        row["cut_repeats"] = "/".join(str(v) for v in o.cut_by_repeat)
        row["left_out"] = ",".join(left_out)
        row["partial"] = bool(o.n_cut or left_out)
        row["branch"] = o.branch
        row["model_name"] = o.model
        rows.append(row)
    return pd.DataFrame(rows)


def samples_frame(outcomes: Sequence[AttackOutcome]) -> pd.DataFrame:
    """One row per (outcome, sample): label, clean prediction, status, kept L2 (inf failed, NaN
    cut or partial), the repeat that gave it, and each repeat's L2 (NaN: not reached)."""
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
        acc = accuracy_at(o.distances, g, o.clean_correct)
        frames.append(
            pd.DataFrame(
                {
                    "model": o.label,
                    "attack": o.attack,
                    "branch": o.branch,
                    "l2": g,
                    "accuracy": acc,
                    "accuracy_loss": clean_accuracy(o.distances, o.clean_correct) - acc,
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
