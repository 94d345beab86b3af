"""The cache folder, and decoded image tensors cached there as safetensors files.

``cache_dir()`` holds downloaded torchvision datasets (``<name>/``) and decoded ImageFolder
splits (``imagefolder/``). A cached split is one safetensors file with ``images``, ``labels``
and string metadata; a damaged or unreadable cache file reads as missing (it is rebuilt), and a
read-only cache only costs the decode next time.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from robustcli.io import atomic_write_bytes


def cache_dir() -> Path:
    """``$ROBUSTCLI_CACHE``, else ``$XDG_CACHE_HOME/robustcli``, else ``~/.cache/robustcli``."""
    if os.environ.get("ROBUSTCLI_CACHE"):
        return Path(os.environ["ROBUSTCLI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustcli"


def cache_file(root: Path, kind: str, digest: str, suffix: str) -> Path:
    """``cache_dir()/imagefolder/<tree name>-<kind>-<digest><suffix>`` for the tree at ``root``."""
    slug = "".join(c if c.isalnum() else "-" for c in root.resolve().name)[:40] or "data"
    return cache_dir() / "imagefolder" / f"{slug}-{kind}-{digest}{suffix}"


def read_tensors(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]] | None:
    """``(images, labels, metadata)`` of a cached file; None when it is missing or damaged."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return f.get_tensor("images"), f.get_tensor("labels"), dict(meta)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None  # a damaged cache is rebuilt by the caller


def write_tensors(
    path: Path, images: torch.Tensor, labels: torch.Tensor, meta: dict[str, str]
) -> None:
    """Write a cache file atomically; a read-only cache is skipped silently."""
    from safetensors.torch import save

    blob = save({"images": images, "labels": labels}, metadata=meta)
    with contextlib.suppress(OSError):
        atomic_write_bytes(path, blob)
