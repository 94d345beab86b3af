"""`robust study`: schema, grid, cache rule and resume, executors (local, spawned workers, Ray),
report and gates, and every shipped study's smoke profile end to end (embedded digits)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from robustcli.cli import app
from robustcli.errors import RobustError
from robustcli.study import build_plan, build_report, expand_grid, load_study, run_study
from robustcli.study.executors import check_executor
from robustcli.study.schema import StudyError

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
ROBUST = Path(sys.executable).with_name("robust")

#: Two RGB models x two override sets, one seed: train, eval-c, attack (pp vs its plain twin).
TINY = {
    "version": 1,
    "name": "tiny",
    "dataset": "digits",
    "grid": {
        "models": ["resnet20", {"model": "pp-resnet20", "label": "PP"}],
        "seeds": [0],
        "overrides": {"base": {}, "lowlr": {"lr": 0.01}},
    },
    "steps": {
        "train": {"recipe": "fast", "epochs": 1, "train_limit": 32, "test_limit": 16},
        "eval-c": {"corruptions": ["gaussian_noise"], "severities": [2], "n": 8},
        "attack": {
            "attacks": ["contrast"],
            "n": 4,
            "repeats": 1,
            "params": {"contrast": {"binary_search_steps": 3}},
            "vs": {"pp-resnet20": "resnet20"},
        },
    },
    "resources": {"default": {"cpus": 1}},
    "paper": {"source": "a test paper, Table 9", "values": {"pp-resnet20": {"clean_acc": 50.0}}},
}

# keys whose values change from one run to the next (times, hosts, file hashes that cover them)
VOLATILE = re.compile(
    r"(started|created|finished|seconds|wall_time_s|per_s|_s$|sha256|command|host|pid|units)"
)


def write_study(folder: Path, doc: dict, name: str = "s.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def normalized(path: Path, root: Path) -> object:
    def norm(obj: object) -> object:
        if isinstance(obj, dict):
            return {k: norm(v) for k, v in obj.items() if not VOLATILE.search(k)}
        if isinstance(obj, list):
            return [norm(v) for v in obj]
        if isinstance(obj, str):
            return obj.replace(str(root.resolve()), "<OUT>").replace(str(root), "<OUT>")
        return obj

    return norm(json.loads(path.read_text()))


def result_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.json"))


def assert_same_results(a: Path, b: Path, a_root: Path | None = None) -> None:
    """Every JSON of study folder ``a`` equals ``b``'s up to times, hosts and paths (``a_root``:
    the folder ``a``'s results name, when ``a`` is a copy), and the trained weights are
    bit-identical."""
    from safetensors.torch import load_file

    assert result_files(a) == result_files(b)
    for rel in result_files(a):
        assert normalized(a / rel, a_root or a) == normalized(b / rel, b), rel
    for ck in sorted(a.rglob("model.safetensors")):
        x, y = load_file(ck), load_file(b / ck.relative_to(a))
        assert x.keys() == y.keys()
        assert all(bool((x[k] == y[k]).all()) for k in x), ck


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("report.") and p.name != "study.json"
    }


@pytest.fixture
def one_thread():
    """Steps run with one torch thread (as one Ray task with num_cpus=1); restored after."""
    import torch

    n, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    yield 1
    torch.set_num_threads(n)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def tiny_done(tmp_path_factory):
    """The tiny study run once, locally; tests copy the folder before changing anything."""
    import torch

    root = tmp_path_factory.mktemp("tiny")
    spec = write_study(root, TINY)
    out = root / "out"
    n, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        result = run_study(build_plan(load_study(spec), out), threads=1)
    finally:
        torch.set_num_threads(n)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
    return spec, out, result


def copy_done(tiny_done, tmp_path: Path) -> tuple[Path, Path]:
    spec, out, _ = tiny_done
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return spec, dst


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_validate_with_every_profile(path):
    base = load_study(path)
    assert base["version"] == 1 and "smoke" in base["profiles"]
    for prof in base["profiles"]:
        study = load_study(path, prof)
        assert study["profile"] == prof and expand_grid(study)
    smoke = load_study(path, "smoke")
    assert smoke["dataset"] == "digits" and smoke["grid"]["seeds"] == [0]
    if path.stem.startswith("ranabhat2025"):
        assert "paper A" in base["paper"]["source"] and base["paper"]["values"]


# The paper's printed Table 1 averages that are not the means of its own per-corruption rows
# (checked by hand against the paper's text); any other mismatch is a transcription error.
PAPER_A_MISPRINTS = {
    ("ppattn-gelu-resnet20", "avg_noise_4"),
    ("ppattn-gelu-resnet20", "avg_blur_5"),
    ("mspp-resnet20", "avg_noise_4"),
    ("mspp-resnet20", "mean_all_19"),
    ("pp-densenet40", "avg_blur_5"),
    ("pp-densenet40", "mean_all_19"),
    ("mspp-densenet40", "avg_noise_4"),
}


@pytest.mark.parametrize("arch", ["resnet20", "densenet40"])
def test_paper_a_table1_values_agree_with_their_own_averages(arch):
    from robustcli.corruptions.generate import CORRUPTIONS

    study = load_study(ROOT / "studies" / f"ranabhat2025-table1-{arch}.yaml")
    parts = {k: [p.split(":", 1)[1] for p in v] for k, v in study["report"]["derived"].items()}
    parts["mean_all_19"] = CORRUPTIONS
    with_rows = {m: v for m, v in study["paper"]["values"].items() if "corruption:fog" in v}
    assert len(with_rows) == 5  # Table 1's five columns per backbone (SimAM is Table 3)
    off = set()
    for model, v in with_rows.items():
        assert {k for k in v if k.startswith("corruption:")} == {
            f"corruption:{c}" for c in CORRUPTIONS
        }
        for name, names in parts.items():
            rows = sum(v[f"corruption:{c}"] for c in names) / len(names)
            if abs(rows - v[name]) > 0.05:
                off.add((model, name))
    assert off == {k for k in PAPER_A_MISPRINTS if k[0].endswith(arch)}


def _with(change: dict) -> dict:
    doc = copy.deepcopy(TINY)
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = doc
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return doc


BAD = [
    ({"grid.seeds": [0, 1, "a"]}, "grid.seeds[2]: expected an integer >= 0, got 'a'"),
    ({"grid.models": ["resnet20", "nope"]}, "grid.models[1]: unknown model 'nope'"),
    ({"stepz": {}}, "stepz: unknown key (did you mean 'steps'?"),
    ({"version": 2}, "version: version 2 is not supported: this robustcli reads version 1"),
    ({"version": KeyError}, "version: missing: add `version: 1`"),
    ({"steps.train.lr": -1}, "steps.train.lr: expected a number > 0, got -1"),
    ({"steps.train.recipe": "slow"}, "steps.train.recipe: unknown value 'slow'"),
    ({"steps.eval-c.severities": [7]}, "steps.eval-c.severities: "),
    ({"steps.attack.vs": {"pp-resnet20": "bu-lenetfc"}}, "steps.attack.vs.pp-resnet20: partner"),
    ({"steps.attack.params": {"contrast": {"nope": 1}}}, "steps.attack.params: "),
    ({"grid.models": ["bu-lenetfc"]}, "steps.eval-c: CIFAR-10-C corruptions need RGB models"),
    ({"profiles": {"smoke": {"grid": {"seeds": [-1]}}}}, "profiles.smoke.grid.seeds[0]: "),
    (
        {"profiles": {"smoke": {"steps": {"train": {"epoch": 1}}}}},
        "profiles.smoke.steps.train.epoch",
    ),
]


@pytest.mark.parametrize("change,expected", BAD, ids=[e.split(":")[0] for _, e in BAD])
def test_bad_study_is_one_line_naming_the_key(tmp_path, change, expected):
    spec = write_study(tmp_path, _with(change))
    with pytest.raises(StudyError) as exc:
        load_study(spec)
    msg = str(exc.value)
    assert msg.startswith(f"{spec}: ") and "\n" not in msg
    assert expected in msg


def test_cli_bad_input_exit_2_one_line_nothing_written(tmp_path):
    spec = write_study(tmp_path, _with({"grid.seeds": [0, "x"]}))
    out = tmp_path / "out"
    for args in (
        [str(spec)],  # a bad key
        [str(write_study(tmp_path, TINY, "ok.yaml")), "--profile", "nope"],
        [str(spec), "--executor", "slurm"],
    ):
        p = subprocess.run(
            [str(ROBUST), "study", *args, "--out", str(out)], capture_output=True, text=True
        )
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
        assert "Traceback" not in p.stderr
        if args[0] == str(spec) and len(args) == 1:
            assert "grid.seeds[1]: expected an integer" in lines[0]
    assert not out.exists()


def test_ray_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RobustError, match=r"pip install 'robustcli\[ray\]'"):
        check_executor("ray")


# --------------------------------------------------------------------------------------------
# Grid and plan
# --------------------------------------------------------------------------------------------


def test_grid_expansion_and_step_dependencies(tmp_path):
    doc = _with({"grid.seeds": [0, 3]})
    doc["grid"]["overrides"]["lowlr"]["pp"] = {"alpha": 2}
    study = load_study(write_study(tmp_path, doc))
    runs = expand_grid(study)
    assert [r.id for r in runs] == [
        "resnet20-base-s0",
        "resnet20-base-s3",
        "resnet20-lowlr-s0",
        "resnet20-lowlr-s3",
        "pp-resnet20-base-s0",
        "pp-resnet20-base-s3",
        "pp-resnet20-lowlr-s0",
        "pp-resnet20-lowlr-s3",
    ]
    low = next(r for r in runs if r.id == "pp-resnet20-lowlr-s3")
    assert low.train["lr"] == 0.01 and low.train["epochs"] == 1 and low.train["pp"] == {"alpha": 2}
    assert low.row == "PP [lowlr]" and low.seed == 3
    plan = build_plan(study, tmp_path / "out")
    kinds = [s.kind for s in plan.steps]
    assert kinds.count("train") == 8 and kinds.count("eval-c") == 8
    attacks = [s for s in plan.steps if s.kind == "attack"]
    # the plain model is attacked beside its push-pull twin of the same seed, not alone
    assert [s.run for s in attacks] == [
        "pp-resnet20-base-s0",
        "pp-resnet20-base-s3",
        "pp-resnet20-lowlr-s0",
        "pp-resnet20-lowlr-s3",
    ]
    assert attacks[3].deps == ["pp-resnet20-lowlr-s3/train", "resnet20-lowlr-s3/train"]
    assert len({s.hash for s in plan.steps}) == len(plan.steps)
    assert all(s.status == "pending" for s in plan.steps)
    # where the data lies is not part of a step's identity
    moved = dict(study, data_dir="/elsewhere")
    assert [s.hash for s in build_plan(moved, tmp_path / "out").steps] == [
        s.hash for s in plan.steps
    ]


# --------------------------------------------------------------------------------------------
# Running, cache, resume
# --------------------------------------------------------------------------------------------


def test_run_writes_every_result_and_a_report(tiny_done):
    spec, out, result = tiny_done
    plan = result["plan"]
    assert len(result["ran"]) == len(plan.steps) == 10
    assert all(s.status == "done" for s in plan.steps)
    for s in plan.steps:
        stamp = json.loads((out / s.stamp).read_text())
        assert stamp["hash"] == s.hash and (out / s.result).is_file()
    for name in ("report.md", "report.csv", "report.json", "report.png", "study.json"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in rows] == [
        "resnet20 [base]",
        "resnet20 [lowlr]",
        "PP [base]",
        "PP [lowlr]",
    ]
    pp = rows[2]
    assert pp["clean_acc (paper)"] == 50.0 and pp["seeds"] == 1
    assert 0 <= pp["clean_acc"] <= 100 and 0 <= pp["attack:contrast:auc"] <= 100
    # the plain twin's attack numbers come from the attack step that ran beside PP
    assert rows[0]["attack:contrast:auc"] is not None


def test_rerun_redoes_nothing_and_a_lost_result_is_redone_alone(tiny_done, tmp_path, one_thread):
    spec, out = copy_done(tiny_done, tmp_path)
    before = snapshot(out)
    again = run_study(build_plan(load_study(spec), out), threads=one_thread)
    assert again["ran"] == []
    assert snapshot(out) == before
    lost = out / "runs" / "resnet20-lowlr-s0"
    first = tiny_done[1]  # the results of the copy still name the original folder
    kept = normalized(first / "runs" / "resnet20-lowlr-s0" / "eval-c.json", first)
    (lost / "eval-c.json").unlink()
    third = run_study(build_plan(load_study(spec), out), threads=one_thread)
    assert third["ran"] == ["resnet20-lowlr-s0/eval-c"]
    assert normalized(lost / "eval-c.json", out) == kept
    after = snapshot(out)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == {
        "runs/resnet20-lowlr-s0/eval-c.json",
        "runs/resnet20-lowlr-s0/eval-c.csv",
        "runs/resnet20-lowlr-s0/eval-c.step.json",
    }


def test_changed_override_reruns_only_its_runs(tiny_done, tmp_path, one_thread):
    _, out = copy_done(tiny_done, tmp_path)
    spec = write_study(tmp_path, _with({"grid.overrides": {"base": {}, "lowlr": {"lr": 0.02}}}))
    before = snapshot(out)
    result = run_study(build_plan(load_study(spec), out), threads=one_thread)
    assert sorted(result["ran"]) == sorted(
        [
            "resnet20-lowlr-s0/train",
            "pp-resnet20-lowlr-s0/train",
            "resnet20-lowlr-s0/eval-c",
            "pp-resnet20-lowlr-s0/eval-c",
            "pp-resnet20-lowlr-s0/attack",
        ]
    )
    after = snapshot(out)
    assert {k: v for k, v in after.items() if "-base-" in k} == {
        k: v for k, v in before.items() if "-base-" in k
    }


def test_killed_study_resumes_where_it_stopped(tmp_path, one_thread):
    spec = write_study(tmp_path, _with({"grid.seeds": [0, 1]}))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(ROBUST), "study", str(spec), "--out", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 60
    while not list(out.glob("runs/*/*.step.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stamped = {
        p.parent.name + "/" + p.name.removesuffix(".step.json")
        for p in out.glob("runs/*/*.step.json")
    }
    assert stamped, "the study was killed before its first step finished"
    before = snapshot(out)
    plan = build_plan(load_study(spec), out)
    assert {s.key for s in plan.steps if s.status == "done"} == stamped
    result = run_study(plan, threads=one_thread)
    assert not stamped & set(result["ran"])  # nothing that was done is done again
    assert all(s.status == "done" for s in result["plan"].steps)
    after = snapshot(out)
    for key in before:
        if key.endswith(".step.json"):
            assert after[key] == before[key]


def test_dry_run_shows_cached_steps_and_measured_estimates(tiny_done, tmp_path):
    _, out = copy_done(tiny_done, tmp_path)
    spec = write_study(tmp_path, _with({"grid.seeds": [0, 1]}))
    before = snapshot(out)
    res = CliRunner().invoke(
        app, ["study", str(spec), "--out", str(out), "--dry-run", "--format", "csv"]
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "run,step,status,hash,estimate"
    rows = [ln.split(",") for ln in lines[1:]]
    assert len(rows) == 20
    seed0 = [r for r in rows if r[0].endswith("-s0")]
    seed1 = [r for r in rows if r[0].endswith("-s1")]
    assert all(r[2] == "cached" and r[4] == "-" for r in seed0)
    assert all(r[2] == "run (not run yet)" for r in seed1)
    # throughputs measured on seed 0 estimate seed 1
    assert all(re.fullmatch(r"\d+s|\d+m\d\ds", r[4]) for r in seed1), seed1
    assert "10 cached, 10 to run" in res.stderr and "estimated time" in res.stderr
    assert snapshot(out) == before  # a dry run writes nothing
    table = CliRunner().invoke(app, ["study", str(spec), "--out", str(out), "--dry-run"])
    assert "cached" in table.stdout and "20 steps: 10 cached, 10 to run" in table.stdout


def test_report_formats_and_gates(tiny_done, tmp_path):
    spec, out = copy_done(tiny_done, tmp_path)
    runner = CliRunner()
    md = runner.invoke(app, ["study", str(spec), "--out", str(out), "--report", "-f", "markdown"])
    assert md.exit_code == 0, md.output
    assert "| model | seeds |" in md.stdout and "clean_acc (paper)" in md.stdout
    assert "a test paper, Table 9" in md.stdout
    csv = runner.invoke(app, ["study", str(spec), "--out", str(out), "--report", "-f", "csv"])
    assert csv.stdout.splitlines()[0].startswith("model,seeds,train:test_acc,train:test_acc sd")
    fail = write_study(tmp_path, {"gates": {"clean_acc": {"max": 0}}}, "g1.yaml")
    ok = write_study(tmp_path, {"gates": {"clean_acc": {"min": 0}}}, "g2.yaml")
    res = runner.invoke(
        app, ["study", str(spec), "--out", str(out), "--report", "--gates", str(fail)]
    )
    assert res.exit_code == 1 and "gate:" in res.stderr
    res = runner.invoke(
        app, ["study", str(spec), "--out", str(out), "--report", "--gates", str(ok)]
    )
    assert res.exit_code == 0 and "gates passed" in res.stderr
    report = build_report(build_plan(load_study(spec), out))
    assert report.done == report.total == 10


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------


def test_parallel_workers_match_the_serial_run(tiny_done, tmp_path):
    _, out, _ = tiny_done
    # the base override set only: 2 trains in parallel, then their eval-c and the attack
    spec = write_study(tmp_path, _with({"grid.overrides": {"base": {}}}))
    par = tmp_path / "par"
    result = run_study(build_plan(load_study(spec), par), jobs=2, threads=1)
    assert len(result["ran"]) == 5
    serial = tmp_path / "serial"
    shutil.copytree(out, serial, ignore=shutil.ignore_patterns("*-lowlr-*", "report.*"))
    shutil.copy(par / "study.json", serial / "study.json")
    for p in par.glob("report.*"):
        shutil.copy(p, serial / p.name)
    assert_same_results(serial, par, a_root=out)


def test_ray_executor_matches_local(tiny_done, tmp_path):
    ray = pytest.importorskip("ray")
    spec, out, _ = tiny_done
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_study(build_plan(load_study(spec), tmp_path / "ray"), executor="ray")
    finally:
        ray.shutdown()
    assert len(result["ran"]) == 10
    assert_same_results(out, tmp_path / "ray")


# --------------------------------------------------------------------------------------------
# Shipped studies
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_smoke_profile_end_to_end(path, tmp_path, one_thread):
    study = load_study(path, "smoke")
    result = run_study(build_plan(study, tmp_path / "out"), threads=one_thread)
    plan = result["plan"]
    assert plan.steps and all(s.status == "done" for s in plan.steps)
    rows = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["model"] for r in rows] == [e["label"] for e in study["grid"]["models"]]
    assert all(r["seeds"] == 1 for r in rows)
    for step in plan.steps:  # eval-c's per_image option reaches the result document
        if step.kind == "eval-c":
            doc = json.loads((tmp_path / "out" / step.result).read_text())
            wanted = study["steps"]["eval-c"].get("per_image", False)
            assert ("per_image" in doc) == wanted
            if wanted:
                assert doc["per_image"]["n"] == doc["n_examples"]


def test_next_ready_finishes_runs_before_starting_new_ones():
    """The local executors' pick: a step whose dependencies are done, later stages first, then
    plan order; never more than the free slots. A study stopped at a deadline then holds whole
    runs (a trained and evaluated model) rather than only trained ones."""
    from robustcli.study.executors import next_ready
    from robustcli.study.plan import Step

    def step(run: str, kind: str, deps: tuple[str, ...] = ()) -> Step:
        return Step(run=run, kind=kind, config={}, hash="h", deps=list(deps))

    ta, tb, tc = step("a", "train"), step("b", "train"), step("c", "train")
    ea, eb = step("a", "eval-c", ("a/train",)), step("b", "eval-c", ("b/train",))
    vs = step("a", "attack", ("a/train", "b/train"))
    assert next_ready([ta, tb, tc, ea, eb, vs], set(), 2) == [ta, tb]
    assert next_ready([tb, tc, ea, eb, vs], {"a/train"}, 2) == [ea, tb]
    assert next_ready([tc, ea, eb, vs], {"a/train", "b/train"}, 3) == [vs, ea, eb]
    assert next_ready([tc, ea], {"a/train"}, 0) == []
