"""Issue #12, end to end: every command refuses bad input the same way.

Each case runs the real entry point (``robustcli.cli:main``, what ``.venv/bin/robust`` runs: it
alone turns Typer usage errors into one line) and must give exit code 2, exactly one non-empty
line on stderr, no traceback, and leave every file of the working folder byte-identical (every
file hashed before and after; nothing created, changed or removed).

The cases run in ONE child process (a `robust` start costs 1-2 s; fifty of them would cost
over a minute), each with its own ``sys.argv`` and captured stdout / stderr, in a folder of
fixtures: a tiny untrained ``bu-lenetfc`` digits checkpoint as a run folder, result files, and
existing outputs that must not be overwritten without ``--force``. Cases that would start heavy
work if their check were missing carry small sizes (one epoch, a few images), so a regression
fails the test in seconds instead of hanging it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (id, argv after `robust`, regex the error line must match (case-insensitive))
CASES: list[tuple[str, list[str], str]] = [
    # models
    ("models-format", ["models", "--format", "xml", "--no-macs"], r"--format.*xml"),
    ("models-none", ["models", "nosuch-*", "--no-macs"], r"no model matches"),
    # train (numeric options: helper H1)
    ("train-model", ["train", "-m", "nosuch", "-e", "1"], r"nosuch"),
    ("train-dataset", ["train", "-m", "bu-lenetfc", "-d", "nosuch", "-e", "1"], r"nosuch"),
    ("train-lr-nan", ["train", "-m", "bu-lenetfc", "--lr", "nan", "-e", "1"], r"--lr"),
    ("train-lr-neg", ["train", "-m", "bu-lenetfc", "--lr", "-0.1", "-e", "1"], r"--lr"),
    ("train-batch-0", ["train", "-m", "bu-lenetfc", "-b", "0", "-e", "1"], r"batch"),
    ("train-epochs-neg", ["train", "-m", "bu-lenetfc", "-e", "-5"], r"epochs"),
    ("train-seed-neg", ["train", "-m", "bu-lenetfc", "--seed", "-1", "-e", "1"], r"seed"),
    ("train-out-exists", ["train", "-m", "bu-lenetfc", "-e", "1", "--out", "old-run"], r"old-run"),
    # eval-c (helper H4)
    ("evalc-missing-ckpt", ["eval-c", "nosuch.safetensors", "--generate"], r"nosuch"),
    ("evalc-not-a-run", ["eval-c", "notrun", "--generate", "-n", "5"], r"notrun"),
    ("evalc-corrupt-ckpt", ["eval-c", "garbage.safetensors", "--generate", "-n", "5"], r"garbage"),
    (
        "evalc-n-neg",
        ["eval-c", "run", "--generate", "-n", "-5", "-c", "fog", "-s", "1"],
        r"-n|exampl",
    ),
    ("evalc-batch-0", ["eval-c", "run", "--generate", "-b", "0", "-n", "5", "-s", "1"], r"batch"),
    ("evalc-seed-neg", ["eval-c", "run", "--generate", "--seed", "-1", "-n", "5"], r"seed"),
    ("evalc-format", ["eval-c", "run", "--generate", "-f", "xml", "-n", "5"], r"--format.*xml"),
    ("evalc-corruption", ["eval-c", "run", "--generate", "-c", "nosuch", "-n", "5"], r"nosuch"),
    ("evalc-severity", ["eval-c", "run", "--generate", "-s", "9", "-n", "5"], r"severit"),
    (
        "evalc-out-exists",
        ["eval-c", "run", "--generate", "-n", "5", "-c", "fog", "-s", "1", "--out", "old.json"],
        r"old\.json",
    ),
    # attack (helper H3)
    (
        "attack-model",
        ["attack", "-m", "nosuch", "--untrained", "-n", "5"],
        r"nosuch.*package\.module:factory:",  # the reference form, not a Rich emoji code
    ),
    ("attack-missing-ckpt", ["attack", "-c", "nosuch.safetensors", "-n", "5"], r"nosuch"),
    ("attack-corrupt-ckpt", ["attack", "-c", "garbage.safetensors", "-n", "5"], r"garbage"),
    ("attack-n-0", ["attack", "-c", "run", "-n", "0", "-a", "contrast"], r"-n|exampl"),
    ("attack-batch-0", ["attack", "-c", "run", "-b", "0", "-n", "5", "-a", "contrast"], r"batch"),
    ("attack-seed-neg", ["attack", "-c", "run", "--seed", "-1", "-n", "5"], r"seed"),
    ("attack-eps-nan", ["attack", "-c", "run", "--epsilons", "nan", "-n", "5"], r"eps"),
    ("attack-unknown", ["attack", "-c", "run", "-a", "nosuch", "-n", "5"], r"nosuch"),
    (
        "attack-out-exists",
        ["attack", "-c", "run", "-n", "5", "-a", "contrast", "--out", "old-attack"],
        r"old-attack",
    ),
    # explain
    ("explain-n-neg", ["explain", "run", "-n", "-5"], r"--n-examples"),
    ("explain-batch-0", ["explain", "run", "--batch-size", "0"], r"--batch-size"),
    ("explain-threshold-nan", ["explain", "run", "--threshold", "nan"], r"--threshold"),
    ("explain-format", ["explain", "run", "-f", "xml"], r"--format.*xml"),
    ("explain-missing-ckpt", ["explain", "nosuch.safetensors", "-n", "2"], r"nosuch"),
    ("explain-not-a-run", ["explain", "notrun", "-n", "2"], r"notrun.*folder"),
    ("explain-corrupt-ckpt", ["explain", "garbage.safetensors", "-n", "2"], r"garbage"),
    ("explain-dataset", ["explain", "run", "-d", "nosuch", "-n", "2", "-o", "x"], r"nosuch"),
    ("explain-out-exists", ["explain", "run", "-n", "2", "--out", "old-explain"], r"old-explain"),
    ("explain-vs-missing", ["explain", "run", "--vs", "nosuch.safetensors", "-o", "x"], r"nosuch"),
    ("explain-split", ["explain", "run", "--split", "valid", "-n", "2", "-o", "x"], r"valid"),
    ("explain-indices", ["explain", "run", "--indices", "1,x", "-o", "x"], r"--indices"),
    # compare
    ("compare-missing", ["compare", "nosuch.json"], r"nosuch\.json.*not found"),
    ("compare-not-json", ["compare", "bad.json"], r"bad\.json.*JSON"),
    ("compare-schema", ["compare", "other.json"], r"other\.json.*schema"),
    ("compare-version", ["compare", "v7.json"], r"v7\.json.*version 7"),
    ("compare-payload", ["compare", "payload.json"], r"payload\.json.*not a valid"),
    ("compare-not-a-run", ["compare", "notrun"], r"notrun.*no result"),
    ("compare-format", ["compare", "digits.json", "-f", "xml"], r"--format.*xml"),
    ("compare-plot-suffix", ["compare", "digits.json", "--plot", "p.xyz"], r"p\.xyz"),
    (
        "compare-dataset-mismatch",
        ["compare", "digits.json", "--baseline", "cifar.json"],
        r"dataset.*digits.*cifar10|dataset.*cifar10.*digits",
    ),
    (
        "compare-baseline-missing",
        ["compare", "digits.json", "--baseline", "nosuch.json"],
        r"nosuch\.json",
    ),
    ("compare-gates-empty", ["compare", "digits.json", "--gates", "empty.yaml"], r"empty\.yaml"),
    ("compare-gates-yaml", ["compare", "digits.json", "--gates", "bad.yaml"], r"bad\.yaml.*YAML"),
    ("compare-gates-metric", ["compare", "digits.json", "--min", "clean_accc=80"], r"clean_accc"),
    (
        "compare-plot-exists",
        ["compare", "digits.json", "--plot", "old.png", "-f", "csv"],
        r"old\.png",
    ),
    # quickstart
    ("quickstart-out-exists", ["quickstart", "--out", "old-run", "--fast"], r"old-run"),
]


def _eval_c(dataset: str) -> dict:
    return {
        "schema": "robustcli-result",
        "schema_version": 1,
        "kind": "eval-c",
        "model": {"name": f"m-{dataset}", "dataset": dataset},
        "provenance": {"clean_data": {"dataset": dataset}},
        "corruptions": ["fog"],
        "severities": [1],
        "n_examples": 10,
        "clean_acc": 90.0,
        "corruptions_acc": 80.0,
        "per_corruption": {"fog": 80.0},
        "per_severity": {"1": 80.0},
    }


def _fixtures(work: Path) -> None:
    from robustcli.checkpoint import save_checkpoint
    from robustcli.data import dataset_info, input_adapter
    from robustcli.registry import create_model, resolve_config

    info = dataset_info("digits")
    adapter = input_adapter(info.input_shape, (1, 28, 28))
    mean, std = adapter.normalization(info.mean, info.std)
    (work / "run").mkdir(parents=True)
    save_checkpoint(
        work / "run" / "model.safetensors",
        create_model("bu-lenetfc"),
        model_name="bu-lenetfc",
        config=resolve_config("bu-lenetfc"),
        dataset="digits",
        normalization={"mean": mean, "std": std},
        input=adapter,
    )
    (work / "notrun").mkdir()
    (work / "notrun" / "notes.txt").write_text("not a run\n")
    for folder in ("old-run", "old-attack", "old-explain"):
        (work / folder).mkdir()
        (work / folder / "keep.txt").write_text(f"{folder}: must survive\n")
    (work / "old-attack" / "attack.json").write_text("{}\n")
    (work / "old.json").write_text('{"keep": true}\n')
    (work / "old.png").write_bytes(b"\x89PNG not really")
    (work / "digits.json").write_text(json.dumps(_eval_c("digits")))
    (work / "cifar.json").write_text(json.dumps(_eval_c("cifar10")))
    (work / "bad.json").write_text("not json\n")
    (work / "other.json").write_text('{"schema": "something-else"}\n')
    (work / "v7.json").write_text(
        '{"schema": "robustcli-result", "schema_version": 7, "kind": "eval-c"}\n'
    )
    payload = {**_eval_c("digits"), "per_corruption": [80.0]}
    (work / "payload.json").write_text(json.dumps(payload))
    (work / "empty.yaml").write_text("")
    (work / "garbage.safetensors").write_bytes(b"not a checkpoint\n")
    (work / "bad.yaml").write_text("gates: [1, 2\n")


# The child: runs every case in turn through robustcli.cli.main and snapshots the folder.
_DRIVER = r"""
import contextlib, hashlib, io, json, os, sys, traceback
from pathlib import Path

