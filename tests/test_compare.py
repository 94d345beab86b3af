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
