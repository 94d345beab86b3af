"""Where eval-c's images come from, as lists of ``WorkItem`` chunks for the loop.

- ``OfficialSource``: CIFAR-10-C files (the Zenodo layout, or written by ``generate_dataset``),
  memory-mapped.
- ``GeneratedSource``: clean images corrupted on the fly with ``robustcli.corruptions``, seeded
  exactly as ``robust corrupt`` seeds them.
- ``clean_items`` / ``load_clean``: the clean test images for clean accuracy (and for
  ``--generate``), ``subset_indices`` choosing which images stand for "the first n".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustcli.corruptions import corrupt
from robustcli.errors import DataError, RobustError
from robustcli.evaluate.selection import check_count

#: Images per generator chunk; equal to ``generate_dataset``'s default so that ``--generate``
#: evaluates exactly the images ``robust corrupt`` / ``generate_dataset`` would write.
GENERATION_CHUNK = 1000


@dataclass(frozen=True)
class WorkItem:
    """One chunk of work: ``load()`` gives uint8 images (N, C, H, W; any strides), int64 labels
    and, per image, the index of its severity in the evaluated list (0 for clean images).

    ``offset``: where the chunk's first image sits in its row, severity-major (image ``i`` of
    the ``k``-th evaluated severity at ``k * n + i``; clean images at ``i``); a chunk's images
    are consecutive there, so per-image results (``--per-image``) land at
    ``offset .. offset + size``."""

    row: int  # corruption index in the tally; -1 for clean images
    size: int
    load: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    label: str = ""
    offset: int = 0


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
                        start,
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
                    load = self._loader(name, s, si, b, lo, hi)
                    items.append(WorkItem(row, hi - lo, load, name, si * n + lo))
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
        WorkItem(-1, min(lo + chunk, n) - lo, loader(lo, min(lo + chunk, n)), "clean", lo)
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
# Clean images
# --------------------------------------------------------------------------------------------


def clean_provenance(
    dataset: str, data_dir: str | os.PathLike[str] | None, label: str | None, subset: str
) -> dict[str, Any]:
    """The result document's ``clean_data``: dataset, split, subset, where the files are."""
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
