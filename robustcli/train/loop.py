"""The epoch / step loop, evaluation and checkpoint saving.

One readable loop (in the spirit of airbench / nanoGPT): the whole dataset sits on the device as
uint8, every epoch draws one permutation plus crop offsets and flip bits from a seeded generator
(``robustcli.data.DeviceBatches``), and each step is one gather, one forward / backward under
bf16 autocast where the hardware has it, and one SGD step at the learning rate the schedule
gives for that step (:func:`robustcli.train.recipes.learning_rate`, looked up here at every
step). After each epoch the model, optimiser and RNG states go to ``last.safetensors``
(:func:`save_epoch_state`), so a resumed CPU run ends with the weights of an uninterrupted one;
nothing non-finite is ever saved (:class:`TrainingDivergedError`).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustcli import runtime
from robustcli.checkpoint import (
    load_training_state,
    model_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
    save_training_state,
)
from robustcli.data import DeviceBatches, InputAdapter, eval_batches
from robustcli.errors import RobustError
from robustcli.registry import build_from_config
from robustcli.train.config import EpochCallback
from robustcli.train.recipes import learning_rate
from robustcli.train.report import Reporter, interrupted_line
from robustcli.train.rundir import RunDir, write_metrics


class TrainingDivergedError(RobustError):
    """The loss or the weights became NaN or infinite; nothing non-finite was saved."""


@dataclass
class Session:
    """Everything the loop reads, and the history it extends.

    ``model`` is the plain module (its state is what is saved); ``net`` is what the steps call
    (``model`` wrapped in DDP and/or ``torch.compile``). ``rundir`` is ``None`` on ranks other
    than 0 and for in-memory runs: only then is nothing written.
    """

    info: runtime.DistInfo
    dev: torch.device
    precision: str
    channels_last: bool
    hp: Mapping[str, Any]
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    batches: DeviceBatches
    gen: torch.Generator
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    out: Path | None
    rundir: RunDir | None
    eval_every: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    elapsed_before: float = 0.0
    resume_note: str = ""  # said in the log's first line (a resume on another device type)

    @property
    def writes(self) -> bool:
        return self.rundir is not None and self.info.is_main

    @property
    def epochs(self) -> int:
        return int(self.hp["epochs"])

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)


# ---- model, optimiser, resume ------------------------------------------------------------------


def build_model(
    config: Mapping[str, Any],
    dev: torch.device,
    info: runtime.DistInfo,
    *,
    precision: str,
    channels_last: bool,
    compile: bool,
) -> tuple[nn.Module, nn.Module]:
    """(the plain model, what the steps call) for ``config``: synced BatchNorm, dtype, memory
    format, DDP under torchrun, ``torch.compile`` when asked. Seed the RNGs first."""
    model = build_from_config(config["backbone"], config["model_config"])
    model = runtime.sync_batchnorm(model, dev, info)
    model = model.to(runtime.param_dtype(precision))
    model, _ = runtime.prepare_model(model, dev, channels_last=channels_last, compile=False)
    net: nn.Module = runtime.wrap_ddp(model, dev, info)
    if compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return model, net


def make_optimizer(model: nn.Module, hp: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD with the recipe's momentum, Nesterov and weight decay (the lr is set every step)."""
    return torch.optim.SGD(
        _param_groups(model, hp),
        lr=float(hp["lr"]),
        momentum=float(hp["momentum"]),
        nesterov=bool(hp["nesterov"]) and float(hp["momentum"]) > 0,
    )


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


