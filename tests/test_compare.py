"""robust compare: every output format, best / second-best marks, deltas, gates and exit codes.

The result documents here are hand-made fixtures (not measured results)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from robustcli.cli import app
from robustcli.compare import compare, comparison_frame
from robustcli.errors import RobustError
from robustcli.gates import evaluate_gates, load_gates, parse_rule, rules_from_mapping

runner = CliRunner()


def eval_c(name: str, clean: float, noise: float, fog: float) -> dict:
    return {
        "schema": "robustcli-result",
        "schema_version": 1,
        "kind": "eval-c",
        "model": {"name": name},
        "provenance": {},
        "clean_acc": clean,
        "corruptions_acc": (noise + fog) / 2,
        "groups": {},
        "per_corruption": {"gaussian_noise": noise, "fog": fog},
        "per_severity": {},
    }


def attack(name: str, auc: float) -> dict:
    return {
        "schema": "robustcli-result",
        "schema_version": 1,
        "kind": "attack",
        "model": name,
        "summary": [
            {
                "model": name,
                "model_name": name,
                "attack": "ddn",
                "branch": "all",
                "clean_acc": 90.0,
                "median_l2": 0.5,
                "acc@0.5": 40.0,
                "auc": auc,
            }
        ],
    }


@pytest.fixture
def files(tmp_path):
    docs = {
        "base.json": eval_c("base", 90.0, 60.0, 80.0),
        "a.json": eval_c("a", 91.0, 70.0, 79.0),
        "b.json": eval_c("b", 85.0, 65.0, 81.0),
        "a-atk.json": attack("a", 10.0),
        "b-atk.json": attack("b", 20.0),
    }
    for name, doc in docs.items():
        (tmp_path / name).write_text(json.dumps(doc))
    return tmp_path


def test_marks_follow_direction_and_table1_rules(files):
    cmp = compare([files / "a.json", files / "b.json"], baseline=files / "base.json")
    assert cmp.models == ["base", "a", "b"] and cmp.baseline == "base"
    ranks = cmp.ranks()
    assert ranks.loc["clean_acc"].to_dict() == {"base": 2, "a": 1, "b": 0}
    assert ranks.loc["corruption:fog"].to_dict() == {"base": 2, "a": 0, "b": 1}
    assert cmp.deltas().at["corruption:gaussian_noise", "a"] == pytest.approx(10.0)
    md = comparison_frame(cmp, "markdown")
    row = md.set_index("metric").loc["clean_acc"]
    assert row["a"] == "**91.00**" and row["base"] == "<ins>90.00</ins>" and row["b"] == "85.00"
    assert row["delta b"] == "-5.00"
    # lower-is-better metric (auc): a (10) beats b (20); two models: no second best
    both = compare([files / "a-atk.json", files / "b-atk.json"])
    assert both.ranks().loc["attack:ddn:auc"].to_dict() == {"a": 1, "b": 0}


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_every_format(files, fmt):
    res = runner.invoke(
        app,
        [
            "compare",
            str(files / "a.json"),
            str(files / "b.json"),
            "--baseline",
            str(files / "base.json"),
            "--format",
            fmt,
        ],
    )
    assert res.exit_code == 0, res.output
    out = res.stdout
    if fmt == "table":
        assert "corruption:gaussian_noise" in out and "robust compare" in out
    elif fmt == "markdown":
        assert out.startswith("| metric | base | a | b | delta a | delta b |")
        assert "**91.00**" in out
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        clean = next(r for r in rows if r["metric"] == "clean_acc")
        assert float(clean["a"]) == 91.0 and clean["best"] == "a" and clean["second"] == "base"
        assert float(clean["delta b"]) == -5.0 and clean["better"] == "higher"
    else:
        records = json.loads(out)
        assert {r["metric"] for r in records} >= {"clean_acc", "corruption:fog"}
        assert records[0]["metric"] == "clean_acc" and records[0]["a"] == 91.0


def test_compare_reads_a_gzipped_attack_folder(files):
    """An attack folder kept as attack.json.gz compares as the plain file does."""
    import gzip

    kept = files / "kept"
    kept.mkdir()
    (kept / "attack.json.gz").write_bytes(gzip.compress((files / "b-atk.json").read_bytes()))
    plain = runner.invoke(app, ["compare", str(files / "a-atk.json"), str(files / "b-atk.json")])
    gz = runner.invoke(app, ["compare", str(files / "a-atk.json"), str(kept), "-f", "csv"])
    assert plain.exit_code == 0 and gz.exit_code == 0, gz.output
    auc = next(r for r in csv.DictReader(io.StringIO(gz.stdout)) if r["metric"] == "attack:ddn:auc")
    assert float(auc["a"]) == 10.0 and float(auc["b"]) == 20.0 and auc["best"] == "a"


def test_gates_pass_exit_0_and_write_summary(files, monkeypatch):
    step = files / "step.md"
    step.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    res = runner.invoke(
        app,
        [
            "compare",
            str(files / "a.json"),
            "--baseline",
            str(files / "base.json"),
            "--max-drop",
            "mean_corruption_acc=0.5",
            "--max-drop",
            "corruption:*=2",
            "--min",
            "clean_acc=80",
            "--github-summary",
            "--format",
            "markdown",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "gates passed: 3 rules" in res.stderr
    text = step.read_text()
    assert text.startswith("# earlier step\n")  # appended, not replaced
    assert "**Gates passed**" in text and "| clean_acc |" in text


def test_gates_fail_exit_1_one_line_per_violation(files, tmp_path):
    gates = tmp_path / "gates.yaml"
    gates.write_text(
        "gates:\n"
        "  mean_corruption_acc: {max_drop: 0.5}\n"
        "  'corruption:*': max_drop 2\n"
        "  clean_acc: {min: 88, max_drop: 1}\n"
    )
    summary = tmp_path / "summary.md"
    res = runner.invoke(
        app,
        [
            "compare",
            str(files / "b.json"),
            "--baseline",
            str(files / "base.json"),
            "--gates",
            str(gates),
            "--summary",
            str(summary),
        ],
    )
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("gate:")]
    # clean_acc: below 88 and a drop of 5 > 1; corruptions pass (noise +5, fog +1, mean +3)
    assert len(lines) == 2
    assert any("clean_acc of b is 85.00, below the minimum 88" in ln for ln in lines)
    assert any("clean_acc of b dropped 5.00 points vs baseline base" in ln for ln in lines)
    text = summary.read_text()
    assert "**Gates failed**" in text and "below the minimum 88" in text


def test_max_drop_violation_message(files):
    res = runner.invoke(
        app,
        [
            "compare",
            str(files / "a.json"),
            "--baseline",
            str(files / "base.json"),
            "--max-drop",
            "corruption:*=0.5",
            "--max",
            "attack:*:auc=5",
        ],
    )
    # a: fog 80 -> 79 is a drop of 1 > 0.5; the auc rule matches nothing -> input error first
    assert res.exit_code == 2 and "matches no metric" in res.stderr
    res = runner.invoke(
        app,
        [
            "compare",
            str(files / "a.json"),
            "--baseline",
            str(files / "base.json"),
            "--max-drop",
            "corruption:*=0.5",
        ],
    )
    assert res.exit_code == 1
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("gate:")]
    assert "corruption:fog of a dropped 1.00 points vs baseline base (80.00 -> 79.00" in line


def test_lower_is_better_gate_direction(files):
    cmp = compare([files / "b-atk.json"], baseline=files / "a-atk.json")
    report = evaluate_gates(
        cmp.values, [parse_rule("attack:ddn:auc=5", "max_drop")], baseline=cmp.baseline
    )
    assert not report.passed and "rose 10.00 points" in report.lines()[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-drop", "clean_acc"], "write METRIC=VALUE"),
        (["--max-drop", "clean_acc=abc"], "not a number"),
        (["--min", "clean_acc=80", "--format", "html"], "unknown --format"),
        (["--max-drop", "nonsense=1"], "matches no metric"),
    ],
)
def test_bad_input_exit_2(files, args, message):
    res = runner.invoke(
        app, ["compare", str(files / "a.json"), "--baseline", str(files / "base.json"), *args]
    )
    assert res.exit_code == 2 and message in res.stderr
    assert "Traceback" not in res.output


def test_max_drop_needs_baseline_and_missing_file(files):
    res = runner.invoke(app, ["compare", str(files / "a.json"), "--max-drop", "clean_acc=1"])
    assert res.exit_code == 2 and "--baseline" in res.stderr
    res = runner.invoke(app, ["compare", str(files / "nope.json")])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_gates_yaml_forms(tmp_path):
    rules = rules_from_mapping({"clean": {"min": 80, "max": 99}, "corruption:*": "max_drop 2"})
    assert [str(r) for r in rules] == [
        "clean_acc: min 80",
        "clean_acc: max 99",
        "corruption:*: max_drop 2",
    ]
    with pytest.raises(RobustError, match="unknown gate kind"):
        rules_from_mapping({"clean_acc": {"at_least": 1}})
    bad = tmp_path / "g.yaml"
    bad.write_text("gates: [1, 2\n")
    with pytest.raises(RobustError, match="not valid YAML"):
        load_gates(bad)


def test_plot_is_written_atomically(files, tmp_path):
    plot = tmp_path / "cmp.png"
    args = [
        "compare",
        str(files / "a.json"),
        str(files / "b.json"),
        "--plot",
        str(plot),
        "--format",
        "csv",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, args)  # exists: refused without --force
    assert res.exit_code == 2 and "--force" in res.stderr
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# Issue #12: results measured on different inputs, rule-less or misspelt gates, bad formats
# --------------------------------------------------------------------------------------------


def measured_eval_c(name: str, dataset: str = "digits", **over) -> dict:
    """An eval-c document with the fields a real `robust eval-c` records about its inputs."""
    doc = eval_c(name, 90.0, 60.0, 80.0)
    doc["model"]["dataset"] = dataset
    doc["provenance"] = {
        "clean_data": {"dataset": dataset},
        "corrupted_data": {"source": "generated", "seed": 0},
    }
    doc.update(corruptions=["gaussian_noise", "fog"], severities=[1, 3], n_examples=100)
    doc.update(over)
    return doc


def measured_attack(name: str, dataset: str = "digits", **over) -> dict:
    doc = attack(name, 10.0)
    doc["provenance"] = {"data": {"dataset": dataset, "n_examples": 20, "selection": "all"}}
    doc["config"] = {"attacks": {"ddn": {"steps": 20}}}
    doc["epsilons"] = [0.5]
    doc.update(over)
    return doc


def write_docs(tmp_path, **docs):
    for stem, doc in docs.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(doc))
    return tmp_path


@pytest.mark.parametrize(
    ("base_over", "new_over", "message"),
    [
        (
            {},
            {"dataset": "cifar10"},
            "dataset differs: baseline {base} has digits, {new} has cifar10",
        ),
        ({}, {"corruptions": ["gaussian_noise", "snow"]}, "corruptions differ: only baseline"),
        ({}, {"severities": [1, 3, 5]}, "severities differ: only {new} has 5"),
        ({}, {"n_examples": 50}, "images differ: baseline {base} has 100, {new} has 50"),
        (
            {},
            {"provenance": {"corrupted_data": {"source": "generated", "seed": 1}}},
            "corrupted images differ: baseline {base} has generated with seed 0",
        ),
    ],
)
def test_eval_c_inputs_must_match_the_baseline(tmp_path, base_over, new_over, message):
    dataset = new_over.pop("dataset", "digits")
    new = measured_eval_c("new", dataset)
    new.update(new_over)
    write_docs(tmp_path, base=measured_eval_c("base", **base_over), new=new)
    base, new_path = tmp_path / "base.json", tmp_path / "new.json"
    with pytest.raises(RobustError) as err:
        compare([new_path], baseline=base)
    text = str(err.value)
    assert "\n" not in text and "--allow-mismatch" in text
    assert message.format(base=base, new=new_path) in text
    # the CLI: exit 2, one line, nothing on stdout
    res = runner.invoke(app, ["compare", str(new_path), "--baseline", str(base)])
    assert res.exit_code == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "different inputs" in res.stderr


def test_allow_mismatch_says_so_in_every_output(tmp_path):
    write_docs(tmp_path, base=measured_eval_c("base"), new=measured_eval_c("new", "cifar10"))
    args = ["compare", str(tmp_path / "new.json"), "--baseline", str(tmp_path / "base.json")]
    summary = tmp_path / "summary.md"
    res = runner.invoke(
        app,
        [
            *args,
            "--allow-mismatch",
            "-f",
            "markdown",
            "--min",
            "clean_acc=10",
            "--summary",
            str(summary),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "mismatched inputs" in res.stderr and "dataset differs" in res.stderr
    assert res.stdout.startswith("> **WARNING: compared across mismatched inputs")
    assert "| metric | base | new | delta new |" in res.stdout
    assert "**WARNING: compared across mismatched inputs" in summary.read_text()
    res = runner.invoke(app, [*args, "--allow-mismatch", "-f", "csv"])
    assert res.exit_code == 0 and res.stdout.startswith("metric,")  # CSV stays CSV
    assert "mismatched inputs" in res.stderr
    res = runner.invoke(app, [*args, "--allow-mismatch"])
    assert res.exit_code == 0 and "ACROSS MISMATCHED INPUTS" in " ".join(res.stdout.split())
    cmp = compare([tmp_path / "new.json"], baseline=tmp_path / "base.json", allow_mismatch=True)
    assert cmp.mismatches and cmp.models == ["base", "new"]


def test_matching_inputs_and_unknown_conditions_pass(tmp_path):
    base = measured_eval_c("base", corruptions=["fog", "gaussian_noise"])  # order is no mismatch
    legacy = eval_c("legacy", 80.0, 50.0, 70.0)  # records nothing about its inputs
    train_doc = {
        "schema": "robustcli-result",
        "schema_version": 1,
        "kind": "train",
        "model": "new",
        "provenance": {"dataset": "digits"},
        "metrics": {"test_acc": 0.9},
    }
    files = write_docs(
        tmp_path,
        base=base,
        new=measured_eval_c("new"),
        legacy=legacy,
        train=train_doc,
        atk=measured_attack("new"),  # 20 attacked images vs 100 evaluated: other kinds, fine
    )
    cmp = compare(
        [files / "new.json", files / "legacy.json", files / "train.json", files / "atk.json"],
        baseline=files / "base.json",
    )
    assert cmp.mismatches == [] and "train:test_acc" in cmp.values.index
    # a train result of another dataset is a mismatch across kinds
    train_doc["provenance"]["dataset"] = "mnist"
    write_docs(tmp_path, train=train_doc)
    with pytest.raises(RobustError, match="dataset differs.*mnist"):
        compare([files / "new.json", files / "train.json"])


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"epsilons": [0.5, 1.0]}, "epsilons differ: only {new} has 1"),
        (
            {"config": {"attacks": {"ddn": {"steps": 20}, "cw": {}}}},
            "attacks differ: only {new} has cw",
        ),
        (
            {"config": {"attacks": {"ddn": {"steps": 100}}}},
            "attack settings differ: ddn steps=20 vs 100",
        ),
        (
            {"provenance": {"data": {"dataset": "digits", "n_examples": 10, "selection": "all"}}},
            "images differ",
        ),
    ],
)
def test_attack_inputs_must_match(tmp_path, over, message):
    write_docs(tmp_path, a=measured_attack("a"), b=measured_attack("b", **over))
    with pytest.raises(RobustError) as err:
        compare([tmp_path / "b.json"], baseline=tmp_path / "a.json")
    assert message.format(new=tmp_path / "b.json") in str(err.value)
    assert compare([tmp_path / "b.json"], baseline=tmp_path / "a.json", allow_mismatch=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no gate rules"),
        ("# only a comment\n", "holds no gate rules"),
        ("gates:\n", "holds no gate rules"),
        ("gates: {}\n", "holds no gate rules"),
        ("gates: [1, 2\n", "is not valid YAML (expected ',' or ']'"),
        ("gates:\n  clean_accc: {min: 80}\n", "unknown metric 'clean_accc'"),
        ("gates:\n  'attack:ddn:aucc': max 5\n", "unknown attack metric 'aucc'"),
        ("gates:\n  clean_acc: {min: true}\n", "not a number"),
        ("gates:\n  clean_acc: {min: 80}\ngate:\n  fog: 1\n", "unknown top-level key 'gate'"),
    ],
)
def test_bad_gates_files_name_the_file(tmp_path, files, text, message):
    gates = tmp_path / "gates.yaml"
    gates.write_text(text)
    with pytest.raises(RobustError) as err:
        load_gates(gates)
    assert str(gates) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)
    res = runner.invoke(app, ["compare", str(files / "a.json"), "--gates", str(gates)])
    assert res.exit_code == 2 and "gates passed" not in res.stderr and res.stdout == ""


def test_gates_file_that_is_a_folder_or_binary(tmp_path):
    with pytest.raises(RobustError, match="is a folder"):
        load_gates(tmp_path)
    binary = tmp_path / "g.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RobustError, match="not text"):
        load_gates(binary)


def test_rule_metric_names_are_checked_and_literal_brackets_match(files):
    with pytest.raises(RobustError, match="did you mean 'corruption:fog'"):
        parse_rule("corruption:fgo=1", "min")
    for ok in ("corruption:*=1", "group:noise=1", "severity:7=1", "attack:*:robust_acc@*=1"):
        parse_rule(ok, "min")
    frame = compare([files / "a-atk.json"]).values.rename(
        index={"attack:ddn:auc": "attack:ddn[high]:auc"}
    )
    report = evaluate_gates(frame, [parse_rule("attack:ddn[high]:auc=5", "max")])
    assert report.checked == 1 and not report.passed  # auc 10 > 5, found despite the brackets


def test_thresholds_a_percentage_can_never_meet_or_never_miss_are_input_errors(files):
    # RobustBench's fractions: a floor of 0.9 on a percentage would pass CI forever
    for text, kind, message in [
        ("clean_acc=0.9", "min", "looks like a fraction.*write 90 for 90 %"),
        ("corruption:*=0.5", "min", "looks like a fraction"),
        ("attack:*:robust_acc@0.5=150", "min", "is a percentage, 0 to 100"),
        ("mean_corruption_acc=-1", "max", "is a percentage, 0 to 100"),
        ("corruption:*=100", "max_drop", "can never fail"),
    ]:
        with pytest.raises(RobustError, match=message):
            parse_rule(text, kind)
    # still rules: points, small ceilings on lower-is-better rates, non-percent metrics
    for text, kind in [
        ("clean_acc=0.5", "max_drop"),
        ("attack:*:success=0.5", "max"),
        ("attack:*:median_l2=0.5", "min"),
        ("mce=150", "max"),
        ("clean_acc=0", "min"),
        ("clean_acc=1", "min"),
    ]:
        parse_rule(text, kind)
    res = runner.invoke(app, ["compare", str(files / "a.json"), "--min", "clean_acc=0.9"])
    assert res.exit_code == 2 and "looks like a fraction" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_unknown_format_is_a_robust_error_everywhere():
    import pandas as pd

    from robustcli.render import render

    with pytest.raises(RobustError, match="unknown --format 'xml'"):
        render(pd.DataFrame({"a": [1]}), "xml")
    res = runner.invoke(app, ["models", "--format", "xml", "--no-macs"])
    assert res.exit_code == 2 and "unknown --format 'xml'" in res.stderr


def test_malformed_payload_is_a_data_error(tmp_path):
    doc = eval_c("a", 90.0, 60.0, 80.0)
    doc["per_corruption"] = [60.0, 80.0]
    write_docs(tmp_path, a=doc)
    with pytest.raises(RobustError, match=r"a\.json is not a valid eval-c result"):
        compare([tmp_path / "a.json"])


def test_documents_with_one_label_are_still_checked_against_each_other():
    """Two documents that carry the same label (no path, the same file name) are two results:
    the input check compares them rather than taking the second for the reference."""
    from robustcli.compare import input_mismatches

    a = {**measured_eval_c("a"), "_source": "eval.json"}
    b = {**measured_eval_c("b"), "_source": "eval.json", "n_examples": 50}
    assert input_mismatches([a, b]) == ["images differ: eval.json has 100, eval.json has 50"]
    assert input_mismatches([a, {**a}]) == []
