"""The training loop: learning, bit-exact resume, run folders, recipes, the CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from robustcli.checkpoint import load_checkpoint, load_training_state
from robustcli.cli import app
from robustcli.errors import ModelNotFoundError, OutputExistsError, RobustError
from robustcli.train import (
    RECIPES,
    describe_recipes,
    get_recipe,
    learning_rate,
    milestone_epochs,
    recipe_names,
    train,
)
from robustcli.train.config import check_resume_args, resolve_hyperparameters

# A tiny, fast setting: ResNet-20 on 8x8 grey digits (the network is fully convolutional).
TINY = dict(
    dataset="digits",
    batch_size=32,
    train_limit=256,
    test_limit=64,
    model_overrides={"in_channels": 1},
    input_shape=(1, 8, 8),
    precision="fp32",
    progress="none",
)


@pytest.fixture(autouse=True)
def one_thread():
    # Small convolutions gain nothing from a second thread, and lose a lot when the cores are
    # shared with other work; restore the setting for the rest of the suite.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_learns_digits_well_above_chance():
    """ResNet-20 on the embedded digits (grey replicated to 3 x 8 x 8), 3 epochs of the fast
    recipe: test accuracy on the 364 held-out digits must be >= 80% (chance: 10%)."""
    result = train(
        "resnet20",
        dataset="digits",
        epochs=3,
        input_shape=(3, 8, 8),
        progress="none",
    )
    assert result.metrics["test_acc"] >= 0.80, result.history
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.config["input"]["channels"] == "replicate"
    assert not result.model.training


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, precision):
    if precision == "bf16":
        from robustcli.runtime import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            pytest.skip("this CPU has no native bf16")
    kw = {**TINY, "precision": precision, "epochs": 3, "seed": 7}
    full = train("resnet20", out=tmp_path / "full", **kw)

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # what Ctrl-C does, right after the epoch checkpoint

    with pytest.raises(KeyboardInterrupt):
        train("resnet20", out=tmp_path / "cut", callbacks=[stop_after_first], **kw)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    _, state = load_training_state(tmp_path / "cut" / "last.safetensors")
    assert state["epoch"] == 1

    resumed = train("resnet20", out=tmp_path / "cut", resume=True, progress="none")
    assert resumed.resumed_from_epoch == 1
    a = _tensors(tmp_path / "full" / "model.safetensors")
    b = _tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    for ra, rb in zip(full.history, resumed.history, strict=True):
        assert ra["train_loss"] == rb["train_loss"] and ra["test_acc"] == rb["test_acc"]


def test_a_run_saved_on_another_device_type_resumes_with_a_derived_batch_stream(tmp_path, capsys):
    """A CUDA generator's state (16 bytes) does not fit a CPU generator: a run cut on a GPU and
    resumed on a CPU (or the reverse) continues with batches drawn from a seed derived from the
    saved state and epoch, says so in its first log line, and is the same on every resume."""
    from robustcli.checkpoint.state import save_training_state

    kw = {**TINY, "precision": "fp32", "epochs": 3, "seed": 7}

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("resnet20", out=tmp_path / "cut", callbacks=[stop_after_first], **kw)
    tensors, state = load_training_state(tmp_path / "cut" / "last.safetensors")
    # what a CUDA generator's get_state() holds (seed and offset), in place of the CPU one
    tensors["rng/data"] = torch.arange(16, dtype=torch.uint8)
    save_training_state(tmp_path / "cut" / "last.safetensors", tensors, state)
    shutil.copytree(tmp_path / "cut", tmp_path / "again")

    capsys.readouterr()
    first = train("resnet20", out=tmp_path / "cut", resume=True, progress="plain")
    out = capsys.readouterr()
    log = (out.err + out.out).splitlines()
    train("resnet20", out=tmp_path / "again", resume=True, progress="none")
    assert first.resumed_from_epoch == 1 and len(first.history) == 3
    assert "resuming after epoch 1 (the batch order was saved on another device type: " in log[0]
    assert "epochs 2+ draw their batches on cpu from a seed derived from it)" in log[0]
    a = _tensors(tmp_path / "cut" / "model.safetensors")
    b = _tensors(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "two resumes of one checkpoint differ"


def test_run_folder_contents_and_metadata(tmp_path):
    out = tmp_path / "run"
    result = train("resnet20", out=out, epochs=2, seed=3, **TINY)
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "last.safetensors",
        "metrics.csv",
        "config.json",
        "result.json",
    }
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["test_acc"]) == pytest.approx(result.metrics["test_acc"], abs=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["hyperparameters"]["recipe"] == "fast" and config["seed"] == 3

    ckpt = load_checkpoint(out / "model.safetensors")
    assert ckpt.name == "resnet20" and ckpt.dataset == "digits"
    assert ckpt.config["in_channels"] == 1
    assert ckpt.mean == (0.30546,) and ckpt.std == (0.37609,)
    meta = ckpt.meta
    assert meta["recipe"] == "fast" and meta["epochs"] == 2 and meta["seed"] == 3
    assert meta["metrics"]["test_acc"] == pytest.approx(result.metrics["test_acc"])
    assert meta["versions"]["torch"] == torch.__version__ and "robustcli" in meta["versions"]
    assert "git_commit" in meta and meta["hyperparameters"]["batch_size"] == 32
    assert meta["classes"] == [str(i) for i in range(10)]
    # the rebuilt (NCHW) model gives the trained (channels-last) model's outputs
    from robustcli.data import load_dataset

    x = ckpt.prepare(load_dataset("digits", "test")[0][:8])
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), result.model(x), rtol=1e-4, atol=1e-4)
    result_json = json.loads((out / "result.json").read_text())
    assert result_json["schema"] == "robustcli-result" and result_json["kind"] == "train"


def test_existing_run_folder_needs_force(tmp_path):
    out = tmp_path / "run"
    train("resnet20", out=out, epochs=1, **TINY)
    with pytest.raises(OutputExistsError, match="--force"):
        train("resnet20", out=out, epochs=1, **TINY)
    train("resnet20", out=out, epochs=1, force=True, **TINY)
    with pytest.raises(RobustError, match="--lr 0.5 differs"):
        train("resnet20", out=out, resume=True, lr=0.5, progress="none")
    with pytest.raises(RobustError, match="nothing to resume"):
        train("resnet20", out=tmp_path / "new", resume=True, progress="none")


def test_unknown_model_and_recipe():
    with pytest.raises(ModelNotFoundError, match="did you mean resnet20"):
        train("resnet21", **TINY)
    with pytest.raises(RobustError, match="unknown recipe"):
        train("resnet20", recipe="sota", **TINY)


def test_recipes_match_their_sources():
    s = get_recipe("strisciuglio")
    assert (s.batch_size, s.epochs, s.lr, s.nesterov, s.weight_decay) == (128, 160, 0.1, True, 1e-4)
    assert milestone_epochs(s.milestones, s.epochs) == [80, 120]
    a = get_recipe("ranabhat2025")
    assert (a.batch_size, a.epochs) == (2048, 120)
    assert milestone_epochs(a.milestones, a.epochs) == [80, 120]
    t = get_recipe("topdown", "cifar10")
    assert milestone_epochs(t.milestones, t.epochs) == [50, 80] and t.augment == "none"
    assert get_recipe("topdown", "mnist").epochs == 30
    assert recipe_names() == ["fast", "ranabhat2025", "strisciuglio", "topdown"]
    assert set(RECIPES) == {"fast", "ranabhat2025", "strisciuglio", "topdown", "paper-a"}


def test_old_recipe_names_are_aliases():
    """``paper-a`` (the name before ranabhat2025) still works, and records the current name."""
    assert get_recipe("paper-a") is get_recipe("ranabhat2025")
    assert get_recipe("paper-a", "cifar10") == get_recipe("ranabhat2025", "cifar10")
    assert "paper-a" in RECIPES  # what a study file's `recipe:` is checked against
    assert "ranabhat2025 (was paper-a)" in describe_recipes()
    with pytest.raises(RobustError, match="choose one of fast, ranabhat2025, strisciuglio, topd"):
        get_recipe("paper-c")
    hp = resolve_hyperparameters("paper-a", "digits", {"epochs": 3})
    assert hp["recipe"] == "ranabhat2025" and hp["milestone_epochs"] == [2, 3]
    # a run saved under either name resumes with either name; another recipe is refused
    for saved, given in (("paper-a", "ranabhat2025"), ("ranabhat2025", "paper-a")):
        check_resume_args({"hyperparameters": {"recipe": saved}}, {"recipe": given})
    with pytest.raises(RobustError, match="--recipe fast differs"):
        check_resume_args({"hyperparameters": {"recipe": "paper-a"}}, {"recipe": "fast"})


@pytest.mark.parametrize(
    ("milestones", "epochs", "expected"),
    [
        ((0.5, 0.8), 3, [1, 2]),  # was [2, 2]: a 100x drop in one step
        ((0.5, 0.8), 4, [2, 3]),
        ((0.5, 0.8), 12, [6, 10]),
        ((0.5, 0.8), 30, [15, 24]),
        ((0.1, 0.2), 3, [1, 2]),  # both round to the first epoch: spread out
        ((80 / 120, 1.0), 3, [2, 3]),  # a drop at the very end stays there (never reached)
        ((0.9, 0.95), 5, [3, 4]),  # both round to the last epoch: pulled inside the run
    ],
)
def test_short_runs_keep_learning_rate_drops_distinct(milestones, epochs, expected):
    got = milestone_epochs(milestones, epochs)
    assert got == expected
    inside = [m for m, f in zip(got, milestones, strict=True) if f < 1]
    assert inside == sorted(set(inside)) and all(1 <= m < epochs for m in inside)


def test_a_run_too_short_for_its_drops_is_refused():
    with pytest.raises(RobustError, match="--epochs 2 is too short"):
        milestone_epochs((0.5, 0.8), 2)
    assert milestone_epochs((0.5,), 2) == [1]


def test_schedules():
    hp = {"lr": 0.1, "schedule": "step", "gamma": 0.1, "milestone_epochs": [2, 3], "warmup": 0}
    lrs = [learning_rate(hp, s, 10, 4) for s in range(0, 40, 10)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])
    one = {"lr": 0.2, "schedule": "onecycle", "warmup": 0.25}
    curve = [learning_rate(one, s, 10, 4) for s in range(40)]
    assert max(curve) == pytest.approx(0.2) and curve.index(max(curve)) == 9
    assert curve[0] < 0.05 and curve[-1] < 0.01
    cos = {"lr": 1.0, "schedule": "cosine", "warmup": 0}
    assert learning_rate(cos, 0, 10, 1) == 1.0
    assert learning_rate(cos, 5, 10, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_cli_trains_the_embedded_default_and_refuses_reuse(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-run"
    args = ["train", "--model", "resnet20", "--epochs", "1", "--batch-size", "256"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    # plain progress lines on stderr (not a terminal), the result line alone on stdout
    assert "epoch 1/1" in res.stderr and "resize 8x8 -> 32x32" in res.stderr
    assert res.stdout.startswith("done in ") and len(res.stdout.splitlines()) == 1
    assert load_checkpoint(out).input.target_shape == (3, 32, 32)
    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_unknown_model_is_one_line():
    res = CliRunner().invoke(app, ["train", "--model", "pp-resnet2"])
    assert res.exit_code == 2
    assert "did you mean" in res.output and "Traceback" not in res.output


KILL_SCRIPT = """
import pathlib, sys, time, torch
import robustcli.train as T
import robustcli.train.loop as L
torch.set_num_threads(1)
kw = {kw!r}
schedule = L.learning_rate
def stall(hp, step, spe, epochs):  # called inside each step: stall half-way through epoch 2
    if step == spe + spe // 2:
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(60)
    return schedule(hp, step, spe, epochs)
