"""``train()``: the public entry point, and the steps of one run.

``train`` checks its arguments, joins the process group under ``torchrun``, locks and prepares
the run folder on rank 0 (:mod:`robustcli.train.rundir`) and runs :func:`_train`, whose steps are
named: configure (:mod:`robustcli.train.config`), load the data, set up the session (batches,
model, optimiser, resumed state), run the epochs (:mod:`robustcli.train.loop`) and write the
final checkpoint and ``result.json`` (:mod:`robustcli.train.report` builds the documents).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from robustcli import runtime
from robustcli.data import DeviceBatches, InputAdapter, adapt_images, load_dataset
from robustcli.errors import RobustError
from robustcli.io import atomic_write_json
from robustcli.registry import get_model_spec
from robustcli.train.config import (
    NORMALIZE_MODES,
    EpochCallback,
    TrainRequest,
    check_numbers,
    configure,
)
from robustcli.train.loop import (
    Session,
    build_model,
    make_optimizer,
    restore_state,
    run_epochs,
    save_model,
)
from robustcli.train.report import (
    Reporter,
    checkpoint_metadata,
    done_line,
    final_metrics,
    header,
    reporter,
    result_document,
)
from robustcli.train.rundir import RunDir, on_rank0, open_run_dir


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
    normalize: str | None = None,
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
        recipe: ``fast`` (default), ``ranabhat2025`` (old name ``paper-a``), ``strisciuglio``
            or ``topdown`` (``robustcli.train.RECIPES``).
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
        normalize: input normalisation stored with the model: ``dataset`` (default; the
            dataset's mean and std), ``mean`` (mean subtraction only) or ``none`` (pixels in
            [0, 1], the input of Lelekas et al. 2020 on MNIST).
        eval_every: evaluate on the test split every N epochs (and after the last).
        progress: ``auto`` (Rich bar on a terminal, log lines otherwise), ``rich``, ``plain``,
            ``none``/``False``.
        callbacks: called with each epoch's metrics row after its state is saved.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this runs DDP: every rank draws the same global
    batches and keeps its share; BatchNorm uses global-batch statistics.
    """
    check_numbers(
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
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise RobustError(
            f"--normalize {normalize!r} is unknown: give one of {', '.join(NORMALIZE_MODES)}"
        )
    out_path = None if out is None else Path(out).expanduser()
    if resume and out_path is None:
        raise RobustError("--resume needs --out: the run folder to continue")
    req = TrainRequest(
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
        normalize=normalize,
        eval_every=int(eval_every),
        progress=progress,
        callbacks=callbacks,
    )
    info = runtime.init_distributed(device)
    try:
        with contextlib.ExitStack() as stack:
            # rank 0 writes: it holds the run folder's lock until the end
            rundir = open_run_dir(stack, out_path, info, resume=resume, force=force)
            return _train(req, info, rundir)
    finally:
        runtime.teardown_distributed(info)


def _train(req: TrainRequest, info: runtime.DistInfo, rundir: RunDir | None) -> TrainResult:
    """One run, step by step (the run folder, if any, is locked and prepared)."""
    t_start = time.perf_counter()
    dev = runtime.resolve_device(req.device, info)
    config, data_dir = configure(req, dev, info)
    data = _load_data(config, data_dir, dev, info)
    s = _start_session(req, config, data, dev, info, rundir)
    if s.writes and not req.resume:
        assert rundir is not None
        atomic_write_json(rundir.path / "config.json", config)
    report = reporter(req.progress, info)
    spe = s.steps_per_epoch
    first = header(config, req.out, info, s.start_epoch, s.resume_note)
    report.start(first, spe * s.epochs, spe * s.start_epoch)
    ips, wall = run_epochs(s, report, req.callbacks, config["model"])
    return _finish(s, config, data.adapter, report, ips=ips, wall=wall, t_start=t_start)


class _Data(NamedTuple):
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    adapter: InputAdapter


def _load_data(
    config: dict[str, Any], data_dir: str | None, dev: torch.device, info: runtime.DistInfo
) -> _Data:
    """Both splits on the device as uint8, limited and adapted to the model's input shape;
    records the split sizes in ``config``."""

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_dataset(config["dataset"], split, data_dir)

    if info.distributed:  # a download must happen once, before the other ranks look
        on_rank0(info, lambda: (load("train"), None)[1])
    x_train, y_train = load("train")
    x_test, y_test = load("test")
    if config.get("train_limit"):
        x_train, y_train = x_train[: config["train_limit"]], y_train[: config["train_limit"]]
    if config.get("test_limit"):
        x_test, y_test = x_test[: config["test_limit"]], y_test[: config["test_limit"]]
    adapter = InputAdapter.from_dict(config["input"])
    x_train = adapt_images(x_train.to(dev), adapter)
    x_test = adapt_images(x_test.to(dev), adapter)
    config["train_images"], config["test_images"] = int(x_train.shape[0]), int(x_test.shape[0])
    return _Data(x_train, y_train.to(dev), x_test, y_test.to(dev), adapter)


def _start_session(
    req: TrainRequest,
    config: dict[str, Any],
    data: _Data,
    dev: torch.device,
    info: runtime.DistInfo,
    rundir: RunDir | None,
) -> Session:
    """Batches, model and optimiser (in this order: the seeds make it reproducible), and the
    saved state when resuming."""
    hp = config["hyperparameters"]
    rt = config["runtime"]
    run_seed = int(config["seed"])
    mean, std = config["normalization"]["mean"], config["normalization"]["std"]
    gen = runtime.data_generator(run_seed, dev)
    batches = DeviceBatches(
        data.x_train,
        data.y_train,
        mean=mean,
        std=std,
        batch_size=hp["batch_size"],
        augment=hp["augment"],
        generator=gen,
        channels_last=rt["channels_last"],
        info=info,
    )
    config["steps_per_epoch"] = len(batches)
    runtime.seed_everything(run_seed, info)
    model, net = build_model(
        config,
        dev,
        info,
        precision=rt["precision"],
        channels_last=rt["channels_last"],
        compile=req.compile,
    )
    s = Session(
        info=info,
        dev=dev,
        precision=rt["precision"],
        channels_last=rt["channels_last"],
        hp=hp,
        model=model,
        net=net,
        optimizer=make_optimizer(model, hp),
        batches=batches,
        gen=gen,
        x_test=data.x_test,
        y_test=data.y_test,
        mean=mean,
        std=std,
        out=req.out,
        rundir=rundir,
        eval_every=req.eval_every,
    )
    if req.resume:
        assert req.out is not None
        restore_state(s, req.out / "last.safetensors")
    return s


def _finish(
    s: Session,
    config: dict[str, Any],
    adapter: InputAdapter,
    report: Reporter,
    *,
    ips: float,
    wall: float,
    t_start: float,
) -> TrainResult:
    """Write ``model.safetensors`` and ``result.json`` (rank 0) and return the result."""
    metrics = final_metrics(s.history)
    checkpoint_path = None
    s.model.eval()
    if s.writes:
        assert s.rundir is not None
        checkpoint_path = s.rundir.path / "model.safetensors"
        meta = checkpoint_metadata(config, metrics, ips, wall)
        save_model(checkpoint_path, s.model, config, adapter, meta)
        atomic_write_json(
            s.rundir.path / "result.json",
            result_document(config, checkpoint_path, meta, s.history, ips, wall),
        )
        report.done(done_line(time.perf_counter() - t_start, metrics, checkpoint_path))
    runtime.barrier(s.info)
    return TrainResult(
        model=s.model,
        config=config,
        metrics=metrics,
        history=s.history,
        out=s.out,
        checkpoint=checkpoint_path,
        wall_time_s=wall,
        images_per_s=ips,
        resumed_from_epoch=s.start_epoch,
    )


__all__ = ["TrainResult", "train"]
