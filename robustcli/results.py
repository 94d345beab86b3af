"""The one versioned result schema shared by every command, and the metrics frame built from it.

Every command writes one JSON document (``docs/results-schema.md``)::

    {"schema": "robustcli-result", "schema_version": 1, "kind": "train" | "eval-c" | "attack" |
     "explain", "model": ..., "provenance": {...}, ...payload}

``load_result(path)`` reads any kind, upgrades older versions one step at a time through
``MIGRATIONS`` (version 0 = a document without ``schema_version``, such as the JSON of an early
``robust eval-c`` or RobustBench's per-model JSON) and refuses newer or unknown versions with one
line that says what to do; ``read_document(path, kind)`` is the strict reader of one kind
that eval-c's ``--baseline``, ``read_attack_result`` and explain's ``read_result`` share.
``metrics_frame(docs)`` flattens train / eval-c / attack documents into one table: a row per
metric (stable names, see ``METRIC_NAMING``), a column per model.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from robustcli.corruptions import CORRUPTIONS, GROUPS
from robustcli.errors import DataError
from robustcli.io import find_in_folder, read_json_object

SCHEMA = "robustcli-result"
SCHEMA_VERSION = 1
KINDS = ("train", "eval-c", "attack", "explain")
#: Files looked for when a result path is a folder (a train run folder, an attack --out folder).
FOLDER_FILES = ("result.json", "attack.json", "explain.json", "eval-c.json")

METRIC_NAMING = """\
train:test_acc, train:train_acc       accuracy (%) at the end of training (result.json)
train:test_loss                       test loss at the end of training (lower is better)
clean_acc                             eval-c clean accuracy (%)
corruptions_acc                       mean over every evaluated (corruption, severity) (%)
mean_common_15, mean_all_19           mean over the 15 common / all 19 corruptions (%)
group:<noise|blur|weather|digital|extra>   group means (%)
corruption:<name>                     mean over severities of one corruption (%)
severity:<s>                          mean over corruptions at severity s (%)
mce, relative_mce                     eval-c run with --baseline: corruption errors (lower)
attack:<attack>:clean_acc             clean accuracy on the attacked images (%)
attack:<attack>:success               attack success rate (%, lower is better)
attack:<attack>:median_l2             median minimal L2 ([0,1] pixels, higher is more robust)
attack:<attack>:robust_acc@<eps>      accuracy with L2 perturbations up to eps (%)
attack:<attack>:auc                   mean accuracy loss over [0, max eps] (%, lower is better)
"""

#: Metric-name patterns where a lower value is better; every other metric: higher is better.
LOWER_IS_BETTER = ("train:test_loss", "mce", "relative_mce", "attack:*:success", "attack:*:auc")

Migration = Callable[[dict[str, Any]], dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


def _infer_kind(doc: Mapping[str, Any]) -> str | None:
    if doc.get("kind") in KINDS:
        return str(doc["kind"])
    if "outcomes" in doc and "summary" in doc:
        return "attack"
    if "corruptions_acc" in doc or "per_corruption" in doc:
        return "eval-c"
    if "history" in doc and "metrics" in doc:
        return "train"
    return None


def _migrate_0_to_1(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 0: no ``schema_version`` (early eval-c / train JSON, RobustBench's per-model JSON:
    ``clean_acc`` / ``corruptions_acc`` as fractions or percentages). Adds the envelope; a
    RobustBench-style document gets its accuracies in percent and its model name from ``name``
    or ``model``."""
    kind = _infer_kind(doc)
    if kind is None:
        raise DataError(
            "a result without schema_version whose kind cannot be told (no kind, "
            "corruptions_acc, summary or history field): re-run the command that wrote it"
        )
    out = dict(doc)
    out["schema"] = SCHEMA
    out["schema_version"] = 1
    out["kind"] = kind
    out.setdefault("provenance", {"migrated_from": 0})
    if kind == "eval-c":
        model = out.get("model")
        if not isinstance(model, Mapping):
            out["model"] = {"name": str(model or out.get("name") or "model")}
        accs = [out.get("clean_acc"), out.get("corruptions_acc")]
        if all(isinstance(v, int | float) and 0 <= v <= 1 for v in accs if v is not None):
            for key in ("clean_acc", "corruptions_acc"):  # RobustBench JSON: fractions
                if out.get(key) is not None:
                    out[key] = 100.0 * float(out[key])
        out.setdefault("units", "percent")
    return out


