"""Attack results as plain data: the versioned JSON document and its CSV tables.

``attack_document(...)`` builds the JSON (``schema: "robustcli-result"``, ``schema_version: 1``,
``kind: "attack"``) with provenance, config, the summary rows and every per-sample distance;
``write_attack_outputs(out_dir, ...)`` writes it with ``attack_summary.csv`` and
``attack_samples.csv``, atomically, refusing existing files unless ``force``;
``read_attack_result(path)`` gives back the document and the ``AttackOutcome``s, so that
``robust compare`` (or a notebook) can recompute any curve.

JSON has no infinity: a per-sample distance is a number (adversarial, or 0 for a misclassified
clean image), the string ``"inf"`` (attack failed) or ``null`` (not attacked under the protocol:
``cut`` by the time budget, ``partial`` when attacked in fewer repeats than asked, or a repeat
that did not reach the sample); the parallel ``status`` list says which. Each outcome also
counts what was cut (``cut``: ``samples``, ``not_attacked``, ``partial``, ``by_repeat``). In the
``summary`` rows a missing metric (nothing attacked) is ``null`` and an infinite median L2
(most images resisted) is ``"inf"``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robustcli.attacks.metrics import summary_frame
from robustcli.attacks.runner import AttackOutcome
from robustcli.errors import DataError
from robustcli.io import (
    atomic_write,
    atomic_write_json,
    check_output,
    find_in_folder,
    strict_json,
)
from robustcli.results import SCHEMA, SCHEMA_VERSION, read_document

KIND = "attack"

OUTPUT_NAMES = {
    "json": "attack.json",
    "summary_csv": "attack_summary.csv",
    "samples_csv": "attack_samples.csv",
    "figure_png": "attack_curves.png",
    "figure_svg": "attack_curves.svg",
}


def output_paths(out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Where ``robust attack --out DIR`` writes each output."""
    return {k: Path(out_dir) / v for k, v in OUTPUT_NAMES.items()}


def check_outputs(out_dir: str | os.PathLike[str], force: bool) -> dict[str, Path]:
    """Refuse (before any work) when an output exists and ``force`` is off."""
    paths = output_paths(out_dir)
    for p in paths.values():
        check_output(p, force)
    return paths


def environment() -> dict[str, Any]:
    """Versions and host facts for provenance."""
    import foolbox

    from robustcli.runtime import environment as host_environment

    return {**host_environment(), "foolbox": foolbox.__version__}


def outcome_record(o: AttackOutcome) -> dict[str, Any]:
    """One outcome as JSON-ready data (per-sample distances and statuses included)."""
    return {
        "model": o.model,
        "label": o.label,
        "attack": o.attack,
        "branch": o.branch,
        "topdown": o.topdown,
        "repeats": o.repeats,
        "seconds": o.seconds,
        "finished_seconds": o.finished_seconds,
        "model_images": o.model_images,
        "model_grad_images": o.model_grad_images,
        "params": o.params,
        "notes": o.notes,
        "cut": {
            "samples": o.n_cut,
            "not_attacked": o.n_cut - o.n_partial,
            "partial": o.n_partial,
            "by_repeat": o.cut_by_repeat,
        },
        "l2": _encode(o.distances),
        "status": [str(s) for s in o.status],
        "best_repeat": [int(v) for v in o.best_repeat],
        "l2_repeats": [_encode(row) for row in o.repeat_distances],
        "labels": [int(v) for v in o.labels],
        "clean_pred": [int(v) for v in o.clean_pred],
    }


def _encode(values: np.ndarray) -> list[float | str | None]:
    return [None if math.isnan(v) else ("inf" if math.isinf(v) else float(v)) for v in values]


