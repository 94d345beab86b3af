"""The result schema: versions, migrations, clear failures, the metrics frame's rows."""

from __future__ import annotations

import json
import math
import re

import pytest

from robustcli.errors import DataError
from robustcli.results import (
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    load_result,
    metric_direction,
    metrics_frame,
)


def eval_c_doc(name: str, clean: float, per: dict[str, float]) -> dict:
    """A hand-made eval-c document (a test fixture, not a measured result)."""
    return {
        "schema": SCHEMA,
        "schema_version": 1,
        "kind": "eval-c",
        "model": {"name": name},
        "provenance": {},
        "clean_acc": clean,
        "corruptions_acc": sum(per.values()) / len(per),
        "mean_common_15": None,
        "mean_all_19": None,
        "groups": {"noise": per.get("gaussian_noise"), "blur": None},
        "per_corruption": per,
        "per_severity": {"1": 90.0, "5": 50.0},
    }


def write(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_current_version_loads_every_kind(tmp_path):
    doc = eval_c_doc("m", 90.0, {"gaussian_noise": 60.0})
    out = load_result(write(tmp_path, "e.json", doc))
    assert out["schema_version"] == SCHEMA_VERSION and out["kind"] == "eval-c"
    train = {
        "schema": SCHEMA,
        "schema_version": 1,
        "kind": "train",
        "model": "m",
        "metrics": {"test_acc": 0.9},
        "history": [],
    }
    run = tmp_path / "run"
    run.mkdir()
    write(run, "result.json", train)
    assert load_result(run)["kind"] == "train"  # a run folder resolves to result.json


def test_version_0_is_migrated(tmp_path):
    # RobustBench-style per-model JSON: no envelope, fractions.
    old = {"name": "rb-model", "clean_acc": 0.9478, "corruptions_acc": 0.7346}
    doc = load_result(write(tmp_path, "rb.json", old))
    assert doc["schema"] == SCHEMA and doc["schema_version"] == 1 and doc["kind"] == "eval-c"
    assert doc["model"]["name"] == "rb-model"
    assert doc["clean_acc"] == pytest.approx(94.78)
    assert 0 in MIGRATIONS


def test_newer_version_fails_clearly(tmp_path):
    doc = eval_c_doc("m", 90.0, {"fog": 1.0}) | {"schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(DataError, match="newer than this robustcli.*upgrade robustcli"):
        load_result(write(tmp_path, "new.json", doc))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"schema": "other", "schema_version": 1}, "not 'robustcli-result'"),
        ({"schema": SCHEMA, "schema_version": "one", "kind": "train"}, "not an integer"),
        ({"foo": 1}, "kind cannot be told"),
        ({"schema": SCHEMA, "schema_version": 1, "kind": "bogus"}, "kind 'bogus'"),
    ],
)
def test_bad_documents_fail_with_one_line(tmp_path, doc, match):
    with pytest.raises(DataError, match=match) as info:
        load_result(write(tmp_path, "bad.json", doc))
    assert "\n" not in str(info.value)


def test_unreadable_and_missing(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_result(tmp_path / "x.json")
    with pytest.raises(DataError, match="not found"):
        load_result(tmp_path / "missing.json")


def test_gzipped_results_read_like_plain_ones(tmp_path):
    """A result kept as NAME.json.gz (large attack results are) reads as the plain file does,
    named directly or found in its folder; a corrupt or truncated gzip is one DataError line."""
    import gzip

    doc = eval_c_doc("a", 80.0, {"gaussian_noise": 50.0})
    plain = load_result(write(tmp_path, "eval-c.json", doc))
    run = tmp_path / "run"
    run.mkdir()
    data = json.dumps(doc).encode()
    (run / "eval-c.json.gz").write_bytes(gzip.compress(data))
    for source in (run, run / "eval-c.json.gz"):
        back = load_result(source)
        assert back["_source"] == str(run / "eval-c.json.gz")
        assert {k: v for k, v in back.items() if k != "_source"} == {
            k: v for k, v in plain.items() if k != "_source"
        }
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, payload in (("attack.json.gz", data), ("eval-c.json.gz", gzip.compress(data)[:-30])):
        (bad / name).write_bytes(payload)  # not gzip at all / cut short
        with pytest.raises(DataError, match="not readable JSON") as info:
            load_result(bad / name)
        assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="or gzipped"):
        load_result(empty)