#: ``MIGRATIONS[v]`` turns a version-``v`` document into a version-``v + 1`` one.
MIGRATIONS: dict[int, Migration] = {0: _migrate_0_to_1}


def migrate(doc: Mapping[str, Any], source: str = "result") -> dict[str, Any]:
    """Upgrade ``doc`` to ``SCHEMA_VERSION`` or raise ``DataError`` naming the fix."""
    if not isinstance(doc, Mapping):
        raise DataError(f"{source} is not a JSON object: pass a result written by robust")
    schema = doc.get("schema")
    if schema is not None and schema != SCHEMA:
        raise DataError(
            f"{source} has schema {schema!r}, not {SCHEMA!r}: pass a result JSON (result.json, "
            "eval-c --out, attack.json), not a config or other file"
        )
    raw = doc.get("schema_version", 0 if schema is None else None)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise DataError(
            f"{source} has schema_version {raw!r}, not an integer: re-run the command that wrote it"
        )
    version = raw
    if version > SCHEMA_VERSION:
        raise DataError(
            f"{source} has schema version {version}, newer than this robustcli reads "
            f"({SCHEMA_VERSION}): upgrade robustcli (pip install -U robustcli)"
        )
    out = dict(doc)
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise DataError(
                f"{source} has schema version {version}, which this robustcli cannot upgrade "
                f"(it reads {sorted(MIGRATIONS)} -> {SCHEMA_VERSION}): re-run the command"
            )
        try:
            out = step(out)
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None
        version = int(out["schema_version"])
    if out.get("kind") not in KINDS:
        raise DataError(
            f"{source} has kind {out.get('kind')!r}: this robustcli knows {', '.join(KINDS)}"
        )
    return out


def resolve_result_path(path: str | os.PathLike[str]) -> Path:
    """A result file, or the result inside a run / output folder."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = find_in_folder(p, FOLDER_FILES)
        if found is None:
            raise DataError(
                f"{p} holds no result ({', '.join(FOLDER_FILES)}, or gzipped): pass the JSON a "
                "command wrote"
            )
        return found
    return p


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read any result document (file or folder), migrated to ``SCHEMA_VERSION``.

    The path it came from is kept under ``doc["_source"]`` (not part of the schema)."""
    p = resolve_result_path(path)
    doc = read_json_object(
        p, what="result", fix="check the path, or re-run the command that wrote it"
    )
    out = migrate(doc, str(p))
    out["_source"] = str(p)
    return out


def read_document(
    path: str | os.PathLike[str], kind: str, *, what: str, fix: str
) -> dict[str, Any]:
    """One ``kind`` of result document as robust writes it (a file, or its ``.json.gz``),
    for the readers of one kind (eval-c's ``--baseline``, attack.json, explain.json).

    Unlike :func:`load_result` it needs the ``schema`` field (no version-0 or RobustBench
    documents) and the kind asked for; every problem is one ``DataError`` line ending in
    ``fix``."""
    doc = read_json_object(path, what=what, fix=fix)
    if doc.get("schema") != SCHEMA:
        raise DataError(
            f"{what} {path} is not a robustcli result (schema {doc.get('schema')!r}, "
            f"not {SCHEMA!r}): {fix}"
        )
    out = migrate(doc, f"{what} {path}")
    if out["kind"] != kind:
        raise DataError(f"{what} {path} is a {out['kind']!r} result, not {kind!r}: {fix}")
    return out


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def metric_direction(name: str) -> str:
    """``"higher"`` or ``"lower"``: which way is better for metric ``name``."""
    from fnmatch import fnmatchcase

    return "lower" if any(fnmatchcase(name, p) for p in LOWER_IS_BETTER) else "higher"


def is_percent(name: str) -> bool:
    """Whether a metric is an accuracy-like percentage (plotted on one axis)."""
    return not (name.endswith((":median_l2", ":auc", ":success")) or name.endswith("loss")) and (
        name not in ("mce", "relative_mce")
    )


