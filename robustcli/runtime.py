"""Where and how tensors run: the one place for devices, precision, memory format and DDP.

Every command (train, eval-c, attack) asks this module instead of deciding on its own:

- ``resolve_device("auto")``: ``cuda:<LOCAL_RANK>`` when a GPU is present, else the CPU.
- ``resolve_precision("auto", device)``: bf16 autocast where the hardware multiplies bf16 natively
  (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), fp32 elsewhere. ``autocast(...)`` is the
  matching context manager; weights, optimiser state and the loss stay in fp32.
- ``prepare_model(model, device, channels_last=..., compile=...)``: placement, NHWC memory
  format (faster convolutions on GPUs and on oneDNN CPUs) and optional ``torch.compile``.
- ``init_distributed()`` / ``teardown_distributed()``: ``torchrun`` sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; NCCL on GPUs, gloo on CPUs.
- ``sync_batchnorm(model, dist)``: BatchNorm over the *global* batch under DDP. On GPUs this is
  ``torch.nn.SyncBatchNorm``; PyTorch's SyncBatchNorm refuses CPU tensors, so on CPU (gloo) the
  BatchNorm layers become ``AllReduceBatchNorm2d``, which all-reduces the per-channel sums. Both
  make a DDP step equal to a single-process step on the same global batch, up to the order of
  floating-point sums.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustcli.errors import RobustError

PRECISIONS = ("auto", "bf16", "fp32", "fp64")


# --------------------------------------------------------------------------------------------
# Distributed context
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise RobustError(f"environment variable {name} must be an integer") from None


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment.

    Without ``WORLD_SIZE`` > 1 this returns a single-process ``DistInfo`` and starts nothing. If a
    process group already exists (e.g. a caller set it up), it is reused and left alone by
    ``teardown_distributed``. The backend is NCCL for CUDA devices, gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            _env_int("LOCAL_RANK", 0),
            dist.get_backend(),
            initialized_here=False,
        )
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    if not dist.is_available():
        raise RobustError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed support")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    wants_cuda = device is None or str(device).startswith(("auto", "cuda"))
    backend = "nccl" if (wants_cuda and torch.cuda.is_available()) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    except (RuntimeError, ValueError) as exc:
        raise RobustError(
            f"could not join the torch.distributed job ({exc}): launch with `torchrun "
            "--nproc_per_node N --no-python robust train ...`"
        ) from None
    return DistInfo(rank, world, local_rank, backend, initialized_here=True)


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op in a single process)."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (JSON-like objects only)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_tensors(tensor: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on all ranks), in rank order."""
    if not info.distributed:
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(out, tensor)
    return out


# --------------------------------------------------------------------------------------------
# Device, precision, memory format
# --------------------------------------------------------------------------------------------


def resolve_device(
    device: str | torch.device | None = "auto", info: DistInfo = SINGLE
) -> torch.device:
    """``"auto"`` -> this rank's GPU if CUDA is available, else the CPU; ``"cuda"`` -> this
    rank's GPU; anything else is passed to ``torch.device`` (an unavailable GPU is an error)."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobustError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RobustError(
                f"device {name!r} requested but CUDA is not available: use --device cpu"
            )
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank if info.distributed else 0)
        if dev.index >= torch.cuda.device_count():
            raise RobustError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s)")
    return dev


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where oneDNN runs bf16 convolutions natively."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where the device computes bf16 natively, else ``"fp32"``.

    ``"fp64"`` (never chosen automatically) runs the model in double precision: slow, for
    numerical checks such as comparing DDP with single-process training. An explicit ``"bf16"``
    on a CPU without native bf16 is kept but warned about: there it is emulated (ResNet32
    training on a 2-core AVX2 EPYC: 9-11 images/s for each of two runs side by side, 165 in
    fp32 for one run on both cores).
    """
    if precision not in PRECISIONS:
        raise RobustError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RobustError("this GPU has no bf16 support: use --precision fp32")
        if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "--precision bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated there, "
                "many times slower than fp32; --precision auto picks fp32 on this CPU",
                RuntimeWarning,
                stacklevel=2,
            )
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def param_dtype(precision: str) -> torch.dtype:
    """dtype of the weights (and of the batches fed to them) for a resolved precision."""
    return torch.float64 if precision == "fp64" else torch.float32


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for ``precision == "bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def default_channels_last(device: torch.device) -> bool:
    """NHWC is faster for convolutions on GPUs (tensor cores) and on oneDNN CPUs."""
    return device.type in ("cuda", "cpu")


def prepare_model(
    model: nn.Module,
    device: torch.device,
    *,
    channels_last: bool = False,
    compile: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """Move ``model`` to ``device`` (NHWC if ``channels_last``) and optionally compile it.

    Returns ``(model, runner)``: ``model`` is the plain module (its ``state_dict`` has the
    registry's key names), ``runner`` is what to call (the compiled module or the same object).
    """
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    runner: nn.Module = model
    if compile:
        if not hasattr(torch, "compile"):
            raise RobustError("--compile needs PyTorch >= 2.0")
        runner = torch.compile(model)  # type: ignore[assignment]
    return model, runner


def seed_everything(seed: int, info: DistInfo = SINGLE) -> None:
    """Seed Python, NumPy and torch. Each rank gets ``seed + rank`` for its global RNG (dropout);
    data order and augmentation use their own generator seeded with ``seed`` on every rank."""
    s = int(seed) + info.rank
    random.seed(s)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(s % 2**32)
    torch.manual_seed(s)


def data_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` for shuffling and augmentation (same stream on every rank)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` + ``torch.inference_mode()``, restoring the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# BatchNorm over the global batch under DDP
# --------------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def _all_reduce_sum_autograd(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)  # type: ignore[no-any-return]


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all ranks (gloo/CPU capable).

    Two all-reduces per forward (sum, then centred sum of squares), both differentiable (the
    backward all-reduces the gradient), so the gradient equals that of a BatchNorm on the
    concatenated global batch. Running statistics use the global mean and unbiased variance,
    exactly as a single process would. Outside training, or without a process group, it is an
    ordinary BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        all_reduce = _all_reduce_sum_autograd
        dims = [0, 2, 3]
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr, operator]
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0
                    / float(
                        self.num_batches_tracked  # type: ignore[arg-type]
                    )
                )
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)  # type: ignore[union-attr]
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def _convert_allreduce_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, AllReduceBatchNorm2d):
        out = AllReduceBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device=module.weight.device if module.affine else None,
        )
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_allreduce_bn(child))
    return out


def sync_batchnorm(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """Make BatchNorm use global-batch statistics when ``info`` is a multi-process job.

    The returned module keeps parameter and buffer names, so checkpoints are unaffected.
    """
    if not info.distributed:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_allreduce_bn(model)


def wrap_ddp(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` in a multi-process job, else ``model``."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Versions and host facts recorded in every result document; with ``device``, also the GPU
    name (CUDA) or the CPU."""
    import numpy as np

    import robustcli

    env: dict[str, Any] = {
        "robustcli": robustcli.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    if device is not None and device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    elif device is not None:
        env["cpu"] = platform.processor() or platform.machine()
    return env