L.learning_rate = stall  # the loop looks the schedule up in its own module
T.train("resnet20", out=sys.argv[1], **kw)
"""


def test_resume_after_kill_9_equals_uninterrupted(tmp_path, child_env):
    """A separate process is SIGKILLed in the middle of a step of epoch 2 (its data order drawn,
    half of its updates done); resuming here from the epoch-1 checkpoint gives bit-for-bit the
    weights of an uninterrupted run (same seed, CPU, one thread)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    kw = {**TINY, "epochs": 2, "seed": 11}
    script = tmp_path / "victim.py"
    script.write_text(KILL_SCRIPT.format(kw=kw))
    out = tmp_path / "killed"
    in_step = tmp_path / "in-step"
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(in_step)], env=child_env)
    try:
        deadline = time.time() + 120
        while not in_step.exists() and time.time() < deadline:
            assert proc.poll() is None, "training process died early"
            time.sleep(0.1)
        with pytest.raises(RobustError, match=f"in use .*pid {proc.pid}"):  # the run is locked
            train("resnet20", out=out, resume=True, progress="none")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()
    resumed = train("resnet20", out=out, resume=True, progress="none")
    assert resumed.resumed_from_epoch == 1
    full = train("resnet20", out=tmp_path / "full", **kw)
    a = _tensors(tmp_path / "full" / "model.safetensors")
    b = _tensors(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert full.history[-1]["train_loss"] == resumed.history[-1]["train_loss"]


@pytest.mark.parametrize(
    ("mode", "mean", "std"), [("none", (0.0,), (1.0,)), ("mean", (0.30546,), (1.0,))]
)
def test_normalize_is_stored_and_feeds_the_model(tmp_path, mode, mean, std):
    out = tmp_path / "run"
    train("bu-lenetfc", out=out, epochs=1, normalize=mode, **TINY)
    ckpt = load_checkpoint(out / "model.safetensors")
    assert ckpt.mean == mean and ckpt.std == std
    x = torch.full((1, 1, 28, 28), 128, dtype=torch.uint8)
    assert ckpt.prepare(x).flatten()[0].item() == pytest.approx((128 / 255 - mean[0]) / std[0])
    config = json.loads((out / "config.json").read_text())
    assert config["normalization"]["mode"] == mode
    with pytest.raises(RobustError, match="--normalize dataset differs"):
        train("bu-lenetfc", out=out, epochs=1, normalize="dataset", resume=True, **TINY)


def test_unknown_normalize_is_refused_before_anything_is_written(tmp_path):
    res = CliRunner().invoke(
        app, ["train", "-m", "bu-lenetfc", "--normalize", "std", "-o", str(tmp_path / "r")]
    )
    assert res.exit_code == 2 and "--normalize 'std' is unknown" in res.output
    assert not (tmp_path / "r").exists()


def test_plain_progress_speaks_within_long_epochs_at_most_once_per_interval():
    import io

    from robustcli.train.report import _Plain

    now = [0.0]
    out = io.StringIO()
    rep = _Plain(out, interval=60.0, clock=lambda: now[0])
    rep.start("header", total_steps=100, done_steps=20)  # resumed at step 20
    stats = {"loss": 1.5, "acc": 0.25, "images_per_s": 80.0}
    for t, done in ((30.0, 25), (59.9, 30), (60.0, 35), (100.0, 40), (120.0, 45)):
        now[0] = t
        rep.step(1, 4, done, stats)
    lines = out.getvalue().splitlines()
    assert lines[0] == "header"
    # t=60: 15 steps in 60 s since the start, 65 to go -> eta 260 s; t=120: 25 in 120 s, 55 left
    assert lines[1:] == [
        "epoch 1/4 | step 35/100 | loss 1.5000 acc 25.00% | 80 img/s | eta 4:20",
        "epoch 1/4 | step 45/100 | loss 1.5000 acc 25.00% | 80 img/s | eta 4:24",
    ]


def test_epoch_eta_counts_only_this_process_after_a_resume():
    """A run resumed after epoch 1 of 4, whose first epoch ran elsewhere in 1,000 s: the epoch
    line's eta is this process's 50 s per epoch times the 2 epochs left, not the run's mean."""
    import io

    from robustcli.train.report import _Plain

    now = [0.0]
    out = io.StringIO()
    rep = _Plain(out, clock=lambda: now[0])
    rep.start("header", total_steps=100, done_steps=25)  # 25 steps per epoch: after epoch 1
    row = {"epoch": 2, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_acc": math.nan}
    now[0] = 50.0
    rep.epoch({**row, "images_per_s": 10.0, "epoch_s": 48.0, "elapsed_s": 1050.0}, 4)
    assert out.getvalue().splitlines()[-1].endswith("| 48.0 s | eta 1:40")
    fresh = _Plain(out, clock=lambda: now[0])
    now[0] = 0.0
    fresh.start("header", total_steps=100, done_steps=0)
    now[0] = 30.0
    fresh.epoch({**row, "epoch": 1, "images_per_s": 10.0, "epoch_s": 30.0, "elapsed_s": 30.0}, 4)
    assert out.getvalue().splitlines()[-1].endswith("| 30.0 s | eta 1:30")
