"""eval-c metrics: the ``Tally`` of correct / total counts the loop produces, ``summarize``
(accuracies in percent per cell, corruption, severity, group and overall) and
``corruption_errors`` (CE, relative CE, mCE against a baseline document)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustcli.corruptions import COMMON, CORRUPTIONS, GROUPS
from robustcli.errors import RobustError


@dataclass
class Tally:
    """Correct / total counts per (corruption, severity) and on clean images; with
    ``per_image``, which images were right (the counts are the sums of ``hits``)."""

    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    correct: np.ndarray  # (C, S) int64
    total: np.ndarray  # (C, S) int64
    clean_correct: int | None = None
    clean_total: int | None = None
    seconds: float = 0.0
    images: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    hits: np.ndarray | None = None  # (C, S, n) bool: image i right at (c, s); per_image only
    clean_hits: np.ndarray | None = None  # (n,) bool, on the clean images

    def accuracy(self) -> np.ndarray:
        """(C, S) accuracies in percent."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * self.correct / self.total

    @property
    def clean_acc(self) -> float | None:
        if not self.clean_total:
            return None
        return 100.0 * float(self.clean_correct or 0) / float(self.clean_total)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(tally: Tally) -> dict[str, Any]:
    """Accuracies (percent) per (corruption, severity), per corruption (mean over severities),
    per severity (mean over corruptions), per group and overall.

    ``corruptions_acc`` is the plain mean over every evaluated (corruption, severity), as in
    RobustBench; ``mean_common_15`` / ``mean_all_19`` are given only when all 15 / 19 corruptions
    were evaluated; a group mean only when all of its corruptions were.
    """
    acc = tally.accuracy()
    cs, ss = tally.corruptions, tally.severities
    accuracy = {c: {str(s): float(acc[i, j]) for j, s in enumerate(ss)} for i, c in enumerate(cs)}
    per_corruption = {c: float(acc[i].mean()) for i, c in enumerate(cs)}
    per_severity = {str(s): float(acc[:, j].mean()) for j, s in enumerate(ss)}
    present = set(cs)
    groups = {
        g: _mean(per_corruption[c] for c in members) if present.issuperset(members) else None
        for g, members in GROUPS.items()
    }
    return {
        "clean_acc": tally.clean_acc,
        "corruptions_acc": float(acc.mean()),
        "mean_common_15": _mean(per_corruption[c] for c in COMMON)
        if present.issuperset(COMMON)
        else None,
        "mean_all_19": _mean(per_corruption.values()) if present.issuperset(CORRUPTIONS) else None,
        "groups": groups,
        "per_corruption": per_corruption,
        "per_severity": per_severity,
        "accuracy": accuracy,
        "counts": {
            "clean": None
            if tally.clean_total is None
            else [int(tally.clean_correct or 0), int(tally.clean_total)],
            **{
                c: {
                    str(s): [int(tally.correct[i, j]), int(tally.total[i, j])]
                    for j, s in enumerate(ss)
                }
                for i, c in enumerate(cs)
            },
        },
    }


def corruption_errors(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Corruption error and relative corruption error of ``result`` against ``baseline`` (both
    eval-c documents), in percent, per corruption and their means (mCE, relative mCE).

    ``CE_c = sum_s err(c,s) / sum_s err_base(c,s)``;
    ``relCE_c = sum_s (err(c,s) - err_clean) / sum_s (err_base(c,s) - err_base_clean)``
    (Hendrycks & Dietterich 2019, with the user's baseline in place of AlexNet). A ratio whose
    denominator is 0 is ``None``; relative CE needs clean accuracy in both documents.
    """
    acc, base = result["accuracy"], baseline.get("accuracy") or {}
    label = baseline.get("model", {}).get("name", "the baseline")
    ce: dict[str, float | None] = {}
    rel: dict[str, float | None] = {}
    clean, base_clean = result.get("clean_acc"), baseline.get("clean_acc")
    for c, per_sev in acc.items():
        if c not in base:
            raise RobustError(
                f"baseline ({label}) has no {c} results: evaluate the baseline with the same "
                "--corruptions and --severities"
            )
        missing = [s for s in per_sev if s not in base[c] or base[c][s] is None]
        if missing:
            raise RobustError(
                f"baseline ({label}) has no {c} severity {missing[0]}: evaluate the baseline "
                "with the same --corruptions and --severities"
            )
        err = [100.0 - per_sev[s] for s in per_sev]
        err_b = [100.0 - base[c][s] for s in per_sev]
        ce[c] = 100.0 * sum(err) / sum(err_b) if sum(err_b) > 0 else None
        if clean is not None and base_clean is not None:
            num = sum(e - (100.0 - clean) for e in err)
            den = sum(e - (100.0 - base_clean) for e in err_b)
            rel[c] = 100.0 * num / den if den != 0 else None
        else:
            rel[c] = None
    return {
        "model": label,
        "ce": ce,
        "relative_ce": rel,
        "mce": _mean(ce.values()) if all(v is not None for v in ce.values()) else None,
        "relative_mce": _mean(rel.values()) if all(v is not None for v in rel.values()) else None,
    }
