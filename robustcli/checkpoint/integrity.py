"""Checksums of checkpoint files and the integrity label a load reports.

``checkpoint_digest`` (format 2) covers every metadata entry and every tensor; ``tensor_digest``
(format 1, and training state) covers the tensors only. ``_verify`` turns what a file carries
into ``"verified"``, ``"legacy-tensors"`` or ``"unverified"`` (see ``robustcli.checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from robustcli.checkpoint.spec import HASH_KEY, LEGACY_HASH_KEY
from robustcli.errors import CheckpointError


def _hash_tensors(h: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # a buffer: no copy


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over sorted names, dtypes, shapes and raw bytes of ``tensors`` (format 1)."""
    h = hashlib.sha256()
    _hash_tensors(h, tensors)
    return h.hexdigest()


def checkpoint_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The format-2 checksum: SHA-256 of the canonical JSON of every metadata entry except
    ``checkpoint_sha256`` itself (sorted keys, ASCII, no spaces), then of the tensors as in
    ``tensor_digest``. Editing the model name, the normalisation or the config changes it."""
    covered = {str(k): str(v) for k, v in metadata.items() if k != HASH_KEY}
    h = hashlib.sha256(b"robustcli-checkpoint-sha256/2\n")
    h.update(json.dumps(covered, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode())
    h.update(b"\n")
    _hash_tensors(h, tensors)
    return h.hexdigest()


def _verify(
    path: Path, tensors: Mapping[str, torch.Tensor], raw: Mapping[str, str], version: int
) -> str:
    """Check the stored checksum; return the integrity level (see the module doc)."""
    damaged = f"{path} is corrupt or was edited: its contents do not match the stored checksum"
    if HASH_KEY in raw:
        if checkpoint_digest(tensors, raw) != raw[HASH_KEY]:
            raise CheckpointError(f"{damaged} (metadata and tensors); re-download or retrain")
        return "verified"
    if LEGACY_HASH_KEY in raw:
        if version >= 2:  # format 2 always writes the full checksum: this one was stripped
            raise CheckpointError(
                f"{path} is a format-{version} checkpoint without {HASH_KEY}: its metadata was "
                "edited; re-download or retrain"
            )
        if tensor_digest(tensors) != raw[LEGACY_HASH_KEY]:
            raise CheckpointError(f"{damaged} (tensors); re-download or retrain")
        return "legacy-tensors"
    return "unverified"
