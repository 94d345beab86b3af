"""Datasets read (and downloaded when missing) through ``torchvision.datasets``: CIFAR-10's
pickles, and MNIST / Fashion-MNIST when their IDX files are absent. The class, folder and URL
of each come from the registry's ``download`` entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustcli.data.cache import cache_dir
from robustcli.data.registry import Download, dataset_entry
from robustcli.errors import DataError


def _download(name: str) -> Download:
    dl = dataset_entry(name).download
    if dl is None:
        raise DataError(f"dataset {name!r} is not downloaded: it has no torchvision files")
    return dl


def torchvision_root(name: str, root: Path | None) -> Path:
    """The folder torchvision is given: ``root`` (or its parent when ``root`` is the data
    folder itself, e.g. ``.../cifar-10-batches-py`` or ``.../MNIST``), else the cache's."""
    if root is None:
        return cache_dir() / name
    first = _download(name).folder.split("/")[0]
    if root.name == first:
        return root.parent
    return root


def _wrap(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data  # type: ignore[attr-defined]
    if isinstance(data, np.ndarray):  # CIFAR: N x H x W x C
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
    else:  # MNIST-like: N x H x W uint8 tensor
        images = data.unsqueeze(1).contiguous()
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)  # type: ignore[attr-defined]
    return images.to(torch.uint8), labels


def load_torchvision(name: str, split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split through torchvision: read when present, else downloaded into the data folder
    (or the cache); every failure is a one-line DataError that says where to put the files."""
    dl = _download(name)
    base = torchvision_root(name, root)
    try:
        import torchvision.datasets as tvd
    except Exception as exc:  # torchvision builds that do not match torch fail at import
        raise DataError(
            f"torchvision could not be imported ({exc}): install a torchvision that matches "
            "torch, or pass --data-dir with an ImageFolder tree"
        ) from None
    cls = getattr(tvd, dl.torchvision)
    train = split == "train"
    try:
        ds = cls(str(base), train=train, download=False)
    except RuntimeError:
        try:
            base.mkdir(parents=True, exist_ok=True)
            ds = cls(str(base), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise DataError(
                f"{name} is not in {base} and could not be downloaded ({reason}): fetch "
                f"{dl.url} into {base / dl.folder}, or pass --data-dir DIR holding "
                f"{dl.folder.split('/')[0]} "
                "or an ImageFolder tree (train/<class>/, test/<class>/); "
                "`--dataset digits` is the embedded offline default"
            ) from None
    except (OSError, EOFError, ValueError) as exc:  # unreadable or damaged files, no download
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(
            f"{name} files in {base / dl.folder} cannot be read "
            f"({reason or type(exc).__name__}): check their permissions, or replace them"
        ) from None
    return _wrap(ds)
