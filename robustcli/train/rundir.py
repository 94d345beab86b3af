"""The run folder: preparing it, the ``--force`` staging swap, its lock, ``config.json``.

A new run is built in a hidden staging folder beside ``out`` (``.<name>.XXXXXXXX.new``) and
renamed onto ``out`` after its first epoch (:meth:`RunDir.publish`), so ``force=True`` (which
replaces only a folder ``robust train`` wrote) loses nothing when the new run fails early; a
replaced run passes through ``.<name>.XXXXXXXX.old``. Both are in the same parent (same file
system: renames are atomic) and are ours to clean up after a kill (:func:`prepare_out`).
:func:`open_run_dir` takes the folder's lock on rank 0 and holds it for the whole run
(docs/training.md, "Run folders").
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustcli import runtime
from robustcli.errors import OutputExistsError, RobustError
from robustcli.io import (
    atomic_write,
    check_writable,
    output_lock,
    remove_stale_tmp,
    stale_tmp_files,
)

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


# ---- config.json ------------------------------------------------------------------------------


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


# ---- the staging and replaced folders beside the run folder ---------------------------------


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
class RunDir:
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


# ---- preparing the run folder -----------------------------------------------------------------


def prepare_out(out: Path, *, resume: bool, force: bool) -> RunDir:
    """Check ``out`` and choose where the run writes. Call with :func:`output_lock` held."""
    check_writable(out)
    check_writable(out.parent)  # staging folder and renames
    _recover_side_folders(out)
    if resume:
        return _prepare_resume(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder: choose another --out")
    replace = False
    if out.is_dir():
        ours, others = _own_entries(out)
        if others or any(p.name in RUN_FILES for p in ours):
            _check_replaceable(out, force=force)
            replace = True
            out = out.resolve()  # a symlinked run folder: replace its target, keep the link
        else:
            remove_stale_tmp(out, RUN_FILES)  # only our temporary files: an empty folder
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; run folders get the usual mode
    return RunDir(out, staging, staging=True, replace=replace)


def _prepare_resume(out: Path) -> RunDir:
    if not (out / "last.safetensors").is_file() or not (out / "config.json").is_file():
        raise RobustError(
            f"nothing to resume in {out}: it has no last.safetensors / config.json; "
            "start the run without --resume"
        )
    read_run_config(out)
    remove_stale_tmp(out, RUN_FILES)  # left by a kill during a write
    return RunDir(out, out)


def _check_replaceable(out: Path, *, force: bool) -> None:
    """Refuse a non-empty ``out`` unless it is a run folder and ``force`` is given."""
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_run_dir(
    stack: contextlib.ExitStack,
    out: Path | None,
    info: runtime.DistInfo,
    *,
    resume: bool,
    force: bool,
) -> RunDir | None:
    """Lock and prepare ``out`` on rank 0 (``None``: nothing is written, no folder).

    The lock and the discarding of an unpublished staging folder are registered on ``stack``:
    rank 0 holds the run folder's lock until the run ends, and a run that fails before its
    first checkpoint leaves ``out`` as it was. Other ranks get rank 0's :class:`RunDir` (they
    never write) or its error.
    """
    if out is None:
        return None

    def lock_and_prepare() -> RunDir:
        check_writable(out)  # before the lock file is made beside it
        stack.enter_context(output_lock(out))
        rundir = prepare_out(out, resume=resume, force=force)
        stack.callback(rundir.discard)  # a run that fails before its first checkpoint
        return rundir

    return on_rank0(info, lock_and_prepare)


def on_rank0(info: runtime.DistInfo, fn: Callable[[], Any]) -> Any:
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


# ---- metrics.csv -------------------------------------------------------------------------------


def write_metrics(path: Path, history: Iterable[Mapping[str, float]]) -> None:
    """Write ``metrics.csv`` (one row per epoch, :data:`METRIC_COLUMNS`) atomically."""
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


__all__ = [
    "CONFIG_SCHEMA",
    "METRIC_COLUMNS",
    "RUN_FILES",
    "RunDir",
    "is_run_folder",
    "on_rank0",
    "open_run_dir",
    "prepare_out",
    "read_run_config",
    "write_metrics",
]
