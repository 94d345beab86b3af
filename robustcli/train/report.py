"""What a run tells its user and records: progress display, log lines, result documents.

The loop talks to a :class:`Reporter` (``start``, ``step``, ``epoch``, ``message``, ``stop``):
:func:`reporter` picks a silent one (other ranks, ``progress="none"``), plain log lines (pipes)
or a Rich bar (terminals). :func:`header` is the log's first line (model, data, resolved
recipe and schedule, runtime). :func:`checkpoint_metadata` and :func:`result_document` are
the final ``model.safetensors`` metadata and the ``result.json`` document, with provenance
(:func:`versions`, :func:`git_commit`).
"""

from __future__ import annotations

import math
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import robustcli
from robustcli import runtime
from robustcli.progress import resolve_mode
from robustcli.results import SCHEMA, SCHEMA_VERSION
from robustcli.train.recipes import describe_schedule

# ---- progress display --------------------------------------------------------------------------


class Reporter:
    """The progress interface of the loop; this base class shows nothing.

    Progress (the header, a bar or one line per epoch) goes to stderr; the final ``done`` line,
    the run's result, to stdout, so ``robust train ... > result.txt`` keeps only the result.
    """

    total = first = 0  # steps of the run; steps done before this process (a resume)
    t_start = 0.0  # when this process's first step began, on clock()
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def start(self, header: str, total_steps: int, done_steps: int) -> None:
        pass

    def step(self, epoch: int, epochs: int, done: int, stats: Mapping[str, float]) -> None:
        pass

    def _begin(self, total_steps: int, done_steps: int) -> None:
        self.total, self.first = total_steps, done_steps
        self.t_start = self.clock()

    def _eta(self, row: Mapping[str, float], epochs: int) -> float:
        """Seconds left after the epoch of ``row``: this process's time per epoch (test pass
        included) times the epochs left. Not the run's ``elapsed_s``: the epochs before a
        resume ran elsewhere, on another device or under another load."""
        epochs_run = row["epoch"] - self.first * epochs / max(self.total, 1)
        spent = self.clock() - self.t_start
        return spent / epochs_run * (epochs - row["epoch"]) if epochs_run > 0 else 0.0

    def epoch(self, row: Mapping[str, float], epochs: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def done(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


class _Plain(Reporter):
    """One line per epoch, for logs and pipes, and a progress line at most every ``interval``
    seconds within an epoch (a CPU epoch can take many minutes: a log should not go silent)."""

    def __init__(
        self,
        stream: Any = None,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.interval, self.clock = interval, clock
        self.last = 0.0

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def done(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def start(self, header: str, total_steps: int, done_steps: int) -> None:
        self.message(header)
        self._begin(total_steps, done_steps)
        self.last = self.t_start

    def step(self, epoch: int, epochs: int, done: int, stats: Mapping[str, float]) -> None:
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        rate = (done - self.first) / max(now - self.t_start, 1e-9)  # steps per second
        eta = (self.total - done) / rate if rate > 0 else 0.0
        self.message(
            f"epoch {epoch}/{epochs} | step {done}/{self.total} | loss {stats['loss']:.4f} "
            f"acc {100 * stats['acc']:.2f}% | {stats['images_per_s']:.0f} img/s | eta {hms(eta)}"
        )

    def epoch(self, row: Mapping[str, float], epochs: int) -> None:
        self.last = self.clock()
        self.message(epoch_line(row, epochs, self._eta(row, epochs)))


class _Rich(Reporter):
    """A Rich progress bar over the whole run (epoch, loss, accuracy, images/s, ETA)."""

    def __init__(self) -> None:
        from robustcli.progress import progress_bar
        from robustcli.render import make_console

        self.console = make_console(stderr=True)
        self.progress = progress_bar(
            "{task.description}",
            description_style="bold",
            stats_field="stats",
            remaining_label="eta",
            console=self.console,
        )
        self.task: Any = None

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def done(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def start(self, header: str, total_steps: int, done_steps: int) -> None:
        self.progress.start()
        self.message(header)
        self._begin(total_steps, done_steps)
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
        self.message(epoch_line(row, epochs, self._eta(row, epochs)))

    def stop(self) -> None:
        self.progress.stop()


def reporter(progress: bool | str, info: runtime.DistInfo) -> Reporter:
    """The display for ``progress`` (``auto``, ``rich``/``True``, ``plain``, ``none``/``False``);
    silent on every rank but rank 0."""
    if not info.is_main:
        return Reporter()
    mode = resolve_mode(progress)
    return _Rich() if mode == "rich" else _Plain() if mode == "plain" else Reporter()


# ---- log lines ---------------------------------------------------------------------------------


def epoch_line(row: Mapping[str, float], epochs: int, eta: float) -> str:
    """The log line of a finished epoch (its ``metrics.csv`` row), ``eta`` seconds to go."""
    test = (
        f" | test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%"
        if not math.isnan(row.get("test_acc", math.nan))
        else ""
    )
    return (
        f"epoch {int(row['epoch'])}/{epochs} | lr {row['lr']:.4g} | train loss "
        f"{row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%{test} | "
        f"{row['images_per_s']:.0f} img/s | {row['epoch_s']:.1f} s | eta {hms(eta)}"
    )


def hms(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def header(
    config: Mapping[str, Any],
    out: Path | None,
    info: runtime.DistInfo,
    start_epoch: int,
    resume_note: str = "",
) -> str:
    """The first log line: model, data, resolved recipe and schedule, runtime, run folder."""
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
        resumed = f"resuming after epoch {start_epoch}"
        parts.append(f"{resumed} ({resume_note})" if resume_note else resumed)
    return " | ".join(parts)


def interrupted_line(model: str, out: Path | None, history: Sequence[Mapping[str, float]]) -> str:
    """What to run to continue a run stopped (Ctrl-C) after its last saved epoch."""
    return (
        f"interrupted after epoch {int(history[-1]['epoch'])}: continue with "
        f"`robust train --model {model} --out {out} --resume`"
    )


def done_line(seconds: float, metrics: Mapping[str, float], checkpoint: Path) -> str:
    return (
        f"done in {hms(seconds)}: test accuracy "
        f"{100 * metrics.get('test_acc', math.nan):.2f}% -> {checkpoint}"
    )


# ---- provenance and result documents ----------------------------------------------------------


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
    """Versions of robustcli, torch, torchvision, safetensors, Python and the platform."""
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


def final_metrics(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The last epoch's losses and accuracies (empty before the first epoch)."""
    final = history[-1] if history else {}
    return {
        k: float(final[k])
        for k in ("train_loss", "train_acc", "test_loss", "test_acc")
        if k in final
    }


def checkpoint_metadata(
    config: Mapping[str, Any], metrics: Mapping[str, float], images_per_s: float, wall: float
) -> dict[str, Any]:
    """The training record stored in ``model.safetensors`` (``extra`` of ``save_checkpoint``)."""
    hp = config["hyperparameters"]
    return {
        "recipe": hp["recipe"],
        "hyperparameters": hp,
        "epochs": int(hp["epochs"]),
        "seed": int(config["seed"]),
        "metrics": dict(metrics),
        "train": {
            "dataset_info": config["dataset_info"],
            "data_dir": config.get("data_dir"),
            "train_images": config["train_images"],
            "test_images": config["test_images"],
            "runtime": config["runtime"],
            "images_per_s": round(images_per_s, 1),
            "wall_time_s": round(wall, 1),
        },
        "classes": list(config["dataset_info"]["classes"]),
        "versions": versions(),
        "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def result_document(
    config: Mapping[str, Any],
    checkpoint: Path,
    meta: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    images_per_s: float,
    wall: float,
) -> dict[str, Any]:
    """The run's ``result.json`` (``robustcli-result``, ``kind: train``;
    docs/results-schema.md); ``meta`` is :func:`checkpoint_metadata`'s."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": "train",
        "model": config["model"],
        "provenance": {
            "checkpoint": str(checkpoint),
            "dataset": config["dataset"],
            "recipe": meta["recipe"],
            "seed": meta["seed"],
            "versions": meta["versions"],
            "git_commit": meta["git_commit"],
            "created": meta["created"],
        },
        "metrics": meta["metrics"],
        "epochs": meta["epochs"],
        "history": list(history),
        "wall_time_s": wall,
        "images_per_s": images_per_s,
    }


__all__ = [
    "Reporter",
    "checkpoint_metadata",
    "done_line",
    "epoch_line",
    "final_metrics",
    "git_commit",
    "header",
    "hms",
    "interrupted_line",
    "reporter",
    "result_document",
    "versions",
]
