"""The batched evaluation loop: ``evaluate_corruptions(model, source, ...) -> Tally``.

Work items from a source (and the clean images) are run through the inference form of the
model (``robustcli.layers.fold.prepare_for_inference``) in batches under
``torch.inference_mode``, at the chosen precision (``eval_precision``): ``--precision auto`` is
bf16 autocast on GPUs with bf16 and ``bf16-checked`` on CPUs with native bf16 (AVX512-BF16 /
AMX; fp32 for models whose push-pull layers the fp32 CPU kernel computes): bf16 autocast,
then every image whose two largest logits lie closer than ``RECHECK_MARGIN`` times its largest
absolute logit is predicted again in fp32, so that the counts equal fp32's (bf16 alone moves
single cells by up to a point). ``fp32`` is exact.

In a ``torchrun`` job each rank takes every world-size-th item and the counts are all-reduced,
so every rank returns the totals. On CPUs whole items run on single-threaded worker threads:
with ``--generate`` one worker corrupts its next chunk while another runs the model, so
generation and inference overlap without an extra thread. Elsewhere one thread runs the items
while a background thread loads (generates) the next one (``_Prefetch``). Counts are integer
sums per item, so the result does not depend on the order or on the number of workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcli.corruptions import COMMON, SEVERITIES
from robustcli.errors import RobustError
from robustcli.evaluate.metrics import Tally
from robustcli.evaluate.sources import GeneratedSource, OfficialSource, WorkItem, clean_items
from robustcli.layers.fold import prepare_for_inference
from robustcli.progress import work_progress
from robustcli.runtime import SINGLE, DistInfo, all_reduce_sum, autocast

Batch = tuple[torch.Tensor, ...]


#: ``bf16-checked``: images whose top-two logit gap (bf16) is at most this fraction of their
#: largest absolute logit are predicted again in fp32. A prediction can only differ from
#: fp32's when the gap is below twice bf16's logit error: on a trained ResNet-20 (47,500
#: CIFAR-10-C images) that error was at most 4.9 % of the scale, and the gaps of the images
#: whose prediction bf16 changed at most 3.2 %. 0.1 rechecks ~11 % of those images;
#: ``benchmarks/bench_eval_c_precision.py`` measures the difference for any checkpoint.
RECHECK_MARGIN = 0.1

#: Near ties are predicted again in batches of a multiple of this many images.
RECHECK_BUCKET = 32

#: What ``eval_precision`` may return: ``runtime.PRECISIONS``' resolved values and this one.
CHECKED = "bf16-checked"


def eval_precision(precision: str, device: torch.device, model: nn.Module | None = None) -> str:
    """The precision eval-c runs at. ``auto``: bf16 autocast on CUDA GPUs with bf16,
    ``bf16-checked`` on CPUs with native bf16 (bf16, near ties predicted again in fp32: the
    counts of fp32 at close to bf16's speed), fp32 elsewhere, and fp32 on CPUs for a ``model``
    with push-pull layers that the fused CPU kernel computes (in fp32 even under autocast: bf16
    saved 6 % on pp-resnet20 and the recheck cost more than that). ``bf16`` / ``fp32`` /
    ``fp64`` as given (``bf16`` unchecked: fastest; single cells may move by a point)."""
    from robustcli.runtime import resolve_precision

    if precision == "auto":
        resolved = resolve_precision("auto", device)
        if device.type == "cpu" and resolved == "bf16":
            return "fp32" if model is not None and fp32_kernel_layers(model) else CHECKED
        return resolved if device.type == "cuda" else "fp32"
    if precision == CHECKED:
        return CHECKED
    return resolve_precision(precision, device)


def fp32_kernel_layers(model: nn.Module) -> int:
    """How many push-pull layers of ``model`` the fused CPU kernel computes (always in fp32)."""
    from robustcli.layers.multiscale import MultiScalePushPull
    from robustcli.layers.pushpull import PushPullConv2d, use_fused

    probe = torch.zeros(1)
    return sum(
        1
        for m in model.modules()
        if isinstance(m, PushPullConv2d | MultiScalePushPull) and use_fused(m.pull_impl, probe)
    )


def default_batch_size(device: torch.device, precision: str = "fp32") -> int:
    """Images per forward pass: 1000 on GPUs; on CPUs, per worker thread, 256 under bf16
    (AMX / AVX512-BF16 GEMMs want more rows) and 100 in fp32, where larger batches are no
    faster (their activations no longer fit in the caches)."""
    if device.type == "cuda":
        return 1000
    return 256 if precision in ("bf16", CHECKED) else 100


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


class _BatchCounter:
    """Runs one work item through the network in batches of ``batch_size`` and adds its
    correct / total counts per severity to the given count tensors (row ``item.row``; clean
    images go to ``clean_row``). Images are uint8; normalisation is one fused multiply-add."""

    def __init__(
        self,
        net: nn.Module,
        device: torch.device,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        adapter: Callable[[torch.Tensor], torch.Tensor] | None,
        channels_last: bool,
        clean_row: int,
        recheck: float | None = None,
    ) -> None:
        self.net, self.device, self.batch_size = net, device, batch_size
        self.adapter, self.clean_row = adapter, clean_row
        self.recheck = recheck
        self.rechecked = 0  # images predicted again in fp32 (bf16-checked)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = (
            -torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) / std_t
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(
        self,
        item: WorkItem,
        data: Batch,
        c: torch.Tensor,
        t: torch.Tensor,
        hits: torch.Tensor | None = None,
    ) -> None:
        """``hits`` (rows x positions, or None): 1 where an image is classified correctly, at
        the item's positions (``WorkItem.offset``); chunks never share a position."""
        images, labels, sev = data
        row = item.row if item.row >= 0 else self.clean_row
        dev, bs = self.device, self.batch_size
        for lo in range(0, images.shape[0], bs):
            x = images[lo : lo + bs].to(dev, non_blocking=True)
            if self.adapter is not None:
                x = self.adapter(x)
            x = x.float().mul_(self.scale).add_(self.shift)
            x = x.contiguous(memory_format=self.memory_format)
            pred = self._predict(x)
            y = labels[lo : lo + bs].to(dev, non_blocking=True)
            s = sev[lo : lo + bs].to(dev, non_blocking=True)
            right = (pred == y).long()
            c[row].index_add_(0, s, right)
            t[row].index_add_(0, s, torch.ones_like(s))
            if hits is not None:
                at = item.offset + lo
                hits[row, at : at + right.shape[0]] = right.to(hits.dtype)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes; under ``bf16-checked`` the near ties again in fp32."""
        logits = self.net(x)
        pred = logits.argmax(1)
        if self.recheck is None or logits.shape[1] < 2:
            return pred
        lf = logits.float()
        top2 = lf.topk(2, dim=1).values
        near = (top2[:, 0] - top2[:, 1]) <= self.recheck * lf.abs().amax(1)
        idx = near.nonzero().squeeze(1)
        if idx.numel():
            # padded (repeating the first image) to a multiple of RECHECK_BUCKET: every new
            # batch size costs oneDNN a new compiled kernel per layer, and a batch of one runs
            # PyTorch's slow native convolution
            pad = -idx.numel() % RECHECK_BUCKET
            rows = torch.cat([idx, idx[:1].expand(pad)]) if pad else idx
            with torch.autocast(self.device.type, enabled=False):
                again = x.index_select(0, rows).contiguous(memory_format=self.memory_format)
                pred[idx] = self.net(again).argmax(1)[: idx.numel()]
            self.rechecked += int(idx.numel())  # workers add ints: a lost update only
            # miscounts this statistic, never the tally
        return pred


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
    progress: bool | str = False,
    workers: int | None = None,
    per_image: bool = False,
) -> Tally:
    """Count correct predictions of ``model`` (normalised input) per (corruption, severity).

    ``clean``: uint8 images (N, C, H, W) and labels for clean accuracy, on the same first
    ``n_examples``. ``adapter`` maps dataset images (uint8) to the model's input shape (a
    checkpoint's ``input``). In a ``torchrun`` job (``info``) each rank evaluates every
    world-size-th chunk and the counts are summed over ranks; every rank returns the totals.
    ``per_image``: also record which images were classified correctly (``Tally.hits``,
    ``Tally.clean_hits``), for paired comparisons over the same images. ``progress``: ``rich``
    / ``True`` a bar, ``plain`` a line per corruption (logs), ``none`` / ``False`` nothing.
    """
    dev = torch.device(device)
    corruptions, severities = tuple(corruptions), tuple(severities)
    bs = int(batch_size or default_batch_size(dev, precision))
    if bs < 1:
        raise RobustError("--batch-size must be at least 1")
    t0 = time.perf_counter()
    net, report = prepare_for_inference(model, dev, channels_last=channels_last, fold=fold)
    items = source.items(corruptions, severities, n_examples, bs)
    if clean is not None:
        items = clean_items(clean[0], clean[1], n_examples, bs) + items
    mine = items[info.rank :: info.world_size]
    rows = len(corruptions) + 1  # the last row holds the clean counts
    correct = torch.zeros(rows, len(severities), dtype=torch.int64, device=dev)
    total = torch.zeros_like(correct)
    # every position is written by one rank and is 0 on the others: the all-reduce sums them
    width = max(it.offset + it.size for it in items)
    hits = torch.zeros(rows, width, dtype=torch.int32, device=dev) if per_image else None
    count = _BatchCounter(
        net,
        dev,
        bs,
        mean=mean,
        std=std,
        adapter=adapter,
        channels_last=report["channels_last"],
        clean_row=rows - 1,
        recheck=RECHECK_MARGIN if precision == CHECKED else None,
    )
    amp = "bf16" if precision == CHECKED else precision
    n_workers = _workers(dev, workers, len(mine))
    bar = _progress_bar(progress if info.is_main else "none")
    with bar:
        task = bar.add_task("eval-c", total=sum(it.size for it in mine))
        if n_workers == 1:
            _count_serially(count, mine, (correct, total, hits), dev, amp, (bar, task))
        else:
            _count_threaded(count, mine, (correct, total, hits), dev, amp, (bar, task), n_workers)
    counts = torch.stack([correct, total])
    all_reduce_sum(counts, info)
    counts_np = counts.cpu().numpy()
    per_image_hits = _split_hits(hits, info, items, len(severities), clean is not None)
    return Tally(
        corruptions=corruptions,
        severities=severities,
        correct=counts_np[0, :-1].copy(),
        total=counts_np[1, :-1].copy(),
        clean_correct=int(counts_np[0, -1, 0]) if clean is not None else None,
        clean_total=int(counts_np[1, -1, 0]) if clean is not None else None,
        seconds=time.perf_counter() - t0,
        images=int(counts_np[1].sum()),
        hits=per_image_hits[0],
        clean_hits=per_image_hits[1],
        report={
            **report,
            "batch_size": bs,
            "world_size": info.world_size,
            "workers": n_workers,
            **(
                {"recheck": {"margin": RECHECK_MARGIN, "images": count.rechecked}}
                if precision == CHECKED
                else {}
            ),
        },
    )


def _split_hits(
    hits: torch.Tensor | None,
    info: DistInfo,
    items: Sequence[WorkItem],
    n_severities: int,
    has_clean: bool,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The summed per-image rows as (corruptions, severities, n) and (n,) bool arrays."""
    if hits is None:
        return None, None
    all_reduce_sum(hits, info)
    h = hits.cpu().numpy().astype(bool)
    n = max(it.offset + it.size for it in items if it.row >= 0) // n_severities
    cells = h[:-1, : n_severities * n].reshape(h.shape[0] - 1, n_severities, n)
    clean_n = max((it.offset + it.size for it in items if it.row < 0), default=0)
    return cells.copy(), (h[-1, :clean_n].copy() if has_clean else None)


def _count_serially(
    count: _BatchCounter,
    items: Sequence[WorkItem],
    counts: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    device: torch.device,
    precision: str,
    progress: tuple[Any, Any],
) -> None:
    """One thread runs the items in order while the next one loads (GPUs, one-item jobs)."""
    bar, task = progress
    with torch.inference_mode(), autocast(device, precision):
        for item, data in _Prefetch(items):
            bar.update(task, description=item.label)
            count(item, data, *counts)
            bar.advance(task, item.size)


def _count_threaded(
    count: _BatchCounter,
    items: Sequence[WorkItem],
    counts: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    device: torch.device,
    precision: str,
    progress: tuple[Any, Any],
    n_workers: int,
) -> None:
    """CPU: whole items on single-threaded workers scale better than splitting each small
    convolution over threads (no barrier per operation). Each item counts into its own
    tensors, added to ``counts`` as it finishes; per-image hits go straight to their
    positions, which no two items share."""
    bar, task = progress
    correct, total, hits = counts

    def work(item: WorkItem) -> tuple[WorkItem, torch.Tensor, torch.Tensor]:
        c, t = torch.zeros_like(correct), torch.zeros_like(total)
        with torch.inference_mode(), autocast(device, precision):
            count(item, item.load(), c, t, hits)
        return item, c, t

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(max_workers=n_workers)
    try:
        for item, c, t in pool.map(work, items):
            correct += c
            total += t
            bar.update(task, description=item.label, advance=item.size)
    finally:  # on an error or Ctrl-C, drop the queued chunks instead of running them
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def _workers(device: torch.device, workers: int | None, n_items: int) -> int:
    """Worker threads: on CPU one per torch thread (each single-threaded), else 1."""
    if device.type != "cpu":
        return 1
    n = torch.get_num_threads() if workers is None else int(workers)
    return max(1, min(n, n_items))


def _progress_bar(mode: bool | str) -> Any:
    from robustcli.render import make_console

    return work_progress(
        mode, "eval-c", "{task.description:<18}", console=make_console(stderr=True), transient=True
    )