def _num(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    if isinstance(v, str):
        return math.inf if v == "inf" else math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _model_name(doc: Mapping[str, Any]) -> str:
    m = doc.get("model")
    if isinstance(m, Mapping):
        return str(m.get("name") or "model")
    return str(m or "model")


def _train_metrics(doc: Mapping[str, Any]) -> dict[str, float]:
    metrics = doc.get("metrics") or {}
    out: dict[str, float] = {}
    for key in ("test_acc", "train_acc"):
        v = _num(metrics.get(key))
        if not math.isnan(v):
            out[f"train:{key}"] = 100.0 * v if v <= 1.0 else v  # result.json stores fractions
    if "test_loss" in metrics:
        out["train:test_loss"] = _num(metrics["test_loss"])
    return out


def _eval_c_metrics(doc: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("clean_acc", "corruptions_acc", "mean_common_15", "mean_all_19"):
        if doc.get(key) is not None:
            out[key] = _num(doc[key])
    for g, v in (doc.get("groups") or {}).items():
        if v is not None:
            out[f"group:{g}"] = _num(v)
    for c, v in (doc.get("per_corruption") or {}).items():
        out[f"corruption:{c}"] = _num(v)
    for s, v in (doc.get("per_severity") or {}).items():
        out[f"severity:{s}"] = _num(v)
    base = doc.get("baseline") or {}
    for key in ("mce", "relative_mce"):
        if base.get(key) is not None:
            out[key] = _num(base[key])
    return out


_EPS_COLUMN = re.compile(r"^acc@(.+)$")


def _attack_metrics(doc: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per model (the summary's ``model_name``, or its label): the attack metrics."""
    per_model: dict[str, dict[str, float]] = {}
    for row in doc.get("summary") or []:
        name = str(row.get("model_name") or row.get("model") or _model_name(doc))
        branch = row.get("branch") or "all"
        attack = str(row.get("attack"))
        if branch != "all":
            attack = f"{attack}[{branch}]"
        m = per_model.setdefault(name, {})
        for key in ("clean_acc", "success", "median_l2", "auc"):
            if key in row:
                m[f"attack:{attack}:{key}"] = _num(row[key])
        for key, v in row.items():
            hit = _EPS_COLUMN.match(str(key))
            if hit:
                m[f"attack:{attack}:robust_acc@{hit.group(1)}"] = _num(v)
    return per_model


def document_metrics(doc: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{model name: {metric: value}}`` of one (migrated) document; explain gives nothing.

    A document with the right envelope but a malformed payload (a hand-edited file, a list
    where a mapping belongs) raises ``DataError`` naming the file, not a traceback."""
    kind = doc.get("kind")
    try:
        if kind == "train":
            return {_model_name(doc): _train_metrics(doc)}
        if kind == "eval-c":
            return {_model_name(doc): _eval_c_metrics(doc)}
        if kind == "attack":
            return _attack_metrics(doc)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        source = doc.get("_source") or "a result"
        raise DataError(
            f"{source} is not a valid {kind} result ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}): re-run the command that wrote it"
        ) from None
    return {}


def _get(doc: Any, *keys: str) -> Any:
    """``doc[k1][k2]...`` or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


def result_conditions(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a (migrated) result was measured on, for ``robust compare``'s mismatch check.

    ``dataset`` for every kind; eval-c: ``corruptions``, ``severities``, ``images`` (count),
    ``corrupted images`` (generated with which seed, or the official files); attack:
    ``attacks``, ``epsilons``, ``images`` (count and selection), ``attack settings`` (per attack:
    its parameters). A condition the document does not record (older or RobustBench files) is
    left out: unknown is not a mismatch. Lists are compared as sets by the caller."""
    kind = doc.get("kind")
    out: dict[str, Any] = {}
    if kind == "train":
        dataset = _get(doc, "provenance", "dataset")
    elif kind == "eval-c":
        dataset = _get(doc, "provenance", "clean_data", "dataset") or _get(doc, "model", "dataset")
        if isinstance(doc.get("corruptions"), list):
            out["corruptions"] = [str(c) for c in doc["corruptions"]]
        if isinstance(doc.get("severities"), list):
            out["severities"] = [str(s) for s in doc["severities"]]
        if isinstance(doc.get("n_examples"), int):
            out["images"] = str(doc["n_examples"])
        src = _get(doc, "provenance", "corrupted_data")
        if isinstance(src, Mapping) and src.get("source"):
            if src["source"] in ("generated", "generated-files"):
                # files written by `robust corrupt` hold the images generation on the fly makes
                seed = src.get("seed", _get(src, "generation", "seed"))
                out["corrupted images"] = f"generated with seed {seed}"
            else:
                out["corrupted images"] = f"{src['source']} files"
    elif kind == "attack":
        dataset = _get(doc, "provenance", "data", "dataset")
        settings = _get(doc, "config", "attacks")
        if isinstance(settings, Mapping) and settings:
            out["attacks"] = [str(a) for a in settings]
            out["attack settings"] = {
                str(a): dict(v) for a, v in settings.items() if isinstance(v, Mapping)
            }
        elif isinstance(doc.get("summary"), list):
            names = {str(r.get("attack")) for r in doc["summary"] if isinstance(r, Mapping)}
            out["attacks"] = sorted(names - {"worst-case"})
        if isinstance(doc.get("epsilons"), list):
            out["epsilons"] = [f"{_num(e):g}" for e in doc["epsilons"]]
        n = _get(doc, "provenance", "data", "n_examples") or _get(doc, "provenance", "n_examples")
        if isinstance(n, int):
            selection = _get(doc, "provenance", "data", "selection")
            out["images"] = f"{n} ({selection})" if selection else str(n)
    else:
        dataset = None
    if isinstance(dataset, str) and dataset:
        out["dataset"] = dataset
    return out


def _row_key(name: str) -> tuple[int, int, str]:
    """Canonical row order: train, headline eval-c, groups, corruptions, severities, CE, attacks."""
    head = ["clean_acc", "corruptions_acc", "mean_common_15", "mean_all_19"]
    if name.startswith("train:"):
        return (0, 0, name)
    if name in head:
        return (1, head.index(name), name)
    if name.startswith("group:"):
        g = name.split(":", 1)[1]
        return (2, list(GROUPS).index(g) if g in GROUPS else 99, name)
    if name.startswith("corruption:"):
        c = name.split(":", 1)[1]
        return (3, CORRUPTIONS.index(c) if c in CORRUPTIONS else 99, name)
    if name.startswith("severity:"):
        return (4, 0, name)
    if name in ("mce", "relative_mce"):
        return (5, 0, name)
    return (6, 0, name)


def _attack_sort(names: Sequence[str]) -> list[str]:
    """Attack rows grouped by attack (first-seen order), then metric order, eps ascending."""
    attacks: list[str] = []
    for n in names:
        a = n.split(":")[1]
        if a not in attacks:
            attacks.append(a)
    order = {"clean_acc": 0, "success": 1, "median_l2": 2, "auc": 4}

    def key(n: str) -> tuple[int, int, float]:
        _, a, metric = n.split(":", 2)
        if metric.startswith("robust_acc@"):
            return (attacks.index(a), 3, _num(metric.split("@", 1)[1]))
        return (attacks.index(a), order.get(metric, 5), 0.0)

    return sorted(names, key=key)


def metrics_frame(
    docs: Sequence[Mapping[str, Any]], labels: Sequence[str | None] | None = None
) -> pd.DataFrame:
    """Rows = metrics (stable names, canonical order), columns = models; values as floats.

    Documents of one model (its train result, eval-c result, its rows of an attack result) fill
    one column; a second document of the same kind for the same model opens a new column
    (``name #2``). ``labels[i]`` renames the column(s) of ``docs[i]``.
    """
    columns: dict[str, dict[str, float]] = {}
    filled: dict[str, set[str]] = {}  # column -> kinds that filled it
    for i, doc in enumerate(docs):
        kind = str(doc.get("kind"))
        for name, metrics in document_metrics(doc).items():
            if not metrics:
                continue
            label = (labels[i] if labels and labels[i] else None) or name
            col = label
            n = 2
            while col in columns and kind in filled[col]:
                col = f"{label} #{n}"
                n += 1
            columns.setdefault(col, {}).update(metrics)
            filled.setdefault(col, set()).add(kind)
    if not columns:
        raise DataError(
            "no metrics in these results: pass train (result.json), eval-c or attack results"
        )
    rows = sorted({r for m in columns.values() for r in m}, key=_row_key)
    attack_rows = [r for r in rows if r.startswith("attack:")]
    rows = [r for r in rows if not r.startswith("attack:")] + _attack_sort(attack_rows)
    frame = pd.DataFrame(
        {c: [m.get(r, math.nan) for r in rows] for c, m in columns.items()},
        index=pd.Index(rows, name="metric"),
        dtype=float,
    )
    return frame