def test_metrics_frame_rows_columns_and_units():
    train = {"kind": "train", "model": "a", "metrics": {"test_acc": 0.8, "test_loss": 0.5}}
    ev = eval_c_doc("a", 80.0, {"gaussian_noise": 50.0, "contrast": 70.0})
    attack = {
        "kind": "attack",
        "model": "a",
        "summary": [
            {
                "model": "a",
                "model_name": "a",
                "attack": "ddn",
                "branch": "all",
                "clean_acc": 80.0,
                "success": 100.0,
                "median_l2": 0.4,
                "acc@0.1": 60.0,
                "acc@0.5": 20.0,
                "auc": 30.0,
            },
            {
                "model": "b",
                "model_name": "b",
                "attack": "ddn",
                "branch": "all",
                "clean_acc": 70.0,
                "success": 90.0,
                "median_l2": None,
                "acc@0.1": 65.0,
                "acc@0.5": 30.0,
                "auc": 20.0,
            },
        ],
    }
    frame = metrics_frame([train, ev, attack])
    assert list(frame.columns) == ["a", "b"]
    rows = list(frame.index)
    assert rows[:3] == ["train:test_acc", "train:test_loss", "clean_acc"]
    assert rows.index("corruption:gaussian_noise") < rows.index("corruption:contrast")
    assert "group:noise" in rows and "group:blur" not in rows  # incomplete groups are left out
    assert rows[-6:] == [
        "attack:ddn:clean_acc",
        "attack:ddn:success",
        "attack:ddn:median_l2",
        "attack:ddn:robust_acc@0.1",
        "attack:ddn:robust_acc@0.5",
        "attack:ddn:auc",
    ]
    assert frame.at["train:test_acc", "a"] == pytest.approx(80.0)  # fractions -> percent
    assert math.isnan(frame.at["clean_acc", "b"]) and math.isnan(
        frame.at["attack:ddn:median_l2", "b"]
    )
    # a second eval-c of the same model opens a new column
    assert list(metrics_frame([ev, ev]).columns) == ["a", "a #2"]


def test_directions():
    assert metric_direction("corruption:fog") == "higher"
    assert metric_direction("attack:ddn:robust_acc@0.5") == "higher"
    assert metric_direction("attack:ddn:auc") == "lower"
    assert metric_direction("attack:worst-case:success") == "lower"
    assert metric_direction("mce") == "lower"


def test_read_document_wants_the_schema_a_known_version_and_the_kind_asked_for(tmp_path):
    from robustcli.results import read_document

    def read(doc):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(doc))
        return read_document(path, "eval-c", what="baseline result", fix="pass an eval-c JSON")

    good = eval_c_doc("m", 90.0, {"fog": 1.0})
    assert read(good) == good  # as written: no "_source" added, nothing migrated
    cases = [
        ({k: v for k, v in good.items() if k != "schema"}, "not a robustcli result"),
        ({**good, "schema": "other"}, "schema 'other', not 'robustcli-result'"),
        ({**good, "schema_version": "one"}, "not an integer"),
        ({**good, "schema_version": SCHEMA_VERSION + 1}, "newer than this robustcli"),
        ({**good, "kind": "attack"}, "is a 'attack' result, not 'eval-c': pass an eval-c JSON"),
        ({**good, "kind": "nonsense"}, "has kind 'nonsense'"),
    ]
    for doc, expected in cases:
        with pytest.raises(DataError, match=re.escape(expected)) as info:
            read(doc)
        assert "\n" not in str(info.value) and "baseline result" in str(info.value)
