"""CIFAR-10-C evaluation (``robust eval-c``): accuracy under common corruptions.

The pieces, each usable on its own:

- ``select_corruptions("common" | "all" | "noise" | "fog,blur" ...)``, ``parse_severities("1-5")``.
- ``resolve_checkpoint(path_or_name)``: a ``model.safetensors``, its run folder, or a registered
  model name whose checkpoint is stored under ``checkpoint_home()/<name>/model.safetensors``.
- ``prepare_for_inference(model, device)``: a copy in eval mode with every layer that has an
  exactly equal cheaper form replaced by it (see below), in channels-last memory format.
- ``OfficialSource`` (the Zenodo files, memory-mapped) and ``GeneratedSource`` (corrupted on the
  fly from clean images with ``robustcli.corruptions``, seeded): where the images come from.
- ``evaluate_corruptions(model, source, ...) -> Tally``: correct / total counts per (corruption,
  severity) and on the clean images; batched, under ``torch.inference_mode``, bf16 autocast on
  GPUs, sharded over ``torchrun`` ranks (each rank takes every world-size-th chunk of work, the
  counts are all-reduced).
- ``summarize(tally)``, ``corruption_errors(result, baseline)``: the metrics;
  ``eval_c_document(...)``: the versioned result JSON; ``unaggregated_frame(doc)``: RobustBench's
  ``unaggregated_results.csv`` layout; ``write_eval_c(doc, out, force)``.
- ``run_eval_c(checkpoint, ...)``: all of the above, what the CLI calls.

Accuracies in the result document are percentages (RobustBench's JSON uses percentages, its
unaggregated CSV fractions; so do we).

Layers replaced for inference, each exactly equal in real arithmetic (tests check the outputs
agree to float rounding):

- ``PushPullConv2d`` without rectification and without attention is linear:
  ``X*K - alpha*X*(-up(K)) = X*(pad(K) + alpha*up(K))``, one convolution with the folded kernel.
- ``MultiScalePushPull``: each ``V_s = U_p - alpha*U_q^s`` is likewise one convolution.
- A convolution whose only consumer is an eval-mode ``BatchNorm2d`` absorbs it (scale and shift
  folded into weight and bias); also the 1x1 fusion convolution of a folded MSPP layer.
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.corruptions import COMMON, CORRUPTIONS, GROUPS, SEVERITIES, corrupt
from robustcli.errors import CheckpointError, DataError, RobustError
from robustcli.io import (
    atomic_write,
    atomic_write_json,
    check_output,
    file_sha256,
    output_lock,
    strict_json,
)
from robustcli.layers.attention import SimAM, SqueezeExcitation
from robustcli.layers.multiscale import MultiScalePushPull
from robustcli.layers.pushpull import PushPullConv2d, pull_kernel, use_fused
from robustcli.progress import progress_bar
from robustcli.runtime import (
    SINGLE,
    DistInfo,
    all_reduce_sum,
    autocast,
    environment,
    init_distributed,
    resolve_device,
    teardown_distributed,
)

SCHEMA = "robustcli-result"
SCHEMA_VERSION = 1
KIND = "eval-c"
CHECKPOINTS_ENV = "ROBUSTCLI_CHECKPOINTS"
#: Images per generator chunk; equal to ``generate_dataset``'s default so that ``--generate``
#: evaluates exactly the images ``robust corrupt`` / ``generate_dataset`` would write.
GENERATION_CHUNK = 1000
SELECTION_WORDS = ("common", "all", *GROUPS)


# --------------------------------------------------------------------------------------------
# What to evaluate
# --------------------------------------------------------------------------------------------


def select_corruptions(spec: str | Sequence[str] = "common") -> list[str]:
    """Corruption names from a selection: ``common`` (the 15), ``all`` (19), a group (``noise``,
    ``blur``, ``weather``, ``digital``, ``extra``), corruption names, or a comma-separated mix.
    Returned in the recipe's order, without duplicates."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for raw in tokens:
        token = raw.strip().lower().replace("-", "_")
        if not token:
            continue
        if token == "common":
            chosen.update(COMMON)
        elif token == "all":
            chosen.update(CORRUPTIONS)
        elif token in GROUPS:
            chosen.update(GROUPS[token])
        elif token in CORRUPTIONS:
            chosen.add(token)
        else:
            close = difflib.get_close_matches(token, [*SELECTION_WORDS, *CORRUPTIONS], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise RobustError(
                f"unknown corruption selection {raw.strip()!r}: {hint}use common, all, "
                f"{', '.join(GROUPS)} or corruption names ({', '.join(CORRUPTIONS[:3])}, ...)"
            )
    if not chosen:
        raise RobustError("no corruptions selected: pass --corruptions common (or all, noise, ...)")
    return [c for c in CORRUPTIONS if c in chosen]


def parse_severities(spec: str | int | Sequence[int] = "1-5") -> list[int]:
    """Severities from ``"1-5"``, ``"3"``, ``"1,3,5"``, ``"1-2,5"`` or a list; sorted, unique."""
    out: set[int] = set()
    parts: Iterable[Any] = (
        spec.split(",") if isinstance(spec, str) else ([spec] if isinstance(spec, int) else spec)
    )
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        try:
            if "-" in text:
                lo, hi = (int(v) for v in text.split("-", 1))
                values = range(lo, hi + 1)
            else:
                values = range(int(text), int(text) + 1)
        except ValueError:
            raise RobustError(
                f"invalid severities {spec!r}: use a range like 1-5, or a list like 1,3,5"
            ) from None
        for v in values:
            if v not in SEVERITIES:
                where = f" (in {text!r})" if text != str(v) else ""
                raise RobustError(
                    f"severity {v}{where} is out of range: severities are 1 to 5, e.g. -s 1-5"
                )
            out.add(v)
        if not values:
            raise RobustError(f"empty severity range {text!r}: write it low-high, e.g. 1-5")
    if not out:
        raise RobustError("no severities selected: pass --severities 1-5")
    return sorted(out)


# --------------------------------------------------------------------------------------------
# Checkpoints by path or by registered name
# --------------------------------------------------------------------------------------------


def checkpoint_home(checkpoint_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where stored checkpoints of registered models live: ``checkpoint_dir``, else
    ``$ROBUSTCLI_CHECKPOINTS``, else ``<cache>/checkpoints`` (``~/.cache/robustcli/checkpoints``;
    the cache honours ``$ROBUSTCLI_CACHE`` and ``$XDG_CACHE_HOME``)."""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir).expanduser()
    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV]).expanduser()
    from robustcli.data import cache_dir

    return cache_dir() / "checkpoints"


def stored_checkpoint(name: str, checkpoint_dir: str | os.PathLike[str] | None = None) -> Path:
    """The stored checkpoint of registered model ``name``: ``<home>/<name>/model.safetensors``
    (the file ``robust train -m NAME --out <home>/<name>`` writes)."""
    return checkpoint_home(checkpoint_dir) / name / "model.safetensors"


def resolve_checkpoint(
    spec: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A checkpoint file or run folder as given, or the stored checkpoint of a registered name."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from robustcli.registry import closest_models, list_models

    name = str(spec)
    if name in list_models("*"):
        stored = stored_checkpoint(name, checkpoint_dir)
        if stored.is_file():
            return stored
        raise CheckpointError(
            f"no stored checkpoint for {name!r} at {stored}: train one with `robust train -m "
            f"{name} -d cifar10 --out {stored.parent}`, or pass a checkpoint path"
        )
    hint = closest_models(name)
    did = f" (did you mean {hint[0]}?)" if hint and os.sep not in name else ""
    raise CheckpointError(
        f"{name} is neither a checkpoint file or run folder nor a registered model{did}: check "
        "the path, or run `robust models` for the names"
    )


# --------------------------------------------------------------------------------------------
# Inference form of a model
# --------------------------------------------------------------------------------------------


def _conv_like(
    weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any
) -> nn.Conv2d:
    out_ch, in_ch, kh, kw = weight.shape
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride, padding, bias=bias is not None)
    conv = conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)  # type: ignore[union-attr]
    return conv


def folded_pushpull(layer: PushPullConv2d) -> nn.Conv2d:
    """The single convolution equal to an unrectified, attention-free ``PushPullConv2d``."""
    if layer.rectify != "none" or layer.attention is not None:
        raise ValueError("only unrectified push-pull layers without attention are linear")
    with torch.no_grad():
        kernel = layer.folded_kernel()
    pad = layer.pull_size // 2 - layer.kernel_size // 2 + layer.padding
    return _conv_like(kernel, layer.push.bias, layer.stride, pad)


class FoldedMultiScalePushPull(nn.Module):
    """``MultiScalePushPull`` with each push-pull response ``V_s`` computed by one convolution
    (kernel ``pad(K) + alpha*up_s(K)``): same output, no separate pull pass or subtraction."""

    def __init__(self, layer: MultiScalePushPull) -> None:
        super().__init__()
        push = layer.push
        self.push = copy.deepcopy(push)
        k = push.kernel_size[0]
        with torch.no_grad():
            alpha = layer.effective_alpha().reshape(-1, 1, 1, 1)
            convs = []
            for pull, scale in zip(layer.pulls, layer.scales, strict=True):
                grow = (pull.size - k) // 2
                kernel = F.pad(push.weight, (grow,) * 4) - alpha * pull_kernel(push.weight, scale)
                pad = pull.size // 2 - k // 2 + pull.padding  # as PullResponse pads the pull
                convs.append(_conv_like(kernel, push.bias, pull.stride, pad))
        self.responses = nn.ModuleList(convs)
        self.attention = copy.deepcopy(layer.attention)
        self.fuse = copy.deepcopy(layer.fuse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.cat([self.push(x), *(conv(x) for conv in self.responses)], dim=1)
        if self.attention is not None:
            u = self.attention(u)
        return self.fuse(u)


def fold_pushpull(model: nn.Module, keep_fused_on: torch.device | None = None) -> dict[str, int]:
    """Replace, in place, every push-pull layer that has an exactly equal linear form.

    With ``keep_fused_on``, layers that the fused CPU kernel computes on that device are kept
    (counted as ``kept``): the kernel is faster than their folded 7x7 / 9x9 convolutions.
    """
    counts = {"pushpull": 0, "mspp": 0, "kept": 0}
    probe = None if keep_fused_on is None else torch.zeros(1, device=keep_fused_on)

    def visit(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            linear_pp = (
                isinstance(child, PushPullConv2d)
                and child.rectify == "none"
                and child.attention is None
            )
            if not (linear_pp or isinstance(child, MultiScalePushPull)):
                visit(child)
            elif probe is not None and use_fused(child.pull_impl, probe):
                counts["kept"] += 1
            elif linear_pp:
                setattr(module, name, folded_pushpull(child))
                counts["pushpull"] += 1
            else:
                setattr(module, name, FoldedMultiScalePushPull(child))
                counts["mspp"] += 1

    visit(model)
    return counts


_LEAVES: tuple[type[nn.Module], ...] = (
    PushPullConv2d,
    MultiScalePushPull,
    FoldedMultiScalePushPull,
    SqueezeExcitation,
    SimAM,
)


class _Tracer(torch.fx.Tracer):
    """Traces the backbone's wiring only; push-pull and attention layers stay opaque."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, module_qualified_name)


def _fuse_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn)


def fuse_conv_bn(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold every eval-mode BatchNorm2d into the convolution that alone feeds it.

    Uses torch.fx on the backbone's wiring; a model that cannot be traced (data-dependent
    control flow) is returned unchanged. Returns ``(model, number of BatchNorms folded)``.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception:  # tracing is an optimisation: any failure keeps the eager model
        return model, 0
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        if (
            bn.training
            or bn.running_mean is None
            or not isinstance(src, torch.fx.Node)
            or src.op != "call_module"
            or len(src.users) != 1
            or calls.get(src.target, 0) != 1  # a module called twice shares its weights
        ):
            continue
        owner = modules.get(src.target)
        if isinstance(owner, nn.Conv2d):
            target, attr = src.target, None
        elif isinstance(owner, FoldedMultiScalePushPull | MultiScalePushPull):
            target, attr = src.target, "fuse"
        else:
            continue
        conv = owner if attr is None else getattr(owner, attr)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
            continue
        new = _fuse_bn(conv, bn)
        if attr is None:
            parent_name, _, child = target.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            modules[target] = new
        else:
            setattr(owner, attr, new)
        node.replace_all_uses_with(src)
        graph.erase_node(node)
        fused += 1
    if not fused:
        return model, 0
    graph.lint()
    return torch.fx.GraphModule(model, graph, class_name=type(model).__name__), fused


def prepare_for_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    *,
    channels_last: bool | None = None,
    fold: bool = True,
    keep_fused: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` for evaluation: eval mode, no gradients, exactly equal layers
    folded (``fold``), on ``device``, channels-last (default on CPU and CUDA).

    ``keep_fused`` leaves the linear push-pull layers that the fused CPU kernel computes on
    ``device`` unfolded (faster so; BatchNorms are still folded into the MSPP fusion conv).
    Returns ``(module, report)``; ``report`` says what was folded.
    """
    dev = torch.device(device)
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)  # unwrap DDP
    m = copy.deepcopy(inner).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    report: dict[str, Any] = {
        "pushpull_folded": 0,
        "mspp_folded": 0,
        "pushpull_kept_for_kernel": 0,
        "batchnorm_folded": 0,
    }
    if fold:
        counts = fold_pushpull(m, dev if keep_fused else None)
        report["pushpull_folded"], report["mspp_folded"] = counts["pushpull"], counts["mspp"]
        report["pushpull_kept_for_kernel"] = counts["kept"]
        m, report["batchnorm_folded"] = fuse_conv_bn(m.eval())
    if channels_last is None:
        channels_last = dev.type in ("cpu", "cuda")
    m = m.to(dev)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    report["channels_last"] = bool(channels_last)
    return m.eval(), report


# --------------------------------------------------------------------------------------------
# Where the corrupted images come from
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkItem:
    """One chunk of work: ``load()`` gives uint8 images (N, C, H, W; any strides), int64 labels
    and, per image, the index of its severity in the evaluated list (0 for clean images)."""

    row: int  # corruption index in the tally; -1 for clean images
    size: int
    load: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    label: str = ""


def check_count(option: str, value: int | None) -> None:
    """A count option (``--n-examples``, ``--batch-size``): None, or an integer >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise RobustError(f"{option} must be a whole number of at least 1, got {value!r}")


def check_seed(seed: int) -> None:
    """A generator seed: an integer >= 0 (NumPy's SeedSequence refuses negative ones)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise RobustError(f"--seed must be a whole number of at least 0, got {seed!r}")


def clamp_note(requested: int | None, actual: int, what: str) -> str | None:
    """The line saying that ``-n requested`` was more than there is (None when it was not)."""
    if requested is None or requested <= actual:
        return None
    return f"--n-examples {requested} is more than the {actual} {what}: using all {actual}"


def _first_n(n_available: int, n_examples: int | None, what: str) -> int:
    if n_examples is None:
        return n_available
    if n_examples < 1:
        raise RobustError("--n-examples must be at least 1")
    if n_examples > n_available:
        raise DataError(
            f"--n-examples {n_examples} exceeds the {n_available} images {what}: "
            f"pass --n-examples {n_available} or less"
        )
    return int(n_examples)


class OfficialSource:
    """CIFAR-10-C files (Zenodo layout, or written by ``generate_dataset``), memory-mapped.

    The first ``n_examples`` images of each severity are evaluated (RobustBench's convention);
    work chunks may span severities, so small ``n`` still fills large batches.
    """

    kind = "official"

    def __init__(self, root: str | os.PathLike[str], corruptions: Sequence[str]) -> None:
        from robustcli.corruptions import load_official

        self.root = Path(root).expanduser()
        self.data = load_official(self.root, corruptions)
        self.n_available = self.data.n

    def num_classes_needed(self) -> int:
        return int(self.data.labels.max()) + 1 if self.data.labels.size else 0

    def items(
        self,
        corruptions: Sequence[str],
        severities: Sequence[int],
        n_examples: int | None,
        chunk: int,
    ) -> list[WorkItem]:
        n = _first_n(self.n_available, n_examples, f"per severity in {self.root}")
        missing = [s for s in severities if s not in self.data.severities]
        if missing:
            raise DataError(
                f"{self.root} has no severity {missing[0]} (it holds "
                f"{', '.join(map(str, self.data.severities))}): choose --severities among those"
            )
        labels = torch.from_numpy(self.data.labels[:n].astype(np.int64))
        items = []
        total = n * len(severities)
        for row, name in enumerate(corruptions):
            for start in range(0, total, chunk):
                stop = min(start + chunk, total)
                items.append(
                    WorkItem(
                        row,
                        stop - start,
                        self._loader(name, severities, n, start, stop, labels),
                        name,
                    )
                )
        return items

    def _loader(
        self,
        name: str,
        severities: Sequence[int],
        n: int,
        start: int,
        stop: int,
        labels: torch.Tensor,
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        def load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            parts, ys, sev = [], [], []
            for si, s in enumerate(severities):
                lo, hi = max(start - si * n, 0), min(stop - si * n, n)
                if lo >= hi:
                    continue
                parts.append(self.data.images(name, s)[lo:hi])
                ys.append(labels[lo:hi])
                sev.append(torch.full((hi - lo,), si, dtype=torch.int64))
            nhwc = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])
            x = torch.from_numpy(nhwc).permute(0, 3, 1, 2)  # NCHW view, channels-last strides
            return x, torch.cat(ys), torch.cat(sev)

        return load

    def provenance(self) -> dict[str, Any]:
        meta = self.root / "generation.json"
        info: dict[str, Any] = {
            "source": "official",
            "path": str(self.root.resolve()),
            "n_available": self.n_available,
            "layout": "Zenodo CIFAR-10-C (<corruption>.npy severity-major, labels.npy)",
        }
        if meta.is_file():  # a folder written by generate_dataset: say so, with its seed
            try:
                gen = json.loads(meta.read_text())
                info["source"] = "generated-files"
                info["generation"] = {
                    k: gen.get(k) for k in ("generator", "seed", "batch_size", "device", "torch")
                }
            except (OSError, ValueError):
                pass
        return info


class GeneratedSource:
    """Corrupts clean images on the fly with ``robustcli.corruptions.corrupt``.

    Chunk ``b`` (images ``[1000 b, 1000 (b+1))``) of (corruption, severity) uses a generator
    seeded exactly as ``generate_dataset(..., seed=seed)`` seeds it, so the evaluated images
    are those that ``robust corrupt`` with the same seed writes. Generation runs on ``device``.
    """

    kind = "generated"

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        clean_info: Mapping[str, Any] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(
                f"--generate needs uint8 RGB images (N, 3, H, W), got {images.dtype} "
                f"{tuple(images.shape)}: evaluate a model of an RGB dataset such as cifar10"
            )
        self.images, self.labels = images, labels.to(torch.int64)
        self.seed, self.device = int(seed), torch.device(device)
        self.n_available = images.shape[0]
        self.clean_info = dict(clean_info or {})

    def num_classes_needed(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    def items(
        self,
        corruptions: Sequence[str],
        severities: Sequence[int],
        n_examples: int | None,
        chunk: int,
    ) -> list[WorkItem]:
        n = _first_n(self.n_available, n_examples, "in the clean test set")
        items = []
        for row, name in enumerate(corruptions):
            for si, s in enumerate(severities):
                for b, lo in enumerate(range(0, n, GENERATION_CHUNK)):
                    hi = min(lo + GENERATION_CHUNK, n)
                    items.append(WorkItem(row, hi - lo, self._loader(name, s, si, b, lo, hi), name))
        return items

    def _loader(
        self, name: str, severity: int, si: int, b: int, lo: int, hi: int
    ) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        def load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            from robustcli.corruptions.generate import chunk_seed

            gen = torch.Generator(self.device).manual_seed(chunk_seed(self.seed, name, severity, b))
            x = corrupt(self.images[lo:hi].to(self.device), name, severity, generator=gen)
            sev = torch.full((hi - lo,), si, dtype=torch.int64)
            return x, self.labels[lo:hi], sev

        return load

    def provenance(self) -> dict[str, Any]:
        return {
            "source": "generated",
            "generator": "robustcli.corruptions (make_cifar_c.py recipe, batched torch)",
            "seed": self.seed,
            "chunk": GENERATION_CHUNK,
            "device": str(self.device),
            "from": self.clean_info,
        }


def clean_items(
    images: torch.Tensor, labels: torch.Tensor, n_examples: int | None, chunk: int
) -> list[WorkItem]:
    """Work items for clean accuracy on the first ``n_examples`` images."""
    n = _first_n(images.shape[0], n_examples, "in the clean test set")
    labels = labels.to(torch.int64)

    def loader(lo: int, hi: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return lambda: (images[lo:hi], labels[lo:hi], torch.zeros(hi - lo, dtype=torch.int64))

    return [
        WorkItem(-1, min(lo + chunk, n) - lo, loader(lo, min(lo + chunk, n)), "clean")
        for lo in range(0, n, chunk)
    ]


def subset_indices(labels: torch.Tensor, n: int | None) -> tuple[torch.Tensor | None, str]:
    """Which clean images stand for "the first n": the first n, unless the labels are sorted by
    class (an ImageFolder tree), where the first n would be a single class: then every k-th."""
    total = labels.shape[0]
    if n is None or n >= total:
        return None, "all"
    if bool((labels[1:] >= labels[:-1]).all()):
        idx = torch.floor(torch.arange(n, dtype=torch.float64) * (total / n)).long()
        return idx, f"{n} evenly spaced images (1 in {total / n:.3g}; the set is sorted by class)"
    return torch.arange(n), f"the first {n}"


# --------------------------------------------------------------------------------------------
# The evaluation loop
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Correct / total counts per (corruption, severity) and on clean images."""

    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    correct: np.ndarray  # (C, S) int64
    total: np.ndarray  # (C, S) int64
    clean_correct: int | None = None
    clean_total: int | None = None
    seconds: float = 0.0
    images: int = 0
    report: dict[str, Any] = field(default_factory=dict)

    def accuracy(self) -> np.ndarray:
        """(C, S) accuracies in percent."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * self.correct / self.total

    @property
    def clean_acc(self) -> float | None:
        if not self.clean_total:
            return None
        return 100.0 * float(self.clean_correct or 0) / float(self.clean_total)


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass: 1000 on GPUs; 100 per worker thread on CPUs, where larger
    batches are no faster (their activations no longer fit in the caches)."""
    return 1000 if device.type == "cuda" else 100


class _Prefetch:
    """Loads the next work item in a background thread while the current one runs."""

    def __init__(self, items: Sequence[WorkItem]) -> None:
        self.items = items
        self.pool = ThreadPoolExecutor(max_workers=1) if len(items) > 1 else None

    def __iter__(self) -> Iterator[tuple[WorkItem, tuple[torch.Tensor, ...]]]:
        if self.pool is None:
            for item in self.items:
                yield item, item.load()
            return
        try:
            pending = self.pool.submit(self.items[0].load)
            for i, item in enumerate(self.items):
                data = pending.result()
                if i + 1 < len(self.items):
                    pending = self.pool.submit(self.items[i + 1].load)
                yield item, data
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def evaluate_corruptions(
    model: nn.Module,
    source: OfficialSource | GeneratedSource,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    corruptions: Sequence[str] = tuple(COMMON),
    severities: Sequence[int] = SEVERITIES,
    n_examples: int | None = None,
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool | None = None,
    fold: bool = True,
    adapter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    info: DistInfo = SINGLE,
    progress: bool = False,
    workers: int | None = None,
) -> Tally:
    """Count correct predictions of ``model`` (normalised input) per (corruption, severity).

    ``clean``: uint8 images (N, C, H, W) and labels for clean accuracy, on the same first
    ``n_examples``. ``adapter`` maps dataset images (uint8) to the model's input shape (a
    checkpoint's ``input``). In a ``torchrun`` job (``info``) each rank evaluates every
    world-size-th chunk and the counts are summed over ranks; every rank returns the totals.
    """
    dev = torch.device(device)
    corruptions, severities = tuple(corruptions), tuple(severities)
    bs = int(batch_size or default_batch_size(dev))
    if bs < 1:
        raise RobustError("--batch-size must be at least 1")
    t0 = time.perf_counter()
    net, report = prepare_for_inference(model, dev, channels_last=channels_last, fold=fold)
    cl = report["channels_last"]
    items = source.items(corruptions, severities, n_examples, bs)
    if clean is not None:
        items = clean_items(clean[0], clean[1], n_examples, bs) + items
    mine = items[info.rank :: info.world_size]
    rows = len(corruptions) + 1  # the last row holds the clean counts
    correct = torch.zeros(rows, len(severities), dtype=torch.int64, device=dev)
    total = torch.zeros_like(correct)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1) / std_t

    def run(
        item: WorkItem, data: tuple[torch.Tensor, ...], c: torch.Tensor, t: torch.Tensor
    ) -> None:
        images, labels, sev = data
        row = item.row if item.row >= 0 else rows - 1
        for lo in range(0, images.shape[0], bs):
            x = images[lo : lo + bs].to(dev, non_blocking=True)
            if adapter is not None:
                x = adapter(x)
            x = x.float().mul_(scale).add_(shift)
            x = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            pred = net(x).argmax(1)
            y = labels[lo : lo + bs].to(dev, non_blocking=True)
            s = sev[lo : lo + bs].to(dev, non_blocking=True)
            c[row].index_add_(0, s, (pred == y).long())
            t[row].index_add_(0, s, torch.ones_like(s))

    n_workers = _workers(dev, workers, len(mine))
    bar = _progress_bar(progress and info.is_main)
    with bar:
        task = bar.add_task("eval-c", total=sum(it.size for it in mine))
        if n_workers == 1:
            with torch.inference_mode(), autocast(dev, precision):
                for item, data in _Prefetch(mine):
                    bar.update(task, description=item.label)
                    run(item, data, correct, total)
                    bar.advance(task, item.size)
        else:
            # CPU: whole batches on single-threaded workers scale better than splitting each
            # small convolution over threads (no barrier per operation).

            def work(item: WorkItem) -> tuple[WorkItem, torch.Tensor, torch.Tensor]:
                c, t = torch.zeros_like(correct), torch.zeros_like(total)
                with torch.inference_mode(), autocast(dev, precision):
                    run(item, item.load(), c, t)
                return item, c, t

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            pool = ThreadPoolExecutor(max_workers=n_workers)
            try:
                for item, c, t in pool.map(work, mine):
                    correct += c
                    total += t
                    bar.update(task, description=item.label, advance=item.size)
            finally:  # on an error or Ctrl-C, drop the queued chunks instead of running them
                pool.shutdown(wait=True, cancel_futures=True)
                torch.set_num_threads(threads)
    counts = torch.stack([correct, total])
    all_reduce_sum(counts, info)
    counts_np = counts.cpu().numpy()
    images_done = int(counts_np[1].sum())
    return Tally(
        corruptions=corruptions,
        severities=severities,
        correct=counts_np[0, :-1].copy(),
        total=counts_np[1, :-1].copy(),
        clean_correct=int(counts_np[0, -1, 0]) if clean is not None else None,
        clean_total=int(counts_np[1, -1, 0]) if clean is not None else None,
        seconds=time.perf_counter() - t0,
        images=images_done,
        report={**report, "batch_size": bs, "world_size": info.world_size},
    )


def _workers(device: torch.device, workers: int | None, n_items: int) -> int:
    """Worker threads: on CPU one per torch thread (each single-threaded), else 1."""
    if device.type != "cpu":
        return 1
    n = torch.get_num_threads() if workers is None else int(workers)
    return max(1, min(n, n_items))


def _progress_bar(enabled: bool) -> Any:
    from rich.console import Console

    return progress_bar(
        "{task.description:<18}", console=Console(stderr=True), enabled=enabled, transient=True
    )


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(tally: Tally) -> dict[str, Any]:
    """Accuracies (percent) per (corruption, severity), per corruption (mean over severities),
    per severity (mean over corruptions), per group and overall.

    ``corruptions_acc`` is the plain mean over every evaluated (corruption, severity), as in
    RobustBench; ``mean_common_15`` / ``mean_all_19`` are given only when all 15 / 19 corruptions
    were evaluated; a group mean only when all of its corruptions were.
    """
    acc = tally.accuracy()
    cs, ss = tally.corruptions, tally.severities
    accuracy = {c: {str(s): float(acc[i, j]) for j, s in enumerate(ss)} for i, c in enumerate(cs)}
    per_corruption = {c: float(acc[i].mean()) for i, c in enumerate(cs)}
    per_severity = {str(s): float(acc[:, j].mean()) for j, s in enumerate(ss)}
    present = set(cs)
    groups = {
        g: _mean(per_corruption[c] for c in members) if present.issuperset(members) else None
        for g, members in GROUPS.items()
    }
    return {
        "clean_acc": tally.clean_acc,
        "corruptions_acc": float(acc.mean()),
        "mean_common_15": _mean(per_corruption[c] for c in COMMON)
        if present.issuperset(COMMON)
        else None,
        "mean_all_19": _mean(per_corruption.values()) if present.issuperset(CORRUPTIONS) else None,
        "groups": groups,
        "per_corruption": per_corruption,
        "per_severity": per_severity,
        "accuracy": accuracy,
        "counts": {
            "clean": None
            if tally.clean_total is None
            else [int(tally.clean_correct or 0), int(tally.clean_total)],
            **{
                c: {
                    str(s): [int(tally.correct[i, j]), int(tally.total[i, j])]
                    for j, s in enumerate(ss)
                }
                for i, c in enumerate(cs)
            },
        },
    }


def corruption_errors(result: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Corruption error and relative corruption error of ``result`` against ``baseline`` (both
    eval-c documents), in percent, per corruption and their means (mCE, relative mCE).

    ``CE_c = sum_s err(c,s) / sum_s err_base(c,s)``;
    ``relCE_c = sum_s (err(c,s) - err_clean) / sum_s (err_base(c,s) - err_base_clean)``
    (Hendrycks & Dietterich 2019, with the user's baseline in place of AlexNet). A ratio whose
    denominator is 0 is ``None``; relative CE needs clean accuracy in both documents.
    """
    acc, base = result["accuracy"], baseline.get("accuracy") or {}
    label = baseline.get("model", {}).get("name", "the baseline")
    ce: dict[str, float | None] = {}
    rel: dict[str, float | None] = {}
    clean, base_clean = result.get("clean_acc"), baseline.get("clean_acc")
    for c, per_sev in acc.items():
        if c not in base:
            raise RobustError(
                f"baseline ({label}) has no {c} results: evaluate the baseline with the same "
                "--corruptions and --severities"
            )
        missing = [s for s in per_sev if s not in base[c] or base[c][s] is None]
        if missing:
            raise RobustError(
                f"baseline ({label}) has no {c} severity {missing[0]}: evaluate the baseline "
                "with the same --corruptions and --severities"
            )
        err = [100.0 - per_sev[s] for s in per_sev]
        err_b = [100.0 - base[c][s] for s in per_sev]
        ce[c] = 100.0 * sum(err) / sum(err_b) if sum(err_b) > 0 else None
        if clean is not None and base_clean is not None:
            num = sum(e - (100.0 - clean) for e in err)
            den = sum(e - (100.0 - base_clean) for e in err_b)
            rel[c] = 100.0 * num / den if den != 0 else None
        else:
            rel[c] = None
    return {
        "model": label,
        "ce": ce,
        "relative_ce": rel,
        "mce": _mean(ce.values()) if all(v is not None for v in ce.values()) else None,
        "relative_mce": _mean(rel.values()) if all(v is not None for v in rel.values()) else None,
    }


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An eval-c result document (``--baseline``), checked for its schema and kind."""
    p = Path(path).expanduser()
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(
            f"baseline result {p} not found: pass a JSON written by `robust eval-c --out`"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"baseline result {p} is not readable JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise DataError(
            f"{p} is not a robustcli result (no schema {SCHEMA!r}): pass an eval-c JSON"
        )
    if doc.get("kind") != KIND:
        raise DataError(f"{p} is a {doc.get('kind')!r} result, not eval-c: pass an eval-c JSON")
    if int(doc.get("schema_version", 0)) > SCHEMA_VERSION:
        raise DataError(
            f"{p} has schema version {doc['schema_version']}, newer than this "
            f"robustcli ({SCHEMA_VERSION}): upgrade robustcli"
        )
    return doc


# --------------------------------------------------------------------------------------------
# Result document, tables, files
# --------------------------------------------------------------------------------------------


def eval_c_document(
    tally: Tally,
    *,
    model: Mapping[str, Any],
    provenance: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    baseline_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The versioned JSON result: RobustBench-like fields, the full breakdown and provenance."""
    summary = summarize(tally)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "model": dict(model),
        "provenance": dict(provenance),
        "units": "percent",
        "corruptions": list(tally.corruptions),
        "severities": list(tally.severities),
        "n_examples": int(tally.total[0, 0]) if tally.total.size else 0,
        **summary,
        "baseline": None,
    }
    if baseline is not None:
        doc["baseline"] = {
            "path": str(baseline_path) if baseline_path is not None else None,
            "sha256": file_sha256(baseline_path) if baseline_path is not None else None,
            "clean_acc": baseline.get("clean_acc"),
            **corruption_errors(doc, baseline),
        }
    return strict_json(doc)


def corruption_table(doc: Mapping[str, Any]) -> pd.DataFrame:
    """One row per corruption: group, accuracy per severity, mean; CE columns with a baseline."""
    group_of = {c: g for g, members in GROUPS.items() for c in members}
    base = doc.get("baseline") or {}
    rows = []
    for c in doc["corruptions"]:
        row: dict[str, Any] = {"corruption": c, "group": group_of.get(c, "")}
        for s in doc["severities"]:
            row[f"s{s}"] = doc["accuracy"][c][str(s)]
        row["mean"] = doc["per_corruption"][c]
        if base:
            row["CE"] = base["ce"].get(c)
            row["rel. CE"] = base["relative_ce"].get(c)
        rows.append(row)
    mean_row: dict[str, Any] = {"corruption": "mean", "group": ""}
    for s in doc["severities"]:
        mean_row[f"s{s}"] = doc["per_severity"][str(s)]
    mean_row["mean"] = doc["corruptions_acc"]
    if base:
        mean_row["CE"] = base.get("mce")
        mean_row["rel. CE"] = base.get("relative_mce")
    rows.append(mean_row)
    df = pd.DataFrame(rows)
    numeric = [c for c in df.columns if c not in ("corruption", "group")]
    return df.astype({c: float for c in numeric})


def summary_table(doc: Mapping[str, Any]) -> pd.DataFrame:
    """The headline numbers as (metric, value) rows; absent metrics are left out."""
    rows: list[tuple[str, float | None]] = [
        ("clean accuracy", doc.get("clean_acc")),
        (f"mean over {len(doc['corruptions'])} corruptions", doc.get("corruptions_acc")),
        ("mean, 15 common", doc.get("mean_common_15")),
        ("mean, all 19", doc.get("mean_all_19")),
    ]
    rows += [(f"{g} (mean)", v) for g, v in (doc.get("groups") or {}).items()]
    base = doc.get("baseline")
    if base:
        rows += [
            (f"mCE vs {base['model']}", base.get("mce")),
            (f"relative mCE vs {base['model']}", base.get("relative_mce")),
        ]
    kept = [(k, v) for k, v in rows if v is not None]
    return pd.DataFrame(kept, columns=["metric", "value"]).astype({"value": float})


def unaggregated_frame(doc: Mapping[str, Any], label: str | None = None) -> pd.DataFrame:
    """RobustBench's ``unaggregated_results.csv`` layout: one row per model (index = name), a
    (corruption, severity) column per cell, accuracies as fractions. ``to_csv()`` writes the two
    header rows (corruptions, then severities)."""
    cols = [(c, s) for c in doc["corruptions"] for s in doc["severities"]]
    values = [doc["accuracy"][c][str(s)] / 100.0 for c, s in cols]
    name = label or doc.get("model", {}).get("name", "model")
    return pd.DataFrame([values], index=[name], columns=pd.MultiIndex.from_tuples(cols))


def output_paths(out: str | os.PathLike[str]) -> dict[str, Path]:
    """``--out FILE``: the JSON at FILE (``.json`` added if missing), the CSV beside it."""
    p = Path(out).expanduser()
    if p.suffix.lower() != ".json":
        p = p.with_name(p.name + ".json")
    return {"json": p, "csv": p.with_suffix(".csv")}


def check_outputs(out: str | os.PathLike[str], force: bool) -> dict[str, Path]:
    """Refuse existing outputs (before any work) unless ``force``."""
    paths = output_paths(out)
    for p in paths.values():
        check_output(p, force)
    return paths


def write_eval_c(
    doc: Mapping[str, Any], out: str | os.PathLike[str], force: bool = False
) -> dict[str, Path]:
    """Write the JSON and the unaggregated CSV atomically; returns their paths. Another process
    writing the same output meanwhile is refused (``output_lock``), so the pair stays one run's."""
    with output_lock(output_paths(out)["json"]):
        paths = check_outputs(out, force)  # again under the lock
        frame = unaggregated_frame(doc)
        with atomic_write(paths["csv"]) as fh:
            fh.write(frame.to_csv())
        atomic_write_json(paths["json"], doc)
    return paths


# --------------------------------------------------------------------------------------------
# The whole command
# --------------------------------------------------------------------------------------------


def _clean_provenance(
    dataset: str, data_dir: str | os.PathLike[str] | None, label: str | None, subset: str
) -> dict[str, Any]:
    info: dict[str, Any] = {"dataset": dataset, "split": "test", "subset": subset}
    if data_dir is not None:
        root = Path(data_dir).expanduser().resolve()
        info["path"] = str(root)
        info["format"] = "imagefolder" if (root / "train").is_dir() else "torchvision"
    else:
        from robustcli.data import cache_dir

        info["path"] = str(cache_dir() / dataset)
        info["format"] = "torchvision"
    info["label"] = label or f"{dataset} test split ({info['format']} files at {info['path']})"
    return info


def load_clean(
    dataset: str,
    data_dir: str | os.PathLike[str] | None,
    n_examples: int | None = None,
    why: str = "",
    *,
    classes: Sequence[str] | None = None,
    channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The clean test images (uint8 N x C x H x W) and labels standing for "the first n" (see
    ``subset_indices``), with a description of the subset. ``why`` is appended to errors.

    ``n_examples`` above the test set's size takes the whole set (the subset says so; compare
    ``images.shape[0]`` with it). ``classes`` / ``channels``: an ImageFolder tree's training
    classes and channel count as a checkpoint recorded them (see ``load_dataset``).
    """
    from robustcli.data import load_dataset

    check_count("--n-examples", n_examples)
    try:
        images, labels = load_dataset(dataset, "test", data_dir, classes=classes, channels=channels)
    except DataError as exc:
        raise DataError(f"{exc} ({why})" if why else str(exc)) from None
    idx, subset = subset_indices(labels, n_examples)
    if idx is not None:
        images, labels = images[idx], labels[idx]
    return images, labels, subset


def run_eval_c(
    checkpoint: str | os.PathLike[str],
    *,
    cifar_c_dir: str | os.PathLike[str] | None = None,
    generate: bool = False,
    seed: int = 0,
    corruptions: str | Sequence[str] = "common",
    severities: str | Sequence[int] = "1-5",
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    data_label: str | None = None,
    clean: bool = True,
    baseline: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    channels_last: bool | None = None,
    fold: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on CIFAR-10-C and return the result document (every rank of a
    ``torchrun`` job gets the same document; write it on rank 0 only).

    Exactly one of ``cifar_c_dir`` (official files) and ``generate`` (corrupt the clean test
    images on the fly, seeded by ``seed``) must be given. Clean accuracy uses the checkpoint's
    dataset test split from ``data_dir`` (``clean=False`` skips it; ``--generate`` needs it).

    Numbers and selections are checked first (``RobustError``, before any file is read):
    ``n_examples`` and ``batch_size`` >= 1, ``seed`` >= 0, severities in 1..5, known corruption
    names. An ``n_examples`` above the images available evaluates them all: the document's
    ``n_examples`` is the number evaluated, ``provenance.n_examples_requested`` the one asked for.
    """
    if (cifar_c_dir is None) == (not generate):
        raise RobustError(
            "choose the corrupted data: --cifar-c-dir DIR (the official files) or --generate"
        )
    # every number is checked before any file is read, so a typo costs nothing
    check_count("--n-examples", n_examples)
    check_count("--batch-size", batch_size)
    check_seed(seed)
    requested_n = n_examples
    names = select_corruptions(corruptions)
    sevs = parse_severities(severities)
    baseline_doc = read_result(baseline) if baseline is not None else None
    from robustcli.checkpoint import load_checkpoint

    ck_path = resolve_checkpoint(checkpoint, checkpoint_dir)
    info = init_distributed(device)
    try:
        dev = resolve_device(device, info)
        prec = _eval_precision(precision, dev)
        ck = load_checkpoint(ck_path)
        dataset = ck.dataset or "cifar10"
        official = OfficialSource(cifar_c_dir, names) if cifar_c_dir is not None else None
        # -n above the images there are evaluates them all; the document records both numbers
        if official is not None and n_examples is not None:
            n_examples = min(n_examples, official.n_available)
        clean_data = None
        clean_info = None
        if generate or clean:
            why = "needed for --generate" if generate else "for clean accuracy; --no-clean skips it"
            # an ImageFolder tree is labelled with the classes the model was trained on
            layout: dict[str, Any] = {}
            trained = ck.meta.get("classes")
            if (
                dataset == "imagefolder"
                and isinstance(trained, list)
                and trained
                and all(isinstance(c, str) for c in trained)
            ):
                layout = {"classes": trained, "channels": ck.input.source_shape[0]}
            images, labels, subset = load_clean(dataset, data_dir, n_examples, why, **layout)
            if generate and n_examples is not None:
                n_examples = min(n_examples, int(images.shape[0]))
            clean_data = (images, labels)
            clean_info = _clean_provenance(dataset, data_dir, data_label, subset)
        # Generated corruptions need RGB images: a model trained on a grey dataset through an
        # RGB input adapter (digits 1x8x8 -> 3x32x32) is evaluated on its adapted test images,
        # corrupted at the model's input size.
        adapter = None if ck.input.identity else ck.input
        pre_adapted = False
        if (
            generate
            and clean_data is not None
            and adapter is not None
            and clean_data[0].shape[1] != 3
            and adapter.target_shape[0] == 3
        ):
            clean_data = (adapter(clean_data[0]), clean_data[1])
            clean_info = {**(clean_info or {}), "adapted_before_corrupting": adapter.to_dict()}
            adapter, pre_adapted = None, True
        if official is not None:
            source: OfficialSource | GeneratedSource = official
        else:
            assert clean_data is not None
            source = GeneratedSource(
                clean_data[0], clean_data[1], seed=seed, device=dev, clean_info=clean_info
            )
        _check_compatible(ck, source, shape_checked=not pre_adapted)
        tally = evaluate_corruptions(
            ck.model,
            source,
            mean=ck.mean,
            std=ck.std,
            corruptions=names,
            severities=sevs,
            n_examples=None if generate else n_examples,
            clean=clean_data if clean else None,
            batch_size=batch_size,
            device=dev,
            precision=prec,
            channels_last=channels_last,
            fold=fold,
            adapter=adapter,
            info=info,
            progress=progress,
        )
    finally:
        teardown_distributed(info)
    path = Path(ck.path or ck_path)
    model_info = {
        "name": ck.name,
        "backbone": ck.backbone,
        "dataset": ck.dataset,
        "checkpoint": str(path.resolve()),
        "sha256": file_sha256(path),
        **ck.integrity_record(),  # verified: false for legacy / unverified files
        "config": ck.config,
        "normalization": ck.normalization,
        "input": ck.input.to_dict(),
        "trained": {k: ck.meta[k] for k in ("recipe", "epochs", "seed") if k in ck.meta},
    }
    provenance = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(tally.seconds, 3),
        "images": tally.images,
        "images_per_second": round(tally.images / tally.seconds, 1) if tally.seconds else None,
        "device": str(dev),
        "precision": prec,
        "n_examples": int(tally.total[0, 0]) if tally.total.size else 0,
        "n_examples_requested": requested_n,
        "corrupted_data": source.provenance(),
        "clean_data": clean_info if clean else None,
        "inference": tally.report,
        "environment": environment(dev),
        "command": " ".join(sys.argv),
    }
    return eval_c_document(
        tally,
        model=model_info,
        provenance=provenance,
        baseline=baseline_doc,
        baseline_path=baseline,
    )


def _eval_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on CUDA GPUs with bf16, fp32 elsewhere (CPU numbers stay exact)."""
    from robustcli.runtime import resolve_precision

    if precision == "auto":
        return resolve_precision("auto", device) if device.type == "cuda" else "fp32"
    return resolve_precision(precision, device)


def _check_compatible(
    ck: Any, source: OfficialSource | GeneratedSource, shape_checked: bool = True
) -> None:
    """The corrupted images must fit the model's input adapter, the labels its classes."""
    src = tuple(ck.input.source_shape) if shape_checked else (0, 0, 0)
    if isinstance(source, OfficialSource):
        name = source.data.corruptions[0]
        shape = source.data.images(name, source.data.severities[0]).shape
        have = (int(shape[3]), int(shape[1]), int(shape[2]))
    else:
        have = tuple(int(v) for v in source.images.shape[1:])
    if src[1:] != (0, 0) and tuple(src) != have:
        raise DataError(
            f"{ck.name} takes {'x'.join(map(str, src))} dataset images ({ck.dataset}) but the "
            f"corrupted images are {'x'.join(map(str, have))}: evaluate a model trained on "
            "CIFAR-10 (or the matching dataset)"
        )
    num_classes = int(ck.config.get("num_classes", 10))
    if source.num_classes_needed() > num_classes:
        raise DataError(
            f"the labels go up to {source.num_classes_needed() - 1} but {ck.name} has "
            f"{num_classes} classes: use the model's dataset (CIFAR-100-C needs a 100-class model)"
        )