def _summary_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A summary row with ``"inf"`` for an infinite value (strict JSON would make it null,
    which means missing)."""
    return {
        k: "inf" if isinstance(v, float) and math.isinf(v) and v > 0 else v for k, v in row.items()
    }


def _decode(values: Sequence[float | str | None]) -> np.ndarray:
    return np.array(
        [math.nan if v is None else (math.inf if v == "inf" else float(v)) for v in values],
        dtype=np.float64,
    )


def outcome_from_record(rec: Mapping[str, Any]) -> AttackOutcome:
    """Inverse of ``outcome_record`` (without the adversarial images)."""
    status = np.asarray(rec["status"])
    n = len(status)
    l2_repeats = np.array([_decode(row) for row in rec["l2_repeats"]]).reshape(-1, n)
    return AttackOutcome(
        model=rec["model"],
        label=rec["label"],
        attack=rec["attack"],
        branch=rec["branch"],
        topdown=bool(rec["topdown"]),
        labels=np.asarray(rec["labels"], dtype=np.int64),
        clean_pred=np.asarray(rec["clean_pred"], dtype=np.int64),
        distances=_decode(rec["l2"]),
        status=status,
        repeat_distances=l2_repeats,
        best_repeat=np.asarray(rec["best_repeat"], dtype=np.int64),
        repeats=int(rec["repeats"]),
        seconds=float(rec["seconds"]),
        model_images=int(rec["model_images"]),
        model_grad_images=int(rec.get("model_grad_images", 0)),
        finished_seconds=rec.get("finished_seconds"),
        params=dict(rec.get("params") or {}),
        notes=list(rec.get("notes") or []),
    )


def attack_document(
    outcomes: Sequence[AttackOutcome],
    *,
    epsilons: Sequence[float],
    models: Sequence[Mapping[str, Any]],
    data: Mapping[str, Any],
    config: Mapping[str, Any],
    seed: int,
    device: str,
    started: _dt.datetime | None = None,
    seconds: float | None = None,
    branch_transfer: Mapping[str, Any] | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The JSON document of an attack run (see the module docstring)."""
    summary = summary_frame(outcomes, epsilons)
    now = _dt.datetime.now(_dt.timezone.utc)
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "model": models[0]["name"] if models else None,
        "provenance": {
            "created": now.isoformat(timespec="seconds"),
            "started": (started or now).isoformat(timespec="seconds"),
            "seconds": seconds,
            "models": list(models),
            "data": dict(data),
            "n_examples": int(outcomes[0].n) if outcomes else 0,
            "seed": seed,
            "device": device,
            "command": list(command) if command is not None else None,
            **environment(),
        },
        "config": dict(config),
        "epsilons": [float(e) for e in epsilons],
        "summary": [_summary_record(r) for r in summary.to_dict(orient="records")],
        "branch_transfer": dict(branch_transfer or {}),
        "outcomes": [outcome_record(o) for o in outcomes],
    }
    return strict_json(doc)


def write_attack_outputs(
    out_dir: str | os.PathLike[str],
    doc: Mapping[str, Any],
    summary: pd.DataFrame,
    samples: pd.DataFrame,
    *,
    force: bool = False,
) -> dict[str, Path]:
    """Write ``attack.json``, ``attack_summary.csv`` and ``attack_samples.csv`` atomically."""
    paths = output_paths(out_dir)
    for key in ("json", "summary_csv", "samples_csv"):
        check_output(paths[key], force)
    atomic_write_json(paths["json"], doc)
    with atomic_write(paths["summary_csv"]) as fh:
        summary.to_csv(fh, index=False)
    with atomic_write(paths["samples_csv"]) as fh:
        samples.to_csv(fh, index=False)
    return paths


def read_attack_result(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[AttackOutcome]]:
    """The document of ``attack.json`` (or ``attack.json.gz``, or the folder holding either) and
    its outcomes; a problem with the file is one ``DataError`` line."""
    p = Path(path)
    if p.is_dir():
        p = find_in_folder(p, [OUTPUT_NAMES["json"]]) or p / OUTPUT_NAMES["json"]
    fix = "run (or re-run) `robust attack --out DIR`"
    doc = read_document(p, KIND, what="attack result", fix=fix)
    try:
        outcomes = [outcome_from_record(r) for r in doc["outcomes"]]
    except (KeyError, TypeError, ValueError) as exc:  # a field missing or of the wrong type
        raise DataError(f"attack result {p} has malformed outcomes ({exc!r}): {fix}") from None
    return doc, outcomes
