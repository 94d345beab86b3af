"""The training loop and its named recipes.

One readable loop (in the spirit of airbench / nanoGPT): the whole dataset sits on the device as
uint8, every epoch draws one permutation plus crop offsets and flip bits from a seeded generator
(``robustcli.data.DeviceBatches``), and each step is one gather, one forward / backward under
bf16 autocast where the hardware has it, and one SGD step at the learning rate the schedule
gives for that step. Nothing else hides in a framework.

``train(model_name, ...)`` is the public entry point (the CLI's ``robust train`` calls it). A run
folder gets ``model.safetensors`` (weights + everything to rebuild and evaluate the model),
``metrics.csv`` (one row per epoch), ``config.json`` (the resolved configuration),
``result.json`` and ``last.safetensors`` (model, optimiser and RNG state after the last finished
epoch, for ``resume=True``). Resuming a CPU run gives bit-for-bit the weights of an
uninterrupted one. A new run is staged beside ``out`` and moved there after its first epoch,
so ``force=True`` (which replaces only a folder robust train wrote) loses nothing when the new
run fails early; ``out`` is locked while the run lasts (docs/training.md, "Run folders").

Recipes (``RECIPES``; ``describe_recipes()`` prints them):

- ``fast`` (default, ours): SGD + Nesterov 0.9, wd 5e-4, batch 256, peak lr 0.2, one-cycle
  (linear warm-up over 15% of the steps, linear decay to 0), label smoothing 0.1, crop + flip.
  10 epochs on CIFAR-10; on digits batch 64, lr 0.1, 10 epochs.
- ``paper-a``: paper A's public code: 120 epochs, batch 2048, lr 0.1, steps x0.1 at epochs 80 and
  120, SGD momentum 0.9; Nesterov and wd 1e-4 as in the Strisciuglio code it derives from.
- ``strisciuglio``: batch 128, 160 epochs, lr 0.1, Nesterov 0.9, wd 1e-4, x0.1 at 80 and 120.
- ``topdown``: paper B's code: batch 128, lr 0.1, Nesterov 0.9, x0.1 at 50% and 80% of the
  epochs, no augmentation; CIFAR-10: 100 epochs with L2 5e-4 on conv / linear weights (a loss
  term, i.e. weight decay 1e-3 on those weights only); MNIST / Fashion-MNIST: 30 epochs.

Step milestones are fractions of the recipe's epochs, so ``--epochs`` rescales them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import robustcli
from robustcli import runtime
from robustcli.checkpoint import (
    load_training_state,
    model_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
    save_training_state,
)
from robustcli.data import (
    AUGMENTS,
    DEFAULT_AUGMENT,
    DatasetInfo,
    DeviceBatches,
    InputAdapter,
    adapt_images,
    dataset_info,
    eval_batches,
    input_adapter,
    load_dataset,
)
from robustcli.errors import OutputExistsError, RobustError
from robustcli.io import (
    atomic_write,
    atomic_write_json,
    check_writable,
    output_lock,
    remove_stale_tmp,
    stale_tmp_files,
)
from robustcli.registry import build_from_config, get_model_spec, resolve_config

SCHEDULES = ("step", "cosine", "onecycle", "constant")
DEFAULT_DATASET = "digits"
DEFAULT_RECIPE = "fast"
DEFAULT_SEED = 0
RUN_FILES = (
    "model.safetensors",
    "last.safetensors",
    "metrics.csv",
    "config.json",
    "result.json",
)
METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "images_per_s",
    "epoch_s",
    "elapsed_s",
)


# --------------------------------------------------------------------------------------------
# Recipes and schedules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and augmentation of a named training recipe.

    ``milestones`` are fractions of ``epochs`` (step schedule); ``warmup`` is a fraction of all
    steps (cosine / one-cycle). ``weight_decay_on`` is ``all`` (every parameter, as
    ``torch.optim.SGD``) or ``weights`` (conv and linear weights only, as a Keras L2 term).
    ``augment`` ``None`` means the dataset's default (``robustcli.data.DEFAULT_AUGMENT``).
    ``per_dataset`` overrides fields for one dataset.
    """

    name: str
    summary: str
    source: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    weight_decay_on: str = "all"
    schedule: str = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup: float = 0.0
    label_smoothing: float = 0.0
    augment: str | None = None
    per_dataset: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_dataset(self, dataset: str) -> Recipe:
        """This recipe with the overrides of ``dataset`` applied."""
        over = dict(self.per_dataset.get(dataset, {}))
        return replace(self, **over) if over else self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_dataset")
        d["milestones"] = list(self.milestones)
        return d


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="fast",
            summary="ours: one-cycle SGD, label smoothing; good accuracy in few epochs",
            source="robustcli (docs/training.md)",
            epochs=10,
            batch_size=256,
            lr=0.2,
            weight_decay=5e-4,
            schedule="onecycle",
            warmup=0.15,
            label_smoothing=0.1,
            per_dataset={
                "digits": {"batch_size": 64, "lr": 0.1},
                "mnist": {"epochs": 5},
                "fashion-mnist": {"epochs": 10},
            },
        ),
        Recipe(
            name="paper-a",
            summary="paper A's public code: 120 epochs, batch 2048, lr 0.1 x0.1 at 80, 120",
            source="Ranabhat et al. 2025, first author's public fork",
            epochs=120,
            batch_size=2048,
            lr=0.1,
            weight_decay=1e-4,
            milestones=(80 / 120, 120 / 120),
            augment="crop+flip",
        ),
        Recipe(
            name="strisciuglio",
            summary="Strisciuglio et al. 2020: batch 128, 160 epochs, x0.1 at 80 and 120",
            source="github.com/nicstrisc/Push-Pull-CNN-layer",
            epochs=160,
            batch_size=128,
            lr=0.1,
            weight_decay=1e-4,
            milestones=(80 / 160, 120 / 160),
            augment="crop+flip",
        ),
        Recipe(
            name="topdown",
            summary="paper B's code: batch 128, lr 0.1, x0.1 at 50% and 80%, no augmentation",
            source="github.com/giannislelekas/topdown",
            epochs=100,
            batch_size=128,
            lr=0.1,
            weight_decay=1e-3,
            weight_decay_on="weights",
            milestones=(0.5, 0.8),
            augment="none",
            per_dataset={
                "mnist": {"epochs": 30, "weight_decay": 0.0},
                "fashion-mnist": {"epochs": 30, "weight_decay": 0.0},
                "digits": {"epochs": 30, "weight_decay": 0.0},
            },
        ),
    )
}


