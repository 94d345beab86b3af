"""Run folders under bad input (issue #12): --force, locks, leftovers, unwritable or full disks,
damaged configs, bad numbers, diverging training.

Every refused command must exit with code 2 and one line on stderr (no traceback) and leave the
output folder byte-identical. The CLI is driven through its real entry point
(``robustcli.cli:main``, what ``robust`` runs) in this process, except where a second process is
the point of the test.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustcli.checkpoint import load_training_state
from robustcli.errors import OutputExistsError, RobustError
from robustcli.io import check_output, file_sha256, output_lock, stale_tmp_files
from robustcli.train import TrainingDivergedError, describe_schedule, is_run_folder, train

TINY = dict(
    dataset="digits",
    batch_size=32,
    train_limit=128,
    test_limit=32,
    model_overrides={"in_channels": 1},
    input_shape=(1, 8, 8),
    precision="fp32",
    progress="none",
)
ROBUST = Path(sys.executable).with_name("robust")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch run folder; tests work on copies of it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    torch.set_num_threads(1)
    train("resnet20", out=out, epochs=1, seed=1, **TINY)
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def snapshot(folder: Path) -> dict[str, str] | None:
    """Every file's hash (and every folder) under ``folder``; None if it does not exist."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else file_sha256(p)
        for p in sorted(folder.rglob("*"))
    }


