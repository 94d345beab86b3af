"""eval-c results on paper and on disk: the versioned result document (``eval_c_document``,
``read_result`` for ``--baseline``), the tables the CLI renders, RobustBench's
``unaggregated_results.csv`` layout, and writing both files atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from robustcli.corruptions import GROUPS
from robustcli.evaluate.metrics import Tally, corruption_errors, summarize
from robustcli.io import (
    atomic_write,
    atomic_write_json,
    check_output,
    file_sha256,
    output_lock,
    strict_json,
)
from robustcli.results import SCHEMA, SCHEMA_VERSION, read_document

KIND = "eval-c"


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An eval-c result document (``--baseline``; a gzipped ``NAME.json.gz`` too), checked for
    its schema, version and kind."""
    return read_document(
        Path(path).expanduser(),
        KIND,
        what="baseline result",
        fix="pass a JSON written by `robust eval-c --out`",
    )


def eval_c_document(
    tally: Tally,
    *,
    model: Mapping[str, Any],
    provenance: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    baseline_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The versioned JSON result: RobustBench-like fields, the full breakdown and provenance."""
    summary = summarize(tally)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "model": dict(model),
        "provenance": dict(provenance),
        "units": "percent",
        "corruptions": list(tally.corruptions),
        "severities": list(tally.severities),
        "n_examples": int(tally.total[0, 0]) if tally.total.size else 0,
        **summary,
        "baseline": None,
    }
    if tally.hits is not None:
        from robustcli.evaluate.paired import encode_per_image

        doc["per_image"] = encode_per_image(
            tally.corruptions, tally.severities, tally.hits, tally.clean_hits
        )
    if baseline is not None:
        doc["baseline"] = {
            "path": str(baseline_path) if baseline_path is not None else None,
            "sha256": file_sha256(baseline_path) if baseline_path is not None else None,
            "clean_acc": baseline.get("clean_acc"),
            **corruption_errors(doc, baseline),
        }
    return strict_json(doc)


def corruption_table(doc: Mapping[str, Any]) -> pd.DataFrame:
    """One row per corruption: group, accuracy per severity, mean; CE columns with a baseline."""
    group_of = {c: g for g, members in GROUPS.items() for c in members}
    base = doc.get("baseline") or {}
    rows = []
    for c in doc["corruptions"]:
        row: dict[str, Any] = {"corruption": c, "group": group_of.get(c, "")}
        for s in doc["severities"]:
            row[f"s{s}"] = doc["accuracy"][c][str(s)]
        row["mean"] = doc["per_corruption"][c]
        if base:
            row["CE"] = base["ce"].get(c)
            row["rel. CE"] = base["relative_ce"].get(c)
        rows.append(row)
    mean_row: dict[str, Any] = {"corruption": "mean", "group": ""}
    for s in doc["severities"]:
        mean_row[f"s{s}"] = doc["per_severity"][str(s)]
    mean_row["mean"] = doc["corruptions_acc"]
    if base:
        mean_row["CE"] = base.get("mce")
        mean_row["rel. CE"] = base.get("relative_mce")
    rows.append(mean_row)
    df = pd.DataFrame(rows)
    numeric = [c for c in df.columns if c not in ("corruption", "group")]
    return df.astype({c: float for c in numeric})


def summary_table(doc: Mapping[str, Any]) -> pd.DataFrame:
    """The headline numbers as (metric, value) rows; absent metrics are left out."""
    rows: list[tuple[str, float | None]] = [
        ("clean accuracy", doc.get("clean_acc")),
        (f"mean over {len(doc['corruptions'])} corruptions", doc.get("corruptions_acc")),
        ("mean, 15 common", doc.get("mean_common_15")),
        ("mean, all 19", doc.get("mean_all_19")),
    ]
    rows += [(f"{g} (mean)", v) for g, v in (doc.get("groups") or {}).items()]
    base = doc.get("baseline")
    if base:
        rows += [
            (f"mCE vs {base['model']}", base.get("mce")),
            (f"relative mCE vs {base['model']}", base.get("relative_mce")),
        ]
    kept = [(k, v) for k, v in rows if v is not None]
    return pd.DataFrame(kept, columns=["metric", "value"]).astype({"value": float})


def unaggregated_frame(doc: Mapping[str, Any], label: str | None = None) -> pd.DataFrame:
    """RobustBench's ``unaggregated_results.csv`` layout: one row per model (index = name), a
    (corruption, severity) column per cell, accuracies as fractions. ``to_csv()`` writes the two
    header rows (corruptions, then severities)."""
    cols = [(c, s) for c in doc["corruptions"] for s in doc["severities"]]
    values = [doc["accuracy"][c][str(s)] / 100.0 for c, s in cols]
    name = label or doc.get("model", {}).get("name", "model")
    return pd.DataFrame([values], index=[name], columns=pd.MultiIndex.from_tuples(cols))


def output_paths(out: str | os.PathLike[str]) -> dict[str, Path]:
    """``--out FILE``: the JSON at FILE (``.json`` added if missing), the CSV beside it."""
    p = Path(out).expanduser()
    if p.suffix.lower() != ".json":
        p = p.with_name(p.name + ".json")
    return {"json": p, "csv": p.with_suffix(".csv")}


def check_outputs(out: str | os.PathLike[str], force: bool) -> dict[str, Path]:
    """Refuse existing outputs (before any work) unless ``force``."""
    paths = output_paths(out)
    for p in paths.values():
        check_output(p, force)
    return paths


def write_eval_c(
    doc: Mapping[str, Any], out: str | os.PathLike[str], force: bool = False
) -> dict[str, Path]:
    """Write the JSON and the unaggregated CSV atomically; returns their paths. Another process
    writing the same output meanwhile is refused (``output_lock``), so the pair stays one run's."""
    with output_lock(output_paths(out)["json"]):
        paths = check_outputs(out, force)  # again under the lock
        frame = unaggregated_frame(doc)
        with atomic_write(paths["csv"]) as fh:
            fh.write(frame.to_csv())
        atomic_write_json(paths["json"], doc)
    return paths
