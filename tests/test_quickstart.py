"""End to end: `robust quickstart --fast` (the real pipeline on tiny settings) and the command
sequence of the GitHub Actions workflow in docs/ci.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from robustcli.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))


def test_quickstart_fast_end_to_end(tmp_path):
    out = tmp_path / "qs"
    res = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--fast"])
    assert res.exit_code == 0, res.output
    for rel in (
        "resnet20/result.json",
        "pp-resnet20/result.json",
        "resnet20-eval-c.json",
        "pp-resnet20-eval-c.json",
        "attack/attack.json",
        "compare.md",
        "compare.csv",
        "compare.png",
    ):
        assert (out / rel).is_file(), rel
    table = (out / "compare.md").read_text()
    assert table.startswith("| metric | resnet20 | pp-resnet20 |")
    for row in (
        "train:test_acc",
        "clean_acc",
        "corruptions_acc",
        "corruption:fog",
        "attack:ddn:median_l2",
        "attack:contrast:robust_acc@",
        "attack:worst-case:auc",
    ):
        assert f"| {row}" in table, row
    assert "corruption:gaussian_noise" in res.stdout  # the comparison is printed
    # the eval-c results are ordinary, loadable results
    ev = json.loads((out / "resnet20-eval-c.json").read_text())
    assert ev["kind"] == "eval-c" and ev["corruptions"] == [
        "gaussian_noise",
        "defocus_blur",
        "fog",
        "contrast",
    ]
    # refuses to overwrite without --force
    again = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--fast"])
    assert again.exit_code == 2 and "--force" in again.stderr


def _workflow() -> tuple[dict, dict]:
    text = (ROOT / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    docs = [yaml.safe_load(b) for b in blocks]
    workflow = next(d for d in docs if isinstance(d, dict) and "jobs" in d)
    gates = next(d for d in docs if isinstance(d, dict) and "gates" in d)
    return workflow, gates


def _tiny_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] = 25 * c  # a class cue
                Image.fromarray(img).save(folder / f"{i}.png")


def _run_steps(
    steps: list[str], cwd: Path, env: dict[str, str]
) -> list[subprocess.CompletedProcess]:
    done = []
    for script in steps:
        proc = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        done.append(proc)
        if proc.returncode != 0:
            break
        for line in Path(env["GITHUB_ENV"]).read_text().splitlines():  # as Actions does
            if "=" in line:
                key, value = line.split("=", 1)
                env[key] = value
    return done


def test_ci_workflow_commands(tmp_path):
    workflow, gates = _workflow()
    job = next(iter(workflow["jobs"].values()))
    steps = [s["run"] for s in job["steps"] if "run" in s and "robust " in s["run"]]
    assert [re.search(r"robust ([a-z-]+)", s).group(1) for s in steps] == [
        "train",
        "eval-c",
        "compare",
    ]
    work = tmp_path / "ci"
    work.mkdir()
    _tiny_imagefolder(work / "data")
    # the doc's clean-accuracy floor is for a trained model; this one saw 60 noise images
    gates["gates"]["clean_acc"] = {"min": 0}
    (work / "gates.yaml").write_text(yaml.safe_dump(gates))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **{k: str(v) for k, v in job["env"].items()}}
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        MODEL="resnet20",
        DATASET="imagefolder",
        DATA_DIR="data",
        EPOCHS="1",
        CORRUPTIONS="gaussian_noise,fog",
        SEVERITIES="1,5",
        N_EXAMPLES="30",
        GITHUB_ENV=str(work / "github_env"),
        GITHUB_STEP_SUMMARY=str(work / "summary.md"),
        ROBUSTCLI_CACHE=str(tmp_path / "cache"),
    )
    (work / "github_env").write_text("")
    # 1) the reference: train + eval-c, stored as the baseline
    procs = _run_steps(steps[:2], work, env)
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    (work / "baseline").mkdir()
    shutil.copy(work / "new.json", work / "baseline" / "eval-c.json")
    # 2) the gate step: same model -> passes, summary written
    [gate] = _run_steps(steps[2:], work, env)
    assert gate.returncode == 0, gate.stderr
    assert "gates passed" in gate.stderr
    assert "**Gates passed**" in (work / "summary.md").read_text()
    # 3) a baseline 5 points better on fog: the candidate regressed -> exit 1, one line each
    base = json.loads((work / "baseline" / "eval-c.json").read_text())
    base["per_corruption"]["fog"] += 5.0
    base["corruptions_acc"] += 2.5
    (work / "baseline" / "eval-c.json").write_text(json.dumps(base))
    [gate] = _run_steps(steps[2:], work, env)
    assert gate.returncode == 1, gate.stderr
    reasons = [ln for ln in gate.stderr.splitlines() if ln.startswith("gate:")]
    assert len(reasons) == 2
    assert any(
        ln.startswith("gate: corruptions_acc of resnet20 dropped 2.50 points") for ln in reasons
    )
    assert any(
        ln.startswith("gate: corruption:fog of resnet20 dropped 5.00 points") for ln in reasons
    )
    assert "**Gates failed**" in (work / "summary.md").read_text()