def hidden_leftovers(parent: Path) -> list[str]:
    """Staging folders, replaced runs and lock files left beside run folders."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def robust(capsys, *args: str) -> tuple[int, str, str]:
    """Run the `robust` entry point in this process: (exit code, stdout, stderr)."""
    from robustcli.cli import main

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["robust", *args])
        with pytest.raises(SystemExit) as exc:
            main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    # progress (the run's header, epoch lines) may precede it on stderr; the error is one line
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("training ", "epoch "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- --force ---------------------------------------------------------------------------------


def test_force_keeps_the_old_run_when_the_new_one_fails_before_its_first_checkpoint(
    run, capsys, tmp_path
):
    before = snapshot(run)
    missing = tmp_path / "no-such-data"
    code, _, err = robust(
        capsys, "train", "-m", "resnet20", "-d", "imagefolder", "--data-dir", str(missing),
        "--force", "-o", str(run),
    )  # fmt: skip
    assert_one_line_error(code, err)
    assert snapshot(run) == before
    assert hidden_leftovers(run.parent) == []  # no staging folder, no lock file


def test_force_replaces_a_run_and_keeps_files_it_did_not_write(run):
    (run / "notes.txt").write_text("my notes")
    (run / ".metrics.csv.abcd1234.tmp").write_text("left by a kill")  # ours: cleared
    result = train("resnet20", out=run, epochs=1, seed=5, force=True, **TINY)
    assert result.checkpoint == run / "model.safetensors"
    assert json.loads((run / "config.json").read_text())["seed"] == 5
    assert (run / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "last.safetensors",
        "metrics.csv",
        "model.safetensors",
        "notes.txt",
        "result.json",
    ]
    assert hidden_leftovers(run.parent) == []


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys, force):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"lr": 0.1}\n')  # the user's own files
    (mine / "metrics.csv").write_text("a,b\n1,2\n")
    before = snapshot(mine)
    args = ["train", "-m", "resnet20", "-o", str(mine)] + (["--force"] if force else [])
    code, _, err = robust(capsys, *args)
    assert_one_line_error(code, err, "not a robustcli run folder")
    assert snapshot(mine) == before
    assert not is_run_folder(mine)
    with pytest.raises(OutputExistsError, match="not a robustcli run folder"):
        train("resnet20", out=mine, epochs=1, force=True, **TINY)
    assert snapshot(mine) == before


def test_an_existing_run_needs_force(run, capsys):
    before = snapshot(run)
    code, _, err = robust(capsys, "train", "-m", "resnet20", "-o", str(run))
    assert_one_line_error(code, err, "already exists", "--force")
    assert snapshot(run) == before


# ---- locks and leftovers -------------------------------------------------------------------


def test_a_second_process_on_the_same_out_fails_at_once(run):
    before = snapshot(run)
    with output_lock(run):  # this process stands for a `robust train` that is still running
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(ROBUST), "train", "-m", "resnet20", "-o", str(run), "--resume"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - t0
    assert_one_line_error(proc.returncode, proc.stderr, "in use", f"pid {os.getpid()}")
    assert took < 60  # no waiting for the lock (the time is Python and torch starting)
    assert snapshot(run) == before
    assert hidden_leftovers(run.parent) == []  # the lock file goes with the lock


def test_output_lock_is_reentrant_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with output_lock(target) as lock_file, output_lock(target):
        assert lock_file.read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_a_killed_write_are_removed_on_resume(run):
    ours = [".last.safetensors.abcd1234.tmp", ".model.safetensors.zz9_zz9_.tmp"]
    theirs = ["notes.tmp", ".notes.txt.abcd1234.tmp", ".last.safetensors.tmp"]
    for name in ours + theirs:
        (run / name).write_text("x")
    assert sorted(p.name for p in stale_tmp_files(run)) == sorted(ours + [theirs[1]])
    train("resnet20", out=run, resume=True, progress="none")  # finished: only rewrites
    names = {p.name for p in run.iterdir()}
    assert not names & set(ours)
    assert set(theirs) <= names


def test_a_swap_cut_short_by_a_kill_is_undone_on_the_next_start(run):
    """Killed between `--out -> .old` and `.new -> --out`: the old run is put back and the
    unpublished new one (only files robust train writes) is removed."""
    before = snapshot(run)
    old = run.with_name(".run.abcd1234.old")
    run.rename(old)
    new = run.with_name(".run.wxyz5678.new")
    new.mkdir()
    (new / "config.json").write_text("{}")
    (new / ".last.safetensors.abcd1234.tmp").write_text("x")
    train("resnet20", out=run, resume=True, progress="none")  # finished: only rewrites
    assert hidden_leftovers(run.parent) == []
    after = snapshot(run)
    assert after.keys() == before.keys()
    assert after["last.safetensors"] == before["last.safetensors"]


# ---- unwritable output, full disk -----------------------------------------------------------


def test_read_only_out_is_refused_before_any_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        code, _, err = robust(capsys, "train", "-m", "resnet20", "-o", str(ro / "run"))
        assert_one_line_error(code, err, "not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """What a read-only file system or a foreign folder looks like (also to root)."""
    real_access = os.access
    denied = tmp_path / "ro"
    denied.mkdir()
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: Path(p) != denied and real_access(p, mode, **kw)
    )
    code, _, err = robust(capsys, "train", "-m", "resnet20", "-o", str(denied / "run"))
    assert_one_line_error(code, err, "not writable", str(denied))
    assert list(denied.iterdir()) == []
    with pytest.raises(RobustError, match="not writable"):  # what every other command checks
        check_output(denied / "result.json", force=False)


def test_disk_full_while_writing_is_one_line_and_keeps_the_old_run(run, capsys, monkeypatch):
    before = snapshot(run)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = robust(
        capsys, "train", "-m", "resnet20", "-e", "1", "-b", "512", "--force", "-o", str(run)
    )
    assert_one_line_error(code, err, "No space left on device", "config.json", "disk space")
    assert snapshot(run) == before
    assert hidden_leftovers(run.parent) == []


# ---- --resume with a damaged run -------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda b: b[: len(b) // 2], "not valid JSON"),
        (lambda b: b"[]\n", "not written by robust train"),
        (lambda b: b'{"schema": "robustcli-train-config"}\n', "incomplete"),
    ],
    ids=["truncated", "not-an-object", "incomplete"],
)
def test_resume_with_a_damaged_config_is_one_line(run, capsys, damage, needle):
    cfg = run / "config.json"
    cfg.write_bytes(damage(cfg.read_bytes()))
    before = snapshot(run)
    code, _, err = robust(capsys, "train", "-m", "resnet20", "--resume", "-o", str(run))
    assert_one_line_error(code, err, str(cfg), needle)
    assert snapshot(run) == before


def test_resume_with_a_truncated_state_is_one_line(run, capsys):
    state = run / "last.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    before = snapshot(run)
    code, _, err = robust(capsys, "train", "-m", "resnet20", "--resume", "-o", str(run))
    assert_one_line_error(code, err, "last.safetensors")
    assert snapshot(run) == before


# ---- numbers -----------------------------------------------------------------------------------

BAD_NUMBERS = [
    (["--lr", "nan"], dict(lr=float("nan"))),
    (["--lr", "1e30"], dict(lr=1e30)),
    (["-b", "0"], dict(batch_size=0)),
    (["--epochs", "0"], dict(epochs=0)),
    (["--seed", "-1"], dict(seed=-1)),
]


@pytest.mark.parametrize(("args", "kwargs"), BAD_NUMBERS, ids=lambda v: " ".join(map(str, v)))
def test_bad_numbers_are_one_line_usage_errors(tmp_path, capsys, args, kwargs):
    out = tmp_path / "run"
    code, _, err = robust(capsys, "train", "-m", "resnet20", "-o", str(out), *args)
    assert_one_line_error(code, err, args[0])
    with pytest.raises(RobustError, match="out of range"):  # Python callers too
        train("resnet20", out=out, **{**TINY, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_a_seed_too_large_for_numpy_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = robust(capsys, "train", "-m", "resnet20", "--seed", str(2**40), "-o", str(out))
    assert_one_line_error(code, err, "--seed")
    assert list(tmp_path.iterdir()) == []


# ---- divergence ------------------------------------------------------------------------------


def nan_lr_from(monkeypatch, first_bad_step):
    """Make the schedule give NaN from a global step on (an exploding run, made certain)."""
    import robustcli.train.loop as L  # the loop looks the schedule up in its own module

    real = L.learning_rate

    def lr(hp, step, spe, epochs):
        return float("nan") if step >= first_bad_step(spe) else real(hp, step, spe, epochs)

    monkeypatch.setattr(L, "learning_rate", lr)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_lr_from(monkeypatch, lambda spe: spe)  # epoch 2 diverges
    with pytest.raises(TrainingDivergedError, match=r"nan in epoch 2 .*keeps epoch 1"):
        train("resnet20", out=out, epochs=3, **TINY)
    tensors, state = load_training_state(out / "last.safetensors")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point())
    assert not (out / "model.safetensors").exists()
    assert (out / "metrics.csv").read_text().count("\n") == 2  # header + epoch 1
    assert hidden_leftovers(tmp_path) == []


def test_non_finite_weights_after_a_finite_epoch_are_not_saved(tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_lr_from(monkeypatch, lambda spe: spe - 1)  # only the last step of epoch 1 is bad
    with pytest.raises(TrainingDivergedError, match="weights became non-finite in epoch 1"):
        train("resnet20", out=out, epochs=2, **TINY)
    assert not out.exists()  # a new run writes nothing before a good first epoch
    assert hidden_leftovers(tmp_path) == []


def test_divergence_in_the_cli_is_one_line_and_writes_nothing(run, capsys, monkeypatch):
    nan_lr_from(monkeypatch, lambda spe: 0)
    before = snapshot(run)
    code, _, err = robust(
        capsys, "train", "-m", "bu-lenetfc", "-b", "512", "--force", "-o", str(run)
    )
    assert_one_line_error(code, err, "diverged", "lower --lr")
    assert snapshot(run) == before
    assert hidden_leftovers(run.parent) == []


# ---- the schedule in words -----------------------------------------------------------------


def test_the_resolved_schedule_is_printed(tmp_path, capsys):
    step = {"lr": 0.1, "gamma": 0.1, "schedule": "step", "epochs": 12, "milestone_epochs": [6, 10]}
    assert describe_schedule(step) == "lr 0.1, x0.1 after epochs 6, 10"
    ranabhat = {**step, "epochs": 120, "milestone_epochs": [80, 120]}
    assert describe_schedule(ranabhat) == (
        "lr 0.1, x0.1 after epoch 80 (1 later drop past the last epoch)"
    )
    one = {"lr": 0.2, "schedule": "onecycle", "epochs": 10, "warmup": 0.15}
    assert describe_schedule(one, 100) == (
        "lr 0.2 one-cycle: linear warm-up over 15% of the steps (150 steps), then linear decay to 0"
    )
    train("resnet20", recipe="topdown", epochs=3, **{**TINY, "progress": "plain"})
    header = capsys.readouterr().err.splitlines()[0]  # progress: stderr
    assert "batch 32, lr 0.1, x0.1 after epochs 1, 2, augment none" in header, header