def restore_state(s: Session, path: Path) -> None:
    """Load model, optimiser, RNG states and history from ``last.safetensors`` into ``s``."""
    tensors, state = load_training_state(path)
    model_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    s.model.load_state_dict(model_tensors, strict=True)
    optimizer_from_tensors(s.optimizer, tensors, state["optimizer"])
    s.start_epoch = int(state["epoch"])
    s.resume_note = _restore_rng(tensors, s.gen, s.dev, s.info, s.start_epoch)
    s.history = list(state["history"])
    s.elapsed_before = float(state.get("elapsed_s", 0.0))


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
    epoch: int,
) -> str:
    """Restore the random streams; returns a note for the log when the data stream is new.

    The data generator lives on the training device, and a CUDA generator's state does not fit
    a CPU one (nor the reverse). A run resumed on another device type therefore draws its
    remaining batches from a new seed, made from the saved state and the epoch (the same for
    every resume of that checkpoint): a valid continuation, not the batches that an
    uninterrupted run would have drawn.
    """
    saved, note = tensors["rng/data"], ""
    if saved.numel() == gen.get_state().numel():
        gen.set_state(saved)
    else:
        digest = hashlib.sha256(saved.numpy().tobytes() + epoch.to_bytes(8, "little")).digest()
        gen.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        note = (
            f"the batch order was saved on another device type: epochs {epoch + 1}+ draw their "
            f"batches on {device.type} from a seed derived from it"
        )
    key = f"rng/torch/{info.rank}"
    if key in tensors:
        torch.set_rng_state(tensors[key])
    ckey = f"rng/cuda/{info.rank}"
    if device.type == "cuda" and ckey in tensors:
        torch.cuda.set_rng_state(tensors[ckey], device)
    return note


# ---- the loop ----------------------------------------------------------------------------------


def run_epochs(
    s: Session, report: Reporter, callbacks: Sequence[EpochCallback], model_name: str
) -> tuple[float, float]:
    """Train the remaining epochs, saving the state after each; return (training images per
    second over all epochs, wall-clock seconds including those before a resume)."""
    train_time = sum(r.get("epoch_train_s", 0.0) for r in s.history)
    train_images = sum(r.get("epoch_images", 0.0) for r in s.history)
    loop_start = time.perf_counter()
    try:
        for epoch in range(s.start_epoch, s.epochs):
            row = _run_epoch(s, epoch, report, loop_start)
            train_time += row["epoch_train_s"]
            train_images += row["epoch_images"]
            s.history.append(row)
            save_epoch_state(s, row)
            runtime.barrier(s.info)
            report.epoch(row, s.epochs)
            for callback in callbacks:
                callback(dict(row))
    except KeyboardInterrupt:
        report.stop()
        if s.writes and s.history:
            print(interrupted_line(model_name, s.out, s.history), file=sys.stderr, flush=True)
        raise
    report.stop()
    ips = train_images / train_time if train_time else 0.0
    return ips, s.elapsed_before + (time.perf_counter() - loop_start)


def _run_epoch(s: Session, epoch: int, report: Reporter, loop_start: float) -> dict[str, float]:
    """One epoch of steps, then the all-ranks statistics and (every ``eval_every``) the test
    split: the epoch's ``metrics.csv`` row."""
    s.model.train()
    t0 = time.perf_counter()
    stats, step_lr = _train_steps(s, epoch, report, t0)
    if s.dev.type == "cuda":
        torch.cuda.synchronize(s.dev)
    t_train = time.perf_counter() - t0
    runtime.all_reduce_sum(stats, s.info)
    n_seen = max(1.0, float(stats[2]))
    # nothing non-finite is saved: the previous epoch's last.safetensors stays
    if not math.isfinite(float(stats[0])) or not _all_finite(s.model):
        raise _diverged(float(stats[0]), epoch + 1, step_lr, s.history, s.out)
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
    if (epoch + 1) % s.eval_every == 0 or epoch + 1 == s.epochs:
        row["test_loss"], row["test_acc"] = evaluate_tensors(
            s.model,
            s.x_test,
            s.y_test,
            mean=s.mean,
            std=s.std,
            batch_size=max(256, s.hp["batch_size"]),
            precision=s.precision,
            channels_last=s.channels_last,
            info=s.info,
        )
    row["epoch_s"] = time.perf_counter() - t0
    row["elapsed_s"] = s.elapsed_before + (time.perf_counter() - loop_start)
    return row