def get_recipe(name: str, dataset: str | None = None) -> Recipe:
    """The recipe ``name`` (with ``dataset``'s overrides applied when given)."""
    if name not in RECIPES:
        raise RobustError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    return recipe.for_dataset(dataset) if dataset else recipe


def describe_recipes() -> str:
    return "\n".join(f"{r.name:13s} {r.summary}" for r in RECIPES.values())


def milestone_epochs(milestones: Sequence[float], epochs: int) -> list[int]:
    """Epoch numbers (0-based start of the lowered lr) of fractional milestones.

    Each milestone is ``round(f * epochs)``; milestones inside the run (``f < 1``) stay distinct
    and inside it (a short run keeps one epoch per learning-rate stage rather than dropping the
    rate twice at once), e.g. ``(0.5, 0.8)`` at 3 epochs gives ``[1, 2]``. A run too short for
    the recipe's stages is refused.
    """
    ms = sorted(float(f) for f in milestones)
    out = [max(1, round(f * epochs)) for f in ms]
    inside = [i for i, f in enumerate(ms) if f < 1.0]
    if len(inside) >= epochs:
        raise RobustError(
            f"--epochs {epochs} is too short for the recipe's {len(inside)} learning-rate drops: "
            f"use --epochs {len(inside) + 1} or more, or a recipe without step drops (-r fast)"
        )
    upper = epochs - 1
    for i in reversed(inside):  # keep each inside drop below the next one and the run's end
        out[i] = min(out[i], upper)
        upper = out[i] - 1
    for k, i in enumerate(inside):  # and above the previous one
        out[i] = max(out[i], k + 1, (out[inside[k - 1]] + 1) if k else 1)
    return out


def learning_rate(hp: Mapping[str, Any], step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate at global ``step`` (0-based) for resolved hyperparameters ``hp``."""
    base = float(hp["lr"])
    total = max(1, steps_per_epoch * epochs)
    schedule = hp["schedule"]
    if schedule == "constant":
        return base
    if schedule == "step":
        epoch = step // steps_per_epoch
        drops = sum(epoch >= m for m in hp["milestone_epochs"])
        return base * float(hp["gamma"]) ** drops
    warm = round(float(hp["warmup"]) * total)
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "onecycle":
        return base * max(0.0, 1.0 - t)
    raise RobustError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What ``train`` returns. ``model`` is the trained plain module in eval mode."""

    model: nn.Module
    config: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, float]]
    out: Path | None
    checkpoint: Path | None
    wall_time_s: float
    images_per_s: float
    resumed_from_epoch: int = 0


EpochCallback = Callable[[dict[str, float]], None]


# --------------------------------------------------------------------------------------------
# Progress display
# --------------------------------------------------------------------------------------------


