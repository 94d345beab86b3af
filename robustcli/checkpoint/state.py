"""Training state for ``--resume`` (``last.safetensors``): tensors in safetensors, everything
else (epoch, RNG, optimiser scalars) in one JSON metadata string, never pickle; checked with
``tensor_digest`` on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from robustcli.checkpoint.integrity import tensor_digest
from robustcli.checkpoint.spec import (
    FORMAT_VERSION,
    STATE_FORMAT,
    _json,
    _plain_tensors,
    _read_safetensors,
)
from robustcli.errors import CheckpointError
from robustcli.io import atomic_write_bytes


def save_training_state(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]
) -> None:
    """Atomically write resume state: ``tensors`` in safetensors, ``state`` as JSON metadata."""
    from safetensors.torch import save

    plain = _plain_tensors(tensors)
    meta = {
        "format": STATE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "state": _json(dict(state)),
        "tensor_sha256": tensor_digest(plain),
    }
    atomic_write_bytes(path, save(plain, metadata=meta))


def load_training_state(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what ``save_training_state`` wrote; ``CheckpointError`` if damaged."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no training state at {p}: nothing to resume")
    tensors, raw = _read_safetensors(p)
    if raw.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{p} is not a robustcli training state")
    if tensor_digest(tensors) != raw.get("tensor_sha256"):
        raise CheckpointError(f"{p} is corrupt (checksum mismatch): start the run again")
    try:
        state = json.loads(raw["state"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{p} has unreadable state metadata: start the run again") from None
    return tensors, state


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON-able values."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]
) -> None:
    """Inverse of ``optimizer_to_tensors``: load the state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