def _train_steps(s: Session, epoch: int, report: Reporter, t0: float) -> tuple[torch.Tensor, float]:
    """The SGD steps of one epoch: (this rank's loss sum, correct, count; the last step's lr).

    The loss is read back (a device sync) only when the display updates, about twice a second,
    which is also when a non-finite loss stops the run early.
    """
    spe = s.steps_per_epoch
    stats = torch.zeros(3, dtype=torch.float64, device=s.dev)  # loss sum, correct, n
    last_show, seen = t0, 0
    step_lr = 0.0
    for i, (x, y, n_global) in enumerate(s.batches):
        step = epoch * spe + i
        step_lr = learning_rate(s.hp, step, spe, s.epochs)
        _sgd_step(s, x, y, n_global, step_lr, stats)
        seen += n_global
        now = time.perf_counter()
        if now - last_show > 0.5 or i == spe - 1:
            last_show = now
            n_loc = max(1.0, float(stats[2]))
            loss_total = float(stats[0])  # the display's sync: no extra one per step
            if not math.isfinite(loss_total) and not s.info.distributed:
                # (with DDP, every rank stops together at the epoch's end instead)
                raise _diverged(loss_total, epoch + 1, step_lr, s.history, s.out)
            report.step(
                epoch + 1,
                s.epochs,
                step + 1,
                {
                    "loss": loss_total / n_loc,
                    "acc": float(stats[1]) / n_loc,
                    "images_per_s": seen / (now - t0),
                },
            )
    return stats, step_lr


def _sgd_step(
    s: Session,
    x: torch.Tensor,
    y: torch.Tensor,
    n_global: int,
    lr: float,
    stats: torch.Tensor,
) -> None:
    """One forward / backward / SGD step at ``lr``; adds loss sum, correct and count to
    ``stats`` (on the device: no sync)."""
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    if s.precision == "fp64":
        x = x.double()
    with runtime.autocast(s.dev, s.precision):
        logits = s.net(x)
    loss_sum = F.cross_entropy(
        logits.float(), y, reduction="sum", label_smoothing=float(s.hp["label_smoothing"])
    )
    # DDP averages gradients over ranks: scaling by world / global batch makes the update
    # that of the mean loss over the global batch, also for uneven shares
    loss = loss_sum * (s.info.world_size / n_global)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    with torch.no_grad():
        stats[0] += loss_sum.detach().double()
        stats[1] += (logits.detach().argmax(1) == y).sum()
        stats[2] += y.numel()


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


# ---- divergence --------------------------------------------------------------------------------


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


# ---- checkpoints -------------------------------------------------------------------------------


def save_epoch_state(s: Session, row: Mapping[str, float]) -> None:
    """After an epoch: ``last.safetensors`` (model, optimiser, RNG states of every rank) and
    ``metrics.csv``; the first one publishes a staged run onto the run folder."""
    state_tensors = {f"model/{k}": v for k, v in model_state(s.model).items()}
    opt_tensors, opt_info = optimizer_to_tensors(s.optimizer)
    state_tensors.update(opt_tensors)
    state_tensors.update(_rng_tensors(s.gen, s.dev, s.info))  # a collective: every rank
    if not s.writes:
        return
    assert s.rundir is not None
    save_training_state(
        s.rundir.path / "last.safetensors",
        state_tensors,
        {
            "epoch": int(row["epoch"]),
            "history": s.history,
            "optimizer": opt_info,
            "elapsed_s": row["elapsed_s"],
            "world_size": s.info.world_size,
        },
    )
    write_metrics(s.rundir.path / "metrics.csv", s.history)
    s.rundir.publish()  # a new run replaces the folder's old one only now


def save_model(
    path: Path,
    model: nn.Module,
    config: Mapping[str, Any],
    adapter: InputAdapter,
    meta: Mapping[str, Any],
) -> None:
    """The final ``model.safetensors``: weights plus what rebuilds, feeds and describes the
    model (``robustcli.checkpoint.load_checkpoint`` reads it)."""
    save_checkpoint(
        path,
        model,
        model_name=config["model"],
        config=config["model_config"],
        dataset=config["dataset"],
        normalization=config["normalization"],
        input=adapter,
        backbone=config["backbone"],
        extra=dict(meta),
    )


__all__ = [
    "Session",
    "TrainingDivergedError",
    "build_model",
    "evaluate_tensors",
    "make_optimizer",
    "restore_state",
    "run_epochs",
    "save_epoch_state",
    "save_model",
]