class _Silent:
    def start(self, header: str, total_steps: int, done_steps: int) -> None:
        pass

    def step(self, epoch: int, epochs: int, done: int, stats: Mapping[str, float]) -> None:
        pass

    def epoch(self, row: Mapping[str, float], epochs: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


class _Plain(_Silent):
    """One line per epoch, for logs and pipes."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, header: str, total_steps: int, done_steps: int) -> None:
        self.message(header)

    def epoch(self, row: Mapping[str, float], epochs: int) -> None:
        self.message(_epoch_line(row, epochs))


class _Rich(_Silent):
    """A Rich progress bar over the whole run (epoch, loss, accuracy, images/s, ETA)."""

    def __init__(self) -> None:
        from rich.console import Console

        from robustcli.progress import progress_bar

        self.console = Console()
        self.progress = progress_bar(
            "[bold]{task.description}",
            stats_field="stats",
            remaining_label="eta",
            console=self.console,
        )
        self.task: Any = None

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def start(self, header: str, total_steps: int, done_steps: int) -> None:
        self.progress.start()
        self.message(header)
        self.task = self.progress.add_task(
            "training", total=total_steps, completed=done_steps, stats=""
        )

    def step(self, epoch: int, epochs: int, done: int, stats: Mapping[str, float]) -> None:
        text = (
            f"loss {stats['loss']:.3f} acc {100 * stats['acc']:.1f}% "
            f"{stats['images_per_s']:.0f} img/s"
        )
        self.progress.update(
            self.task, completed=done, description=f"epoch {epoch}/{epochs}", stats=text
        )

    def epoch(self, row: Mapping[str, float], epochs: int) -> None:
        self.message(_epoch_line(row, epochs))

    def stop(self) -> None:
        self.progress.stop()


def _epoch_line(row: Mapping[str, float], epochs: int) -> str:
    test = (
        f" | test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%"
        if not math.isnan(row.get("test_acc", math.nan))
        else ""
    )
    eta = row["elapsed_s"] / row["epoch"] * (epochs - row["epoch"]) if row["epoch"] else 0.0
    return (
        f"epoch {int(row['epoch'])}/{epochs} | lr {row['lr']:.4g} | train loss "
        f"{row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%{test} | "
        f"{row['images_per_s']:.0f} img/s | {row['epoch_s']:.1f} s | eta {_hms(eta)}"
    )


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def _reporter(progress: bool | str, info: runtime.DistInfo) -> _Silent:
    if not info.is_main or progress is False or progress == "none":
        return _Silent()
    if progress == "auto":
        return _Rich() if sys.stdout.isatty() else _Plain()
    if progress in (True, "rich"):
        return _Rich()
    if progress == "plain":
        return _Plain()
    raise RobustError(f"unknown progress mode {progress!r}: use auto, rich, plain or none")


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """The git commit of the robustcli source tree, if it is a checkout (else ``None``)."""
    src = Path(robustcli.__file__).resolve().parents[1]
    if not (src / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return f"{commit}-dirty" if dirty.stdout.strip() else commit


def versions() -> dict[str, str]:
    v = {
        "robustcli": robustcli.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    try:
        from importlib.metadata import version

        v["torchvision"] = version("torchvision")
        v["safetensors"] = version("safetensors")
    except Exception:  # noqa: BLE001 - optional information only
        pass
    return v


# --------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------

CONFIG_SCHEMA = "robustcli-train-config"
# keys `--resume` needs from config.json (and hyperparameters' keys below)
_CONFIG_KEYS = (
    "model",
    "backbone",
    "model_config",
    "dataset",
    "dataset_info",
    "input",
    "normalization",
    "hyperparameters",
    "seed",
)
_HP_KEYS = ("recipe", "epochs", "batch_size", "lr", "schedule", "augment", "label_smoothing")


def read_run_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a run folder (or the file itself), checked to be one that
    ``robust train`` wrote; a one-line :class:`RobustError` naming the file otherwise."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    fix = "start a new run (another --out) instead of --resume"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise RobustError(f"{p} is missing: {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = getattr(exc, "msg", None) or "not UTF-8 text"
        raise RobustError(f"{p} is not valid JSON (truncated or edited? {reason}): {fix}") from None
    if not isinstance(data, dict) or data.get("schema") != CONFIG_SCHEMA:
        raise RobustError(
            f'{p} was not written by robust train (no "schema": "{CONFIG_SCHEMA}"): {fix}'
        )
    missing = [k for k in _CONFIG_KEYS if k not in data]
    hp = data.get("hyperparameters")
    if isinstance(hp, dict):
        missing += [f"hyperparameters.{k}" for k in _HP_KEYS if k not in hp]
    elif "hyperparameters" not in missing:
        missing.append("hyperparameters")
    if missing:
        raise RobustError(f"{p} is incomplete (missing {', '.join(missing)}): {fix}")
    return data


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder that ``robust train`` wrote: its ``config.json`` is a JSON
    object with ``"schema": "robustcli-train-config"``. Only such folders are replaced by
    ``force=True``; any other non-empty folder is refused."""
    cfg = Path(path) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("schema") == CONFIG_SCHEMA


# The new run is built in ".<name>.XXXXXXXX.new" beside the run folder and renamed onto it after
# its first checkpoint; a replaced run folder passes through ".<name>.XXXXXXXX.old". Both are
# in the same parent (same file system: renames are atomic) and are ours to clean up.
def _side_folder(out: Path, kind: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.{kind}$")


def _own_entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files robust train writes, everything else) in ``folder``."""
    ours = {folder / n for n in RUN_FILES} | set(stale_tmp_files(folder, RUN_FILES))
    entries = list(folder.iterdir())
    return [p for p in entries if p in ours], [p for p in entries if p not in ours]


def _remove_run_files(folder: Path) -> bool:
    """Delete the files robust train writes (and their temporary files) from ``folder``, then
    the folder if nothing else is left. Never deletes anything else. True if it is gone."""
    ours, _ = _own_entries(folder)
    for p in ours:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            p.unlink()
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def _move_others(src: Path, dst: Path) -> None:
    """Move the entries of ``src`` that robust train did not write into ``dst`` (no clobber)."""
    _, others = _own_entries(src)
    for p in others:
        if not (dst / p.name).exists():
            os.rename(p, dst / p.name)


def _recover_side_folders(out: Path) -> None:
    """Finish or undo what a killed predecessor left beside ``out`` (call with the lock held)."""
    parent = out.parent
    if not parent.is_dir():
        return
    for kind in ("old", "new"):
        pattern = _side_folder(out, kind)
        for side in sorted(parent.iterdir()):
            if not pattern.match(side.name) or not side.is_dir():
                continue
            if kind == "old":
                if not out.exists():  # killed between the two renames: put the old run back
                    os.rename(side, out)
                    continue
                _move_others(side, out)  # killed while clearing the replaced run
            _remove_run_files(side)  # a new run killed before its first checkpoint


@dataclass
class _RunDir:
    """Where a run writes: ``path`` (the run folder, or the staging folder until the first
    checkpoint is published)."""

    out: Path
    path: Path
    staging: bool = False
    replace: bool = False  # the run folder holds a previous run to be replaced on publishing

    def publish(self) -> None:
        """Move the staged run onto ``out``; the replaced run's own files are deleted, any
        other file in its folder is moved into the new one."""
        if not self.staging:
            return
        out, new = self.out, self.path
        if not self.replace:
            os.rename(new, out)  # replaces an empty folder atomically
        else:
            with contextlib.suppress(OSError):
                shutil.copymode(out, new)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rename(out, old)  # onto the empty placeholder
            try:
                os.rename(new, out)
            except BaseException:
                os.rename(old, out)
                raise
            _move_others(old, out)
            _remove_run_files(old)
        self.path, self.staging, self.replace = out, False, False

    def discard(self) -> None:
        """Drop an unpublished staging folder (the run failed before its first checkpoint)."""
        if self.staging:
            _remove_run_files(self.path)


def _prepare_out(out: Path, *, resume: bool, force: bool) -> _RunDir:
    """Check ``out`` and choose where the run writes. Call with :func:`output_lock` held."""
    check_writable(out)
    check_writable(out.parent)  # staging folder and renames
    _recover_side_folders(out)
    if resume:
        if not (out / "last.safetensors").is_file() or not (out / "config.json").is_file():
            raise RobustError(
                f"nothing to resume in {out}: it has no last.safetensors / config.json; "
                "start the run without --resume"
            )
        read_run_config(out)
        remove_stale_tmp(out, RUN_FILES)  # left by a kill during a write
        return _RunDir(out, out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder: choose another --out")
    replace = False
    if out.is_dir():
        ours, others = _own_entries(out)
        if others or any(p.name in RUN_FILES for p in ours):
            if not is_run_folder(out):
                raise OutputExistsError(
                    f"{out} is not empty and not a robustcli run folder (no config.json "
                    "written by robust train): choose another --out (--force replaces only "
                    "run folders)"
                )
            if not force:
                raise OutputExistsError(
                    f"run folder {out} already exists: choose another --out, pass --resume to "
                    "continue it, or --force to replace it"
                )
            replace = True
            out = out.resolve()  # a symlinked run folder: replace its target, keep the link
        else:
            remove_stale_tmp(out, RUN_FILES)  # only our temporary files: an empty folder
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; run folders get the usual mode
    return _RunDir(out, staging, staging=True, replace=replace)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_metrics(path: Path, history: Iterable[Mapping[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k, math.nan)) for k in METRIC_COLUMNS})
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())


def _fmt(v: float) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    return f"{v:.6g}" if not math.isnan(v) else ""


def _on_rank0(info: runtime.DistInfo, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0; a RobustError there is raised on every rank (no hang)."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except RobustError as exc:
            error = (type(exc).__name__, str(exc))
    error = runtime.broadcast_object(error, info)
    if error is not None:
        cls = OutputExistsError if error[0] == "OutputExistsError" else RobustError
        raise cls(error[1])
    return runtime.broadcast_object(result, info)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _resolve_config(
    *,
    model_name: str,
    dataset: str,
    data_dir: str | None,
    recipe: str,
    seed: int,
    hp_overrides: Mapping[str, Any],
    model_overrides: Mapping[str, Any],
    input_shape: Sequence[int] | None,
    info: DatasetInfo,
    train_limit: int | None,
    test_limit: int | None,
) -> dict[str, Any]:
    spec = get_model_spec(model_name)
    overrides = dict(model_overrides)
    if "num_classes" not in overrides and info.num_classes != spec.num_classes:
        overrides["num_classes"] = info.num_classes
    model_config = resolve_config(model_name, **overrides)
    in_ch = int(model_config.get("in_channels", spec.input_shape[0]))
    target = tuple(int(v) for v in input_shape) if input_shape else (in_ch, *spec.input_shape[1:])
    if len(target) == 2:
        target = (in_ch, *target)
    adapter = input_adapter(info.input_shape, target)
    mean, std = adapter.normalization(info.mean, info.std)

    rec = get_recipe(recipe, dataset)
    hp = rec.to_dict()
    hp["recipe"] = hp.pop("name")
    for key, value in hp_overrides.items():
        if value is not None:
            hp[key] = value
    if hp["augment"] is None:
        hp["augment"] = DEFAULT_AUGMENT.get(dataset, "none")
    if hp["augment"] not in AUGMENTS:
        raise RobustError(f"unknown augmentation {hp['augment']!r}: choose one of {AUGMENTS}")
    if hp["schedule"] not in SCHEDULES:
        raise RobustError(f"unknown schedule {hp['schedule']!r}: choose one of {SCHEDULES}")
    if hp["weight_decay_on"] not in ("all", "weights"):
        raise RobustError("weight_decay_on must be 'all' or 'weights'")
    for key in ("epochs", "batch_size"):
        if int(hp[key]) < 1:
            raise RobustError(f"--{key.replace('_', '-')} must be at least 1, got {hp[key]}")
    if float(hp["lr"]) <= 0:
        raise RobustError(f"--lr must be positive, got {hp['lr']}")
    hp["epochs"], hp["batch_size"] = int(hp["epochs"]), int(hp["batch_size"])
    hp["milestone_epochs"] = milestone_epochs(hp["milestones"], hp["epochs"])
    return {
        "schema": CONFIG_SCHEMA,
        "schema_version": 1,
        "model": model_name,
        "backbone": spec.backbone,
        "model_config": model_config,
        "dataset": dataset,
        "dataset_info": info.to_dict(),
        "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None,
        "input": adapter.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "hyperparameters": hp,
        "seed": int(seed),
        "train_limit": train_limit,
        "test_limit": test_limit,
    }


_RESUME_CHECKED = {
    "model": ("model",),
    "dataset": ("dataset",),
    "seed": ("seed",),
    "recipe": ("hyperparameters", "recipe"),
    "epochs": ("hyperparameters", "epochs"),
    "batch_size": ("hyperparameters", "batch_size"),
    "lr": ("hyperparameters", "lr"),
}


def _check_resume_args(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    for key, value in requested.items():
        if value is None or key not in _RESUME_CHECKED:
            continue
        cur: Any = saved
        for part in _RESUME_CHECKED[key]:
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        if cur is not None and cur != value:
            raise RobustError(
                f"--{key.replace('_', '-')} {value} differs from the run being resumed ({cur}): "
                "resume uses the run's own settings; drop the option or start a new --out"
            )


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _param_groups(model: nn.Module, hp: Mapping[str, Any]) -> list[dict[str, Any]]:
    wd = float(hp["weight_decay"])
    if hp["weight_decay_on"] == "all" or wd == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": wd}]
    decay, rest = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decay if is_weight else rest).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def evaluate_tensors(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
    precision: str = "fp32",
    channels_last: bool = False,
    info: runtime.DistInfo = runtime.SINGLE,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on uint8 ``images`` (already adapted)."""
    dev = images.device
    totals = torch.zeros(3, dtype=torch.float64, device=dev)
    with runtime.inference_mode(model):
        for x, y in eval_batches(
            images,
            labels,
            mean=mean,
            std=std,
            batch_size=batch_size,
            channels_last=channels_last,
            info=info,
        ):
            with runtime.autocast(dev, precision):
                logits = model(x.to(runtime.param_dtype(precision)))
            logits = logits.float()
            totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += y.numel()
    runtime.all_reduce_sum(totals, info)
    n = max(1.0, float(totals[2]))
    return float(totals[0]) / n, float(totals[1]) / n


def _rng_tensors(
    gen: torch.Generator, device: torch.device, info: runtime.DistInfo
) -> dict[str, torch.Tensor]:
    tensors = {"rng/data": gen.get_state()}
    cpu_states = runtime.gather_tensors(_for_collective(torch.get_rng_state(), info), info)
    for r, s in enumerate(cpu_states):
        tensors[f"rng/torch/{r}"] = s.cpu()
    if device.type == "cuda":
        cuda_states = runtime.gather_tensors(
            _for_collective(torch.cuda.get_rng_state(device), info), info
        )
        for r, s in enumerate(cuda_states):
            tensors[f"rng/cuda/{r}"] = s.cpu()
    return tensors


def _for_collective(t: torch.Tensor, info: runtime.DistInfo) -> torch.Tensor:
    if info.backend == "nccl":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def _restore_rng(
    tensors: Mapping[str, torch.Tensor],
    gen: torch.Generator,
    device: torch.device,
    info: runtime.DistInfo,
) -> None:
    gen.set_state(tensors["rng/data"])
    key = f"rng/torch/{info.rank}"
    if key in tensors:
        torch.set_rng_state(tensors[key])
    ckey = f"rng/cuda/{info.rank}"
    if device.type == "cuda" and ckey in tensors:
        torch.cuda.set_rng_state(tensors[ckey], device)


# Ranges of the numeric options (the CLI checks the same ones with ``in_range``).
LR_RANGE = (0.0, 10.0)  # exclusive low: a larger peak lr only diverges
SEED_MAX = 2**32 - 1  # NumPy's limit


def _check_numbers(**values: Any) -> None:
    """One-line errors for numeric arguments out of range, before anything is touched (Python
    callers get the CLI's checks too). ``None`` means "the recipe's"."""
    whole = (lambda v: v >= 1 and v.is_integer(), "a whole number >= 1")
    lo, hi = LR_RANGE
    rules: dict[str, tuple[Callable[[float], bool], str]] = {
        "epochs": whole,
        "batch_size": whole,
        "train_limit": whole,
        "test_limit": whole,
        "eval_every": whole,
        "lr": (lambda v: lo < v <= hi, f"a number > {lo:g} and <= {hi:g}"),
        "seed": (lambda v: 0 <= v <= SEED_MAX and v.is_integer(), f"a whole number 0..{SEED_MAX}"),
        "momentum": (lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
        "weight_decay": (lambda v: v >= 0, "a number >= 0"),
        "label_smoothing": (lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
    }
    for name, value in values.items():
        if value is None:
            continue
        ok, rule = rules[name]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (is_number and math.isfinite(value) and ok(float(value))):
            raise RobustError(f"--{name.replace('_', '-')} {value!r} is out of range: give {rule}")


def train(
    model_name: str,
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    recipe: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    out: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    device: str = "auto",
    resume: bool = False,
    force: bool = False,
    compile: bool = False,
    precision: str = "auto",
    channels_last: bool | None = None,
    momentum: float | None = None,
    nesterov: bool | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    label_smoothing: float | None = None,
    augment: str | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    eval_every: int = 1,
    progress: bool | str = "auto",
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Train the registry model ``model_name`` and return the trained model and its metrics.

    Args:
        model_name: a name from ``model_zoo.yaml`` (``robust models`` lists them).
        dataset: ``digits`` (default; embedded, offline), ``cifar10``, ``mnist``,
            ``fashion-mnist`` or ``imagefolder``. Images are adapted to the model's input shape
            (recorded in the checkpoint; see ``robustcli.data.InputAdapter``).
        data_dir: torchvision files or an ImageFolder tree (``train/<class>``, ``test/<class>``).
        recipe: ``fast`` (default), ``paper-a``, ``strisciuglio`` or ``topdown``.
        epochs, batch_size, lr, momentum, nesterov, weight_decay, schedule, label_smoothing,
            augment: override the recipe. ``batch_size`` is the global batch (all ranks).
        out: run folder; ``None`` trains in memory and writes nothing.
        seed: seeds model init, data order and augmentation (default 0).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: continue the run in ``out`` from its last finished epoch.
        force: replace an existing run folder (one with robust train's ``config.json``; other
            non-empty folders are refused). The old run stays until the new one has its first
            checkpoint.
        compile: wrap the model in ``torch.compile``.
        precision: ``auto`` (bf16 autocast where the hardware has native bf16), ``bf16``,
            ``fp32``, or ``fp64`` (double-precision weights, for numerical checks).
        channels_last: NHWC memory format (default: on for CUDA and CPU).
        model_overrides: builder config overrides (e.g. ``{"pp": {"scales": [2, 3, 4]}}``).
        input_shape: model input ``C x H x W`` (or ``H x W``) instead of the zoo's.
        train_limit, test_limit: use only the first N images of each split (quick runs).
        eval_every: evaluate on the test split every N epochs (and after the last).
        progress: ``auto`` (Rich bar on a terminal, log lines otherwise), ``rich``, ``plain``,
            ``none``/``False``.
        callbacks: called with each epoch's metrics row after its state is saved.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this runs DDP: every rank draws the same global
    batches and keeps its share; BatchNorm uses global-batch statistics.
    """
    _check_numbers(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        momentum=momentum,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        train_limit=train_limit,
        test_limit=test_limit,
        eval_every=eval_every,
    )
    get_model_spec(model_name)  # unknown names fail before anything else
    out_path = None if out is None else Path(out).expanduser()
    if resume and out_path is None:
        raise RobustError("--resume needs --out: the run folder to continue")
    info = runtime.init_distributed(device)
    try:
        with contextlib.ExitStack() as stack:

            def lock_and_prepare() -> _RunDir:
                assert out_path is not None
                check_writable(out_path)  # before the lock file is made beside it
                stack.enter_context(output_lock(out_path))
                rundir = _prepare_out(out_path, resume=resume, force=force)
                stack.callback(rundir.discard)  # a run that fails before its first checkpoint
                return rundir

            # rank 0 writes: it holds the run folder's lock until the end
            rundir = None if out_path is None else _on_rank0(info, lock_and_prepare)
            return _train(
                info,
                rundir=rundir,
                model_name=model_name,
                dataset=dataset,
                data_dir=None if data_dir is None else str(data_dir),
                recipe=recipe,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                out=out_path,
                seed=seed,
                device=device,
                resume=resume,
                force=force,
                compile=compile,
                precision=precision,
                channels_last=channels_last,
                hp_overrides={
                    "momentum": momentum,
                    "nesterov": nesterov,
                    "weight_decay": weight_decay,
                    "schedule": schedule,
                    "label_smoothing": label_smoothing,
                    "augment": augment,
                },
                model_overrides=dict(model_overrides or {}),
                input_shape=input_shape,
                train_limit=train_limit,
                test_limit=test_limit,
                eval_every=int(eval_every),
                progress=progress,
                callbacks=callbacks,
            )
    finally:
        runtime.teardown_distributed(info)


def _train(
    info: runtime.DistInfo,
    *,
    model_name: str,
    dataset: str | None,
    data_dir: str | None,
    recipe: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    out: Path | None,
    rundir: _RunDir | None,
    seed: int | None,
    device: str,
    resume: bool,
    force: bool,
    compile: bool,
    precision: str,
    channels_last: bool | None,
    hp_overrides: dict[str, Any],
    model_overrides: dict[str, Any],
    input_shape: Sequence[int] | None,
    train_limit: int | None,
    test_limit: int | None,
    eval_every: int,
    progress: bool | str,
    callbacks: Sequence[EpochCallback],
) -> TrainResult:
    t_start = time.perf_counter()
    dev = runtime.resolve_device(device, info)
    saved: dict[str, Any] | None = None
    if resume:
        assert out is not None
        saved = read_run_config(out)
        saved_rt = saved.get("runtime") or {}  # keep the run's numerics unless told
        if precision == "auto" and saved_rt.get("device") == dev.type:
            precision = saved_rt.get("precision", precision)
        if channels_last is None and saved_rt.get("device") == dev.type:
            channels_last = saved_rt.get("channels_last")
    prec = runtime.resolve_precision(precision, dev)
    cl = runtime.default_channels_last(dev) if channels_last is None else bool(channels_last)

    # ---- configuration (saved one when resuming) --------------------------------------------
    if saved is not None:
        config = saved
        _check_resume_args(
            config,
            {
                "model": model_name,
                "dataset": dataset,
                "seed": seed,
                "recipe": recipe,
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
            },
        )
        data_dir = data_dir or config.get("data_dir")
    else:
        dataset = dataset or DEFAULT_DATASET
        ds_info: DatasetInfo = _on_rank0(info, lambda: dataset_info(dataset, data_dir))
        config = _resolve_config(
            model_name=model_name,
            dataset=dataset,
            data_dir=data_dir,
            recipe=recipe or DEFAULT_RECIPE,
            seed=DEFAULT_SEED if seed is None else seed,
            hp_overrides={"epochs": epochs, "batch_size": batch_size, "lr": lr, **hp_overrides},
            model_overrides=model_overrides,
            input_shape=input_shape,
            info=ds_info,
            train_limit=train_limit,
            test_limit=test_limit,
        )
    hp = config["hyperparameters"]
    run_seed = int(config["seed"])
    config["runtime"] = {
        "device": dev.type,
        "precision": prec,
        "channels_last": cl,
        "compile": bool(compile),
        "world_size": info.world_size,
        "threads": torch.get_num_threads(),
    }

    # ---- data (rank 0 first: it may download) -----------------------------------------------
    def _load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_dataset(config["dataset"], split, data_dir)

    if info.distributed:  # a download must happen once, before the other ranks look
        _on_rank0(info, lambda: (_load("train"), None)[1])
    x_train, y_train = _load("train")
    x_test, y_test = _load("test")
    if config.get("train_limit"):
        x_train, y_train = x_train[: config["train_limit"]], y_train[: config["train_limit"]]
    if config.get("test_limit"):
        x_test, y_test = x_test[: config["test_limit"]], y_test[: config["test_limit"]]
    adapter = InputAdapter.from_dict(config["input"])
    x_train = adapt_images(x_train.to(dev), adapter)
    x_test = adapt_images(x_test.to(dev), adapter)
    y_train, y_test = y_train.to(dev), y_test.to(dev)
    mean, std = config["normalization"]["mean"], config["normalization"]["std"]
    config["train_images"], config["test_images"] = int(x_train.shape[0]), int(x_test.shape[0])

    gen = runtime.data_generator(run_seed, dev)
    batches = DeviceBatches(
        x_train,
        y_train,
        mean=mean,
        std=std,
        batch_size=hp["batch_size"],
        augment=hp["augment"],
        generator=gen,
        channels_last=cl,
        info=info,
    )
    spe = len(batches)
    n_epochs = int(hp["epochs"])
    config["steps_per_epoch"] = spe

    # ---- model and optimiser ------------------------------------------------------------------
    runtime.seed_everything(run_seed, info)
    model = build_from_config(config["backbone"], config["model_config"])
    model = runtime.sync_batchnorm(model, dev, info)
    model = model.to(runtime.param_dtype(prec))
    model, _ = runtime.prepare_model(model, dev, channels_last=cl, compile=False)
    net: nn.Module = runtime.wrap_ddp(model, dev, info)
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    optimizer = torch.optim.SGD(
        _param_groups(model, hp),
        lr=float(hp["lr"]),
        momentum=float(hp["momentum"]),
        nesterov=bool(hp["nesterov"]) and float(hp["momentum"]) > 0,
    )

    history: list[dict[str, float]] = []
    start_epoch = 0
    elapsed_before = 0.0
    if resume:
        assert out is not None
        tensors, state = load_training_state(out / "last.safetensors")
        model_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
        model.load_state_dict(model_tensors, strict=True)
        optimizer_from_tensors(optimizer, tensors, state["optimizer"])
        _restore_rng(tensors, gen, dev, info)
        start_epoch = int(state["epoch"])
        history = list(state["history"])
        elapsed_before = float(state.get("elapsed_s", 0.0))

    writes = rundir is not None and info.is_main
    if writes and not resume:
        assert rundir is not None
        atomic_write_json(rundir.path / "config.json", config)

    # ---- loop ---------------------------------------------------------------------------------
    report = _reporter(progress, info)
    header = _header(config, out, info, start_epoch)
    report.start(header, spe * n_epochs, spe * start_epoch)
    world = info.world_size
    ls = float(hp["label_smoothing"])
    train_time = sum(r.get("epoch_train_s", 0.0) for r in history)
    train_images = sum(r.get("epoch_images", 0.0) for r in history)
    loop_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, n_epochs):
            model.train()
            t0 = time.perf_counter()
            stats = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, n
            last_show, seen = t0, 0
            step_lr = 0.0
            for i, (x, y, n_global) in enumerate(batches):
                step = epoch * spe + i
                step_lr = learning_rate(hp, step, spe, n_epochs)
                for group in optimizer.param_groups:
                    group["lr"] = step_lr
                if prec == "fp64":
                    x = x.double()
                with runtime.autocast(dev, prec):
                    logits = net(x)
                loss_sum = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=ls)
                # DDP averages gradients over ranks: scaling by world / global batch makes the
                # update that of the mean loss over the global batch, also for uneven shares
                loss = loss_sum * (world / n_global)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    stats[0] += loss_sum.detach().double()
                    stats[1] += (logits.detach().argmax(1) == y).sum()
                    stats[2] += y.numel()
                seen += n_global
                now = time.perf_counter()
                if now - last_show > 0.5 or i == spe - 1:
                    last_show = now
                    n_loc = max(1.0, float(stats[2]))
                    loss_total = float(stats[0])  # the display's sync: no extra one per step
                    if not math.isfinite(loss_total) and not info.distributed:
                        # (with DDP, every rank stops together at the epoch's end instead)
                        raise _diverged(loss_total, epoch + 1, step_lr, history, out)
                    report.step(
                        epoch + 1,
                        n_epochs,
                        step + 1,
                        {
                            "loss": loss_total / n_loc,
                            "acc": float(stats[1]) / n_loc,
                            "images_per_s": seen / (now - t0),
                        },
                    )
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t_train = time.perf_counter() - t0
            runtime.all_reduce_sum(stats, info)
            n_seen = max(1.0, float(stats[2]))
            # nothing non-finite is saved: the previous epoch's last.safetensors stays
            if not math.isfinite(float(stats[0])) or not _all_finite(model):
                raise _diverged(float(stats[0]), epoch + 1, step_lr, history, out)
            row: dict[str, float] = {
                "epoch": epoch + 1,
                "lr": step_lr,
                "train_loss": float(stats[0]) / n_seen,
                "train_acc": float(stats[1]) / n_seen,
                "test_loss": math.nan,
                "test_acc": math.nan,
                "images_per_s": n_seen / t_train,
                "epoch_train_s": t_train,
                "epoch_images": n_seen,
            }
            if (epoch + 1) % eval_every == 0 or epoch + 1 == n_epochs:
                row["test_loss"], row["test_acc"] = evaluate_tensors(
                    model,
                    x_test,
                    y_test,
                    mean=mean,
                    std=std,
                    batch_size=max(256, hp["batch_size"]),
                    precision=prec,
                    channels_last=cl,
                    info=info,
                )
            train_time += t_train
            train_images += n_seen
            row["epoch_s"] = time.perf_counter() - t0
            row["elapsed_s"] = elapsed_before + (time.perf_counter() - loop_start)
            history.append(row)
            state_tensors = {f"model/{k}": v for k, v in model_state(model).items()}
            opt_tensors, opt_info = optimizer_to_tensors(optimizer)
            state_tensors.update(opt_tensors)
            state_tensors.update(_rng_tensors(gen, dev, info))
            if writes:
                assert rundir is not None
                save_training_state(
                    rundir.path / "last.safetensors",
                    state_tensors,
                    {
                        "epoch": epoch + 1,
                        "history": history,
                        "optimizer": opt_info,
                        "elapsed_s": row["elapsed_s"],
                        "world_size": world,
                    },
                )
                _write_metrics(rundir.path / "metrics.csv", history)
                rundir.publish()  # a new run replaces the folder's old one only now
            runtime.barrier(info)
            report.epoch(row, n_epochs)
            for callback in callbacks:
                callback(dict(row))
    except KeyboardInterrupt:
        report.stop()
        if writes and history:
            print(
                f"interrupted after epoch {int(history[-1]['epoch'])}: continue with "
                f"`robust train --model {config['model']} --out {out} --resume`",
                file=sys.stderr,
                flush=True,
            )
        raise
    report.stop()

    # ---- final checkpoint ----------------------------------------------------------------------
    final = history[-1] if history else {}
    metrics = {
        k: float(final[k])
        for k in ("train_loss", "train_acc", "test_loss", "test_acc")
        if k in final
    }
    ips = train_images / train_time if train_time else 0.0
    wall = elapsed_before + (time.perf_counter() - loop_start)
    checkpoint_path = None
    model.eval()
    if writes:
        assert rundir is not None
        checkpoint_path = rundir.path / "model.safetensors"
        extra = {
            "recipe": hp["recipe"],
            "hyperparameters": hp,
            "epochs": n_epochs,
            "seed": run_seed,
            "metrics": metrics,
            "train": {
                "dataset_info": config["dataset_info"],
                "data_dir": config.get("data_dir"),
                "train_images": config["train_images"],
                "test_images": config["test_images"],
                "runtime": config["runtime"],
                "images_per_s": round(ips, 1),
                "wall_time_s": round(wall, 1),
            },
            "classes": list(config["dataset_info"]["classes"]),
            "versions": versions(),
            "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        save_checkpoint(
            checkpoint_path,
            model,
            model_name=config["model"],
            config=config["model_config"],
            dataset=config["dataset"],
            normalization=config["normalization"],
            input=adapter,
            backbone=config["backbone"],
            extra=extra,
        )
        atomic_write_json(
            rundir.path / "result.json",
            {
                "schema": "robustcli-result",
                "schema_version": 1,
                "kind": "train",
                "model": config["model"],
                "provenance": {
                    "checkpoint": str(checkpoint_path),
                    "dataset": config["dataset"],
                    "recipe": hp["recipe"],
                    "seed": run_seed,
                    "versions": extra["versions"],
                    "git_commit": extra["git_commit"],
                    "created": extra["created"],
                },
                "metrics": metrics,
                "epochs": n_epochs,
                "history": history,
                "wall_time_s": wall,
                "images_per_s": ips,
            },
        )
        report.message(
            f"done in {_hms(time.perf_counter() - t_start)}: test accuracy "
            f"{100 * metrics.get('test_acc', math.nan):.2f}% -> {checkpoint_path}"
        )
    runtime.barrier(info)
    return TrainResult(
        model=model,
        config=config,
        metrics=metrics,
        history=history,
        out=out,
        checkpoint=checkpoint_path,
        wall_time_s=wall,
        images_per_s=ips,
        resumed_from_epoch=start_epoch,
    )


class TrainingDivergedError(RobustError):
    """The loss or the weights became NaN or infinite; nothing non-finite was saved."""


def _diverged(
    loss_sum: float,
    epoch: int,
    lr: float,
    history: Sequence[Mapping[str, float]],
    out: Path | None,
) -> TrainingDivergedError:
    what = (
        f"the loss became {loss_sum}"
        if not math.isfinite(loss_sum)
        else "the weights became non-finite"
    )
    if out is None:
        kept = "nothing was saved"
    elif history:
        kept = f"{out / 'last.safetensors'} keeps epoch {int(history[-1]['epoch'])}"
    else:
        kept = f"nothing was written to {out}"
    return TrainingDivergedError(
        f"training diverged: {what} in epoch {epoch} (lr {lr:.4g}); stopped, {kept}: "
        "lower --lr or choose another --recipe"
    )


def _all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer is finite (one sync)."""
    sums = [
        t.detach().float().sum()
        for t in (*model.parameters(), *model.buffers())
        if t.is_floating_point()
    ]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def describe_schedule(hp: Mapping[str, Any], steps_per_epoch: int | None = None) -> str:
    """The resolved learning-rate schedule in words, e.g. ``lr 0.1, x0.1 after epochs 6, 9``."""
    lr = f"lr {float(hp['lr']):g}"
    schedule = hp["schedule"]
    epochs = int(hp["epochs"])
    if schedule == "constant":
        return f"{lr} constant"
    if schedule == "step":
        # milestone m lowers the lr from 0-based epoch m on: after m finished epochs
        inside = [int(m) for m in hp["milestone_epochs"] if int(m) < epochs]
        later = len(hp["milestone_epochs"]) - len(inside)
        if inside:
            plural = "s" if len(inside) > 1 else ""
            text = f"{lr}, x{float(hp['gamma']):g} after epoch{plural} "
            text += ", ".join(map(str, inside))
        else:
            text = f"{lr} constant"
        if later:
            text += f" ({later} later drop{'s' if later > 1 else ''} past the last epoch)"
        return text
    total = steps_per_epoch * epochs if steps_per_epoch else None
    warm = float(hp.get("warmup", 0.0))
    if warm > 0:
        steps = f" ({round(warm * total)} steps)" if total else ""
        ramp = f"linear warm-up over {100 * warm:g}% of the steps{steps}, then "
    else:
        ramp = ""
    if schedule == "onecycle":
        return f"{lr} one-cycle: {ramp}linear decay to 0"
    if schedule == "cosine":
        return f"{lr} cosine: {ramp}cosine decay to 0"
    return f"{lr} {schedule}"


def _header(
    config: Mapping[str, Any], out: Path | None, info: runtime.DistInfo, start_epoch: int
) -> str:
    hp = config["hyperparameters"]
    rt = config["runtime"]
    adapt = config["input"]["description"]
    sched = describe_schedule(hp, config.get("steps_per_epoch"))
    parts = [
        f"training {config['model']} on {config['dataset']} "
        f"({config['train_images']} train / {config['test_images']} test"
        + (f"; input {adapt}" if adapt != "none" else "")
        + ")",
        f"recipe {hp['recipe']}: {hp['epochs']} epochs, batch {hp['batch_size']}, {sched}, "
        f"augment {hp['augment']}, seed {config['seed']}",
        f"{rt['device']} {rt['precision']}"
        + (" channels_last" if rt["channels_last"] else "")
        + (" compiled" if rt["compile"] else "")
        + (f", {info.world_size} processes" if info.distributed else "")
        + (f" -> {out}" if out else ""),
    ]
    if start_epoch:
        parts.append(f"resuming after epoch {start_epoch}")
    return " | ".join(parts)


__all__ = [
    "RECIPES",
    "Recipe",
    "TrainResult",
    "TrainingDivergedError",
    "describe_recipes",
    "describe_schedule",
    "evaluate_tensors",
    "get_recipe",
    "is_run_folder",
    "learning_rate",
    "read_run_config",
    "train",
]
