"""What a robustcli checkpoint file is: format constants, the ``Checkpoint`` type, the
safetensors readers (header and metadata without loading tensors, or everything) and the
one-line message helpers the other modules of ``robustcli.checkpoint`` share.

Nothing here imports a sibling module: integrity, validate, format, imports and state build on it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcli.data import InputAdapter, normalize
from robustcli.errors import CheckpointError

FORMAT = "robustcli-checkpoint"
#: 2: ``checkpoint_sha256`` covers metadata and tensors; 1: ``tensor_sha256``, tensors only
FORMAT_VERSION = 2
STATE_FORMAT = "robustcli-train-state"
#: the checksum key of format 2 (metadata + tensors) and of format 1 (tensors only)
HASH_KEY = "checkpoint_sha256"
LEGACY_HASH_KEY = "tensor_sha256"
#: ``Checkpoint.integrity`` values, most to least checked
INTEGRITY = ("verified", "legacy-tensors", "unverified")
#: metadata keys written by ``save_checkpoint`` itself (``extra`` may not reuse them)
RESERVED = (
    "format",
    "format_version",
    "model",
    "backbone",
    "config",
    "dataset",
    "normalization",
    "input",
    "tensor_sha256",
    "checkpoint_sha256",
)


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with everything needed to feed it.

    ``integrity`` says what the stored checksum covered (``verified`` only for format-2 files).
    ``prepare(x)`` turns dataset images (uint8 0..255 or float 0..1, in the dataset's shape) into
    model input: the recorded ``input`` adaptation, then ``(x - mean) / std``.
    """

    model: nn.Module
    name: str
    backbone: str
    config: dict[str, Any]
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input: InputAdapter
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: what the checksum covered: "verified", "legacy-tensors" or "unverified" (see module doc)
    integrity: str = "unverified"

    @property
    def verified(self) -> bool:
        """True when the checksum covered metadata and tensors (format 2) and matched."""
        return self.integrity == "verified"

    def integrity_record(self) -> dict[str, Any]:
        """``{"verified": bool, "integrity": str}`` for the provenance of result documents."""
        return {"verified": self.verified, "integrity": self.integrity}

    @property
    def adapter(self) -> InputAdapter:
        """Alias of ``input``: the dataset -> model input adaptation used in training."""
        return self.input

    @property
    def normalization(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset-shaped images -> model-shaped images (no normalisation)."""
        return self.input(x)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset images -> normalised model input (float32, on ``x``'s device)."""
        x = self.adapt(x)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return normalize(x, self.mean, self.std)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses views and shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _resolve_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found: check the path (a run folder works too)")
    return p


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception message, shortened (messages of parsers can be long)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:limit]


def _printable(text: str, limit: int = 80) -> str:
    """``text`` safe for a one-line message: non-printable names are shown escaped."""
    return text[:limit] if text.isprintable() else ascii(text)[:limit]


def _sniff(path: Path) -> None:
    """Refuse files that are not safetensors with a message that names what they are."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(head) == 9 and head[8:9] == b"{":
        return  # 8-byte header length, then the JSON header: safetensors
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a PyTorch torch.save file, not a robustcli safetensors checkpoint: "
            "convert it with robustcli.checkpoint.import_state_dict(path, model_name, out=...)"
        )
    raise CheckpointError(
        f"{path} is not a safetensors checkpoint (corrupt or truncated, or another format): "
        "re-download it or retrain"
    )


def _open_safetensors(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes (from the header, nothing loaded) and the metadata of ``path``."""
    from safetensors import SafetensorError, safe_open

    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({_one_line(exc)}): re-download it or retrain"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:  # odd headers
        raise CheckpointError(
            f"{path} has an unreadable safetensors header ({_one_line(exc)}): re-download it"
        ) from None
    return shapes, meta


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({_one_line(exc)}): re-download it or retrain"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:  # e.g. exotic dtypes
        raise CheckpointError(
            f"{path} holds tensors this torch cannot read ({_one_line(exc)}): re-export it"
        ) from None
    return tensors, meta