from robustcli.cli import main

def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out

cases = json.loads(sys.stdin.read())
work = Path.cwd()
for case_id, argv in cases:
    before = snapshot(work)
    sys.argv = ["robust", *argv]
    out, err = io.StringIO(), io.StringIO()
    code = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = "raised"
    after = snapshot(work)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    record = {"id": case_id, "code": code, "stderr": err.getvalue(), "changed": changed}
    print(json.dumps(record), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("bad-inputs")
    _fixtures(work)
    cache = tmp_path_factory.mktemp("cache")
    env = {
        **os.environ,
        "ROBUSTCLI_CACHE": str(cache),
        "COLUMNS": "80",  # a narrow terminal: a wrapped error would show as two lines
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("GITHUB_STEP_SUMMARY", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _DRIVER],
            input=json.dumps([[cid, argv] for cid, argv, _ in CASES]),
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:  # a case that started real work: keep the others
        stdout, stderr = (
            (v.decode() if isinstance(v, bytes) else v or "") for v in (exc.stdout, exc.stderr)
        )
    records = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            records[rec["id"]] = rec
    assert records, f"the driver produced nothing: {stderr[-3000:]}"
    return records


@pytest.mark.parametrize(("case_id", "argv", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(outcomes, case_id, argv, pattern):
    import re

    rec = outcomes.get(case_id)
    assert rec is not None, f"robust {' '.join(argv)}: the driver died before this case"
    err = rec["stderr"]
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rec["code"] == 2, f"robust {' '.join(argv)}: exit {rec['code']}, stderr: {err}"
    assert len(lines) == 1, f"robust {' '.join(argv)}: {len(lines)} stderr lines: {err}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0], re.IGNORECASE), lines[0]
    assert rec["changed"] == [], f"robust {' '.join(argv)} changed {rec['changed']}"


def test_driver_hashes_catch_a_change(tmp_path):
    """The snapshot the driver compares is sensitive to one changed byte and to a new file."""
    ns: dict = {}
    exec(_DRIVER.split("cases = json.loads")[0].replace("from robustcli.cli import main", ""), ns)
    (tmp_path / "a").write_bytes(b"x")
    before = ns["snapshot"](tmp_path)
    (tmp_path / "a").write_bytes(b"y")
    (tmp_path / "b").mkdir()
    after = ns["snapshot"](tmp_path)
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {
        "a",
        "b/",
    }
    assert hashlib.sha256(b"y").hexdigest() == after["a"]


def test_the_installed_entry_point_behaves_as_the_driver(tmp_path):
    """One case through the real `robust` script, to keep the in-process driver honest."""
    robust = Path(sys.executable).parent / "robust"
    if not robust.exists():
        pytest.skip("no robust script beside this Python")
    proc = subprocess.run(
        [str(robust), "explain", "model.safetensors", "--images", "-5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ") and "--images -5 is out of range" in line
    assert list(tmp_path.iterdir()) == []
